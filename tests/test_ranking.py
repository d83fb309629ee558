"""Full ranking: exact ties across item chunks, float32 whatever the caller's autocast, MRR / AUC."""


import numpy as np
import pytest
import torch

from textrec.data.batching import EvalBatcher, SeqBatch
from textrec.data.dataset import Dataset
from textrec.data.split import eval_examples
from textrec.eval.ranking import count_ranks, evaluate, rank_targets
from textrec.models.spec import ModelSpec

CHUNKS = (1, 7, 16, 10_000)  # one item per chunk, odd chunks, a ragged last chunk, a single chunk


def _tied_case(seed: int):
    """Random scores where items share a few distinct vectors, so most targets have exact duplicates.

    Few distinct vectors keep their scores apart by far more than float32 rounding, so the brute force
    (another summation order) sees the same order; only exact ties are in play.
    """
    g = torch.Generator().manual_seed(seed)
    n_items, dim, n_rows, n_distinct = (
        int(torch.randint(lo, hi, (1,), generator=g)) for lo, hi in ((20, 90), (5, 40), (1, 33), (2, 12))
    )
    distinct = torch.randn(n_distinct, dim, generator=g)  # (n_distinct, D)
    table = distinct[torch.randint(0, n_distinct, (n_items + 1,), generator=g)]  # (n_items + 1, D)
    seq = torch.randn(n_rows, dim, generator=g)  # (B, D)
    targets = torch.randint(1, n_items + 1, (n_rows,), generator=g)  # (B,)
    # history-like exclusions: repeated pairs and the target itself must not be removed twice / at all
    ex_rows = torch.randint(0, n_rows, (3 * n_rows,), generator=g)
    ex_items = torch.randint(1, n_items + 1, (3 * n_rows,), generator=g)
    ex_rows = torch.cat([ex_rows, ex_rows[:5], torch.arange(n_rows)])
    ex_items = torch.cat([ex_items, ex_items[:5], targets])
    return seq, table, targets, (ex_rows, ex_items)


def _reference(seq, table, targets, exclude=None):
    """Brute force from one float32 score matrix summed in a fixed order (identical vectors score equal)."""
    s_np, t_np = seq.numpy(), table.numpy()
    scores = np.zeros((len(s_np), len(t_np)), np.float32)  # (B, n_items + 1)
    for d in range(s_np.shape[1]):
        scores += s_np[:, d : d + 1] * t_np[None, :, d]
    removed = set() if exclude is None else set(zip(exclude[0].tolist(), exclude[1].tolist()))
    ahead, tied, n_candidates = [], [], []
    for r, t in enumerate(targets.tolist()):
        others = [i for i in range(1, len(t_np)) if i != t and (r, i) not in removed]
        row, own = scores[r, others], scores[r, t]
        ahead.append(len(others) if np.isnan(own) else int((row >= own).sum()))
        tied.append(0 if np.isnan(own) else int((row == own).sum()))
        n_candidates.append(len(others) + 1)
    return ahead, tied, n_candidates


@pytest.mark.parametrize("keep", [True, False])  # the first pass's chunks kept for the second, or scored again
@pytest.mark.parametrize("masked", [False, True])
def test_chunked_ranks_and_ties_equal_unchunked_and_brute_force(masked, keep, monkeypatch):
    import textrec.eval.ranking as ranking

    monkeypatch.setattr(ranking, "KEEP_SCORES", 2**27 if keep else 0)
    failures = []
    for seed in range(60):
        seq, table, targets, exclude = _tied_case(seed)
        exclude = exclude if masked else None
        ref_ahead, ref_tied, _ = _reference(seq, table, targets, exclude)
        full = count_ranks(seq, table, targets, item_chunk=10_000, exclude=exclude, return_ties=True)
        for chunk in CHUNKS:
            ahead, tied = count_ranks(seq, table, targets, item_chunk=chunk, exclude=exclude, return_ties=True)
            if ahead.tolist() != ref_ahead or tied.tolist() != ref_tied or not torch.equal(ahead, full[0]):
                failures.append((seed, chunk))
    assert not failures, f"(seed, item_chunk) cases differing from the brute-force ranks: {failures}"


