import math

import numpy as np
import pytest
import torch

from textrec.data.batching import EvalBatcher, SeqBatch
from textrec.data.dataset import Dataset
from textrec.data.split import eval_examples
from textrec.eval.metrics import compute_metrics
from textrec.eval.ranking import count_ranks, evaluate
from textrec.models.spec import ModelSpec


def test_metrics_by_hand():
    ranks = np.array([0, 1, 4, 9, 10, 60])
    m = compute_metrics(ranks, ks=(10, 50))
    assert m["recall@10"] == pytest.approx(4 / 6)
    assert m["recall@50"] == pytest.approx(5 / 6)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11)) / 6)
    assert m["ndcg@50"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(6) + 1 / math.log2(11) + 1 / math.log2(12)) / 6)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 6)


def test_ranks_pessimistic_on_ties_and_padding_never_ranked():
    table = torch.tensor([[100.0], [1.0], [2.0], [2.0], [3.0]])  # row 0 = padding with a huge score
    seq = torch.tensor([[1.0], [1.0], [1.0]])
    ranks = count_ranks(seq, table, torch.tensor([4, 2, 3]))
    assert ranks.tolist() == [0, 2, 2]  # item 4 is best; items 2 and 3 tie, each counts the other


def test_constant_scores_rank_every_target_last():
    table = torch.ones(11, 4)
    ranks = count_ranks(torch.ones(5, 4), table, torch.tensor([1, 3, 5, 7, 10]))
    assert ranks.tolist() == [9] * 5
    assert compute_metrics(ranks.numpy(), ks=(10,))["recall@10"] == 1.0  # 10 items: everything is in the top 10
    assert compute_metrics(ranks.numpy(), ks=(5,))["recall@5"] == 0.0


def test_nan_target_ranks_last():
    table = torch.tensor([[0.0], [float("nan")], [1.0], [2.0]])
    ranks = count_ranks(torch.ones(1, 1), table, torch.tensor([1]))
    assert ranks.tolist() == [2]


def test_chunked_ranks_equal_unchunked_and_exclusion():
    g = torch.Generator().manual_seed(0)
    table, seq = torch.randn(101, 8, generator=g), torch.randn(30, 8, generator=g)
    targets = torch.randint(1, 101, (30,), generator=g)
    full = count_ranks(seq, table, targets)
    for chunk in (1, 7, 50, 100):
        assert torch.equal(count_ranks(seq, table, targets, item_chunk=chunk), full)
    # excluding the items that beat the target gives rank 0; excluding the target itself is ignored
    scores = seq @ table.T
    rows, items = [], []
    for r in range(30):
        better = torch.nonzero(scores[r, 1:] > scores[r, targets[r]]).flatten() + 1
        rows += [r] * (len(better) + 1)
        items += better.tolist() + [int(targets[r])]
    excl = (torch.tensor(rows), torch.tensor(items))
    for chunk in (7, 1000):
        assert count_ranks(seq, table, targets, item_chunk=chunk, exclude=excl).tolist() == [0] * 30


class _ItemScorer(torch.nn.Module):
    """Scores item i as -(i - last item - 1)^2: always predicts 'the next id'."""

    SPEC = ModelSpec()

    def __init__(self, n_items):
        super().__init__()
        self.n_items = n_items
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, batch: SeqBatch):
        last = batch.item_seq[torch.arange(len(batch.seq_len)), batch.seq_len - 1].float()
        return torch.stack([last + 1, torch.ones_like(last)], 1)  # (B, 2)

    def item_embeddings(self):
        ids = torch.arange(self.n_items + 1, dtype=torch.float)
        return torch.stack([ids, -(ids**2) / 2], 1)  # score = (l+1) i - i^2/2, maximal at i = l + 1


def test_evaluate_end_to_end_and_history_masking():
    seqs = [[1, 2, 3, 4, 5], [3, 4, 5, 6, 7], [2, 3, 9, 3, 4]]
    ds = Dataset.from_sequences("s", [str(i) for i in range(1, 11)], ["t"] * 10, ["a", "b", "c"], seqs)
    model = _ItemScorer(10)
    res = evaluate(model, EvalBatcher(eval_examples(ds, "test", 50), batch_size=2), ks=(1, 10))
    # users a, b: target = last + 1 -> rank 0; user c: history ends 3, predicts 4 -> rank 0
    assert res.ranks.tolist() == [0, 0, 0]
    res_valid = evaluate(model, EvalBatcher(eval_examples(ds, "valid", 50)), ks=(1,))
    # user c valid: history [2, 3, 9] predicts 10, target 3 -> scores: 10 > 9=11? rank of 3 among the parabola
    s = [(10) * i - i * i / 2 for i in range(1, 11)]
    expected_c = sum(v >= s[2] for j, v in enumerate(s) if j != 2)
    assert res_valid.ranks.tolist() == [0, 0, expected_c]
    masked = evaluate(model, EvalBatcher(eval_examples(ds, "valid", 50)), ks=(1,), mask_history=True)
    # masking removes history items 2 and 9 (not the target 3) from user c's candidates
    expected_masked = sum(v >= s[2] for j, v in enumerate(s) if j not in (2, 1, 8))
    assert masked.ranks.tolist() == [0, 0, expected_masked]


def test_random_tie_metrics_are_the_exact_expectation():
    rng = np.random.default_rng(0)
    best = rng.integers(0, 30, size=200)
    n_tied = rng.integers(0, 6, size=200)
    expected = compute_metrics(best + n_tied, ks=(5, 10), ties=n_tied)
    # brute force: average the plain metrics over every possible position of the target among its ties
    brute = {k: 0.0 for k in expected}
    for u in range(200):
        for j in range(n_tied[u] + 1):
            m = compute_metrics(np.array([best[u] + j]), ks=(5, 10))
            for k in brute:
                brute[k] += m[k] / (n_tied[u] + 1) / 200
    for k in expected:
        assert expected[k] == pytest.approx(brute[k])
    assert compute_metrics(best, ks=(10,), ties=np.zeros(200, int)) == compute_metrics(best, ks=(10,))


def test_count_ranks_reports_ties():
    table = torch.tensor([[0.0], [1.0], [2.0], [2.0], [2.0], [3.0]])
    ahead, tied = count_ranks(torch.ones(1, 1), table, torch.tensor([2]), return_ties=True)
    assert ahead.tolist() == [3] and tied.tolist() == [2]  # item 5 is above, items 3 and 4 tie
    m = compute_metrics(ahead.numpy(), ks=(2,), ties=tied.numpy())
    assert m["recall@2"] == pytest.approx(1 / 3)  # rank 1, 2 or 3 with equal chance; only rank 1 is < 2


def test_full_mrr_and_auc_by_hand():
    ranks = np.array([0, 1, 4, 9])
    m = compute_metrics(ranks, ks=(2,), extra=("mrr", "auc"), n_candidates=10)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 5 + 1 / 10) / 4)
    assert m["auc"] == pytest.approx((1 + 8 / 9 + 5 / 9 + 0) / 4)  # 1 - rank / 9 other candidates
    assert m["mrr@2"] == pytest.approx((1 + 1 / 2) / 4)  # the cut-off metrics are unchanged
    # per-user candidate counts (history masking leaves fewer); a lone candidate has nothing above it
    per_user = compute_metrics(np.array([3, 0]), ks=(1,), extra=("auc",), n_candidates=np.array([7, 1]))
    assert per_user["auc"] == pytest.approx((1 - 3 / 6 + 1) / 2)
    assert "mrr" not in compute_metrics(ranks, ks=(2,)) and "auc" not in compute_metrics(ranks, ks=(2,))


def test_full_mrr_and_auc_with_ties_in_both_modes():
    # user 0: 1 candidate above, 2 tied (pessimistic rank 3) of 4 others; user 1: rank 2 of 3 others, no tie
    ranks, ties, n_candidates = np.array([3, 2]), np.array([2, 0]), np.array([5, 4])
    pess = compute_metrics(ranks, ks=(1,), extra=("mrr", "auc"), n_candidates=n_candidates)
    assert pess["mrr"] == pytest.approx((1 / 4 + 1 / 3) / 2)
    assert pess["auc"] == pytest.approx(((1 - 3 / 4) + (1 - 2 / 3)) / 2)  # ties count as above the target
    rand = compute_metrics(ranks, ks=(1,), ties=ties, extra=("mrr", "auc"), n_candidates=n_candidates)
    assert rand["mrr"] == pytest.approx(((1 / 2 + 1 / 3 + 1 / 4) / 3 + 1 / 3) / 2)  # rank 1, 2 or 3
    assert rand["auc"] == pytest.approx(((1 - 2 / 4) + (1 - 2 / 3)) / 2)  # each tie counts half: rank 2


def test_constant_scores_auc_is_zero_pessimistic_and_half_random():
    n_items = 12
    table = torch.ones(n_items + 1, 3)  # (n_items + 1, 3): every item scores the same
    ahead, tied = count_ranks(torch.ones(4, 3), table, torch.tensor([1, 5, 6, 12]), return_ties=True)
    pess = compute_metrics(ahead.numpy(), ks=(10,), extra=("mrr", "auc"), n_candidates=n_items)
    rand = compute_metrics(ahead.numpy(), ks=(10,), ties=tied.numpy(), extra=("mrr", "auc"), n_candidates=n_items)
    assert pess["auc"] == 0.0 and rand["auc"] == pytest.approx(0.5)
    assert pess["mrr"] == pytest.approx(1 / n_items)
    assert rand["mrr"] == pytest.approx(sum(1 / r for r in range(1, n_items + 1)) / n_items)


def test_extra_metric_errors():
    with pytest.raises(ValueError, match="valid"):
        compute_metrics(np.array([0]), extra=("map",))
    with pytest.raises(ValueError, match="n_candidates"):
        compute_metrics(np.array([0]), extra=("auc",))
    with pytest.raises(ValueError, match="n_candidates - 1"):
        compute_metrics(np.array([5]), extra=("auc",), n_candidates=5)  # rank 5 needs 6 candidates