def test_candidate_counts_leave_out_distinct_history_items_only():
    for seed in range(10):
        seq, table, targets, exclude = _tied_case(seed)
        _, _, ref_n = _reference(seq, table, targets, exclude)
        for chunk in (1, 7, 10_000):
            r = rank_targets(seq, table, targets, item_chunk=chunk, exclude=exclude)
            assert r.n_candidates.tolist() == ref_n
            assert bool((r.ahead <= r.n_candidates - 1).all())
        assert rank_targets(seq, table, targets).n_candidates.tolist() == [table.shape[0] - 1] * len(targets)


def test_custom_score_fn_ties_are_exact_across_chunks():
    def neg_distance(s, rows):  # per-pair distances: no matmul, so identical rows score identically
        return -torch.cdist(s, rows, compute_mode="donot_use_mm_for_euclid_dist")  # (B, len(rows))

    for seed in range(20):
        seq, table, targets, _ = _tied_case(seed)
        scores = neg_distance(seq, table)  # (B, n_items + 1)
        own = scores[torch.arange(len(targets)), targets]
        others = torch.ones_like(scores, dtype=torch.bool)
        others[:, 0] = False
        others[torch.arange(len(targets)), targets] = False
        ref_ahead = ((scores >= own[:, None]) & others).sum(1)
        ref_tied = ((scores == own[:, None]) & others).sum(1)
        for chunk in CHUNKS:
            ahead, tied = count_ranks(seq, table, targets, chunk, score_fn=neg_distance, return_ties=True)
            assert torch.equal(ahead, ref_ahead) and torch.equal(tied, ref_tied), (seed, chunk)


def test_nan_target_ranks_last_among_the_remaining_candidates():
    table = torch.tensor([[0.0], [float("nan")], [1.0], [2.0], [3.0]])
    exclude = (torch.tensor([0, 0, 0]), torch.tensor([3, 3, 1]))  # item 3 twice, the target once
    for chunk in (1, 2, 10):
        r = rank_targets(torch.ones(1, 1), table, torch.tensor([1]), chunk, exclude)
        assert (r.ahead.tolist(), r.tied.tolist(), r.n_candidates.tolist()) == ([2], [0], [3])


# ---- evaluate: float32 whatever the caller's autocast, extra metrics ------------------------------------


class _LinearScorer(torch.nn.Module):
    """Test double of the model surface whose scores go through a Linear, so autocast would change them."""

    SPEC = ModelSpec()

    def __init__(self, n_items: int, dim: int = 16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.emb = torch.nn.Parameter(torch.randn(n_items + 1, dim, generator=g))
        self.proj = torch.nn.Linear(dim, dim)
        self.autocast_seen: list[bool] = []

    def encode(self, batch: SeqBatch) -> torch.Tensor:
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        last = batch.item_seq[torch.arange(len(batch.seq_len)), batch.seq_len - 1]  # (B,)
        return self.proj(self.emb[last])  # (B, D)

    def item_embeddings(self) -> torch.Tensor:
        self.autocast_seen.append(torch.is_autocast_enabled("cpu"))
        return self.proj(self.emb)  # (n_items + 1, D)


class _ConstantScorer(torch.nn.Module):
    SPEC = ModelSpec()

    def __init__(self, n_items: int):
        super().__init__()
        self.n_items = n_items
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def encode(self, batch: SeqBatch) -> torch.Tensor:
        return torch.ones(len(batch.seq_len), 3)  # (B, 3)

    def item_embeddings(self) -> torch.Tensor:
        return torch.ones(self.n_items + 1, 3)  # (n_items + 1, 3)


def _random_dataset(n_items: int, n_users: int, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(1, n_items + 1, size=int(rng.integers(3, 9))).tolist() for _ in range(n_users)]
    return Dataset.from_sequences("r", [str(i) for i in range(1, n_items + 1)], ["t"] * n_items, [f"u{u}" for u in range(n_users)], seqs)


def test_evaluate_ranks_in_float32_inside_a_bf16_autocast():
    ds = _random_dataset(n_items=300, n_users=64)
    model = _LinearScorer(300)
    batcher = EvalBatcher(eval_examples(ds, "test", 50), batch_size=16)
    plain = evaluate(model, batcher, ks=(1, 5, 20))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = evaluate(model, batcher, ks=(1, 5, 20))
    assert inside.ranks.tolist() == plain.ranks.tolist()
    assert inside.ties.tolist() == plain.ties.tolist()
    assert inside.metrics == plain.metrics
    assert not any(model.autocast_seen)  # the model itself never ran under autocast


def test_constant_scores_get_auc_zero_pessimistic_and_half_random():
    n_items = 10
    seqs = [[1, 2, 3, 4, 5], [3, 4, 5, 6, 7], [2, 3, 9, 3, 4], [10, 9, 8, 7]]
    ds = Dataset.from_sequences("c", [str(i) for i in range(1, n_items + 1)], ["t"] * n_items, list("abcd"), seqs)
    model = _ConstantScorer(n_items)
    batcher = EvalBatcher(eval_examples(ds, "test", 50), batch_size=3)
    harmonic = sum(1 / r for r in range(1, n_items + 1))
    pess = evaluate(model, batcher, ks=(10,), extra=("mrr", "auc"))
    assert pess.ranks.tolist() == [n_items - 1] * 4 and pess.n_candidates.tolist() == [n_items] * 4
    assert pess.metrics["auc"] == 0.0
    assert pess.metrics["mrr"] == pytest.approx(1 / n_items)
    rand = evaluate(model, batcher, ks=(10,), ties="random", extra=("mrr", "auc"))
    assert rand.metrics["auc"] == pytest.approx(0.5)
    assert rand.metrics["mrr"] == pytest.approx(harmonic / n_items)
    # masking: histories a..d hold 4, 4, 3 (2, 3, 9; the repeated 3 once) and 3 distinct non-target items
    masked = evaluate(model, batcher, ks=(10,), mask_history=True, ties="random", extra=("auc",))
    assert masked.n_candidates.tolist() == [6, 6, 7, 7]
    assert masked.ranks.tolist() == [5, 5, 6, 6]
    assert masked.metrics["auc"] == pytest.approx(0.5)
    masked_pess = evaluate(model, batcher, ks=(10,), mask_history=True, extra=("auc",))
    assert masked_pess.metrics["auc"] == 0.0
    assert "mrr" not in masked.metrics and "auc" not in evaluate(model, batcher, ks=(10,)).metrics


def test_evaluate_defaults_and_bad_arguments():
    # what a call with only (model, batcher) does: recall, MRR and NDCG at 10 and 50, pessimistic ties (a constant scorer's
    # target ranks last), history items kept as candidates, no extra metrics
    n_items = 10
    model, batcher = _ConstantScorer(n_items), EvalBatcher(eval_examples(_random_dataset(n_items, 4), "test", 50))
    plain = evaluate(model, batcher)
    assert set(plain.metrics) == {f"{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in (10, 50)}
    assert plain.n_candidates.tolist() == [n_items] * len(plain.ranks)  # history not masked by default
    assert plain.ranks.tolist() == (plain.n_candidates - 1).tolist()  # every tied candidate counted ahead
    assert (evaluate(model, batcher, mask_history=True).n_candidates < plain.n_candidates).all()
    chunked = evaluate(model, batcher, item_chunk=3)
    assert chunked.ranks.tolist() == plain.ranks.tolist()
    with pytest.raises(ValueError, match="auc"):
        evaluate(model, batcher, extra=("aucc",))
    with pytest.raises(ValueError, match="pessimistic"):
        evaluate(model, batcher, ties="optimistic")
