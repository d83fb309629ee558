"""Recformer's exact savings: each computes the same outputs (within fp32 rounding) with less work.

The last layer for ``<s>`` alone, rows grouped by token count, training buckets by token count, fp32 training
logits under autocast, no second validation pass after the best weights are restored, stage-1 validation every
k epochs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from textrec.config import load_config
from textrec.data.batching import SeqBatch, TrainBatcher
from textrec.data.split import TrainWindows
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.models.recformer import Recformer
from textrec.models.spec import ItemInputs
from textrec.train.inputs import build_model

TINY = ["model.backbone=random", "model.hidden_size=32", "model.n_heads=2", "model.inner_size=37", "model.n_layers=2"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread beats two contending ones


def build(attributes, *overrides, seed=0) -> Recformer:
    cfg = load_config(model="recformer", overrides=[*TINY, *overrides])
    torch.manual_seed(seed)
    return build_model(cfg, ItemInputs(n_items=len(attributes), attributes=list(attributes))).eval()


def _rows(n_items: int, n_rows: int, max_len: int, seed: int = 0) -> SeqBatch:
    """Right-padded histories of 1..max_len random items."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n_rows,), generator=g)
    seq = torch.randint(1, n_items + 1, (n_rows, max_len), generator=g)
    seq = torch.where(torch.arange(max_len)[None, :] < lengths[:, None], seq, 0)
    return SeqBatch(seq, lengths)


def test_last_layer_for_s_alone_equals_the_whole_layers_s_row(tiny_world):
    # a 6-token window, so that the local attention of the last layer is windowed and differs from <s>'s
    model = build(tiny_world.item_attributes, "model.attention_window=6", "model.init_std=0.1")
    batch = _rows(tiny_world.n_items, 12, 6)
    tok = model.sequence_tokens(batch.item_seq, batch.seq_len)
    assert tok.ids.shape[1] > 4  # rows longer than the window
    with torch.no_grad():
        whole = model.hidden(tok)  # (B, W, D) every row of the last layer
        alone = model.hidden(tok, bos_only=True)  # (B, 1, D)
        assert alone.shape == (12, 1, 32)
        torch.testing.assert_close(alone[:, 0], whole[:, 0], atol=1e-6, rtol=1e-5)
        assert not torch.allclose(whole[:, 1], whole[:, 0], atol=1e-3)  # the other rows are not <s>'s
        torch.testing.assert_close(model.pool(tok), whole[:, 0], atol=1e-6, rtol=1e-5)
    # gradients too (training mode without dropout): the saving is used by the training loss
    nodrop = build(tiny_world.item_attributes, "model.attention_window=6", "model.init_std=0.1", "model.hidden_dropout=0",
                   "model.attn_dropout=0").train()
    grads = []
    for bos_only in (False, True):
        nodrop.zero_grad()
        nodrop.hidden(tok, bos_only=bos_only)[:, 0].square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in nodrop.layers.parameters() if p.grad is not None]))
    # the whole layer's local projections of the last layer get a zero gradient, the <s>-only layer none at all
    assert grads[0].numel() > grads[1].numel()
    full = {n: p for n, p in nodrop.named_parameters()}
    nodrop.zero_grad()
    nodrop.hidden(tok, bos_only=True)[:, 0].square().sum().backward()
    alone_grads = {n: p.grad.clone() for n, p in full.items() if p.grad is not None}
    nodrop.zero_grad()
    nodrop.hidden(tok)[:, 0].square().sum().backward()
    for n, g in alone_grads.items():
        torch.testing.assert_close(g, full[n].grad, atol=1e-6, rtol=1e-4)


def test_rows_grouped_by_token_count_equal_one_padded_pass(tiny_world):
    attrs = tiny_world.item_attributes
    one_pass = build(attrs, "model.attention_window=6", "model.init_std=0.1")
    grouped = build(attrs, "model.attention_window=6", "model.init_std=0.1", "model.encode_tokens=60")
    batch = _rows(tiny_world.n_items, 40, 8, seed=3)
    tok = one_pass.sequence_tokens(batch.item_seq, batch.seq_len)
    assert tok.ids.shape[0] * tok.ids.shape[1] > 60  # several passes
    assert len(set(tok.real.sum(dim=1).tolist())) > 5  # rows of many widths, in no sorted order
    with torch.no_grad():
        want, got = one_pass.encode(batch), grouped.encode(batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    # the groups are cut to their widths: fewer token positions computed than rows x the batch's width
    widths = []
    real_pool = Recformer.pool

    def spy(self, t):
        widths.append(t.ids.shape)
        return real_pool(self, t)

    Recformer.pool = spy
    try:
        with torch.no_grad():
            grouped.encode(batch)
    finally:
        Recformer.pool = real_pool
    assert sum(b * w for b, w in widths) < tok.ids.numel()
    assert all(b * w <= 60 or b == 1 for b, w in widths)
    assert sum(b for b, _ in widths) == 40


def test_row_sizes_are_the_token_rows_widths_and_buckets_sort_by_them(tiny_world):
    model = build(tiny_world.item_attributes, "model.max_token_num=40", "model.max_item_embeddings=4")
    batch = _rows(tiny_world.n_items, 50, 7, seed=5)
    sizes = model.row_sizes(batch.item_seq, batch.seq_len)
    tok = model.sequence_tokens(batch.item_seq, batch.seq_len)
    assert torch.equal(sizes, tok.real.sum(dim=1))
    assert sizes.max() == 40 and sizes.min() < 40  # the budget cuts some rows, not others
    targets = np.zeros_like(batch.item_seq.numpy())
    targets[np.arange(50), batch.seq_len.numpy() - 1] = 1  # one target per row: a batch of 5 targets is 5 rows
    windows = TrainWindows(batch.item_seq.numpy(), targets, batch.seq_len.numpy(), np.arange(50))
    batcher = TrainBatcher(windows, 5, batching="bucket", seed=0)
    by_items = batcher.plan()
    batcher.bucket_by(sizes)
    by_tokens = batcher.plan()
    assert sorted(torch.cat(by_tokens).tolist()) == list(range(50))  # every row once
    padded = lambda plan: sum(len(rows) * int(sizes[rows].max()) for rows in plan)
    assert padded(by_tokens) < padded(by_items)
    assert padded(by_tokens) == sum(len(c) * int(c.max()) for c in sizes.sort().values.split(5))
    with pytest.raises(ValueError, match="one size per training row"):
        batcher.bucket_by(sizes[:-1])


def test_training_logits_are_fp32_under_cpu_autocast(tiny_world):
    model = build(tiny_world.item_attributes, "model.init_std=0.1", "model.hidden_dropout=0", "model.attn_dropout=0")
    batch = _rows(tiny_world.n_items, 16, 4, seed=7)
    targets = torch.zeros_like(batch.item_seq)
    targets[torch.arange(16), batch.seq_len - 1] = torch.arange(1, 17)
    batch = batch._replace(targets=targets)
    items = model.item_embeddings()[1:].clone()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(batch)
        seq = model.encode(batch)
        low = F.cross_entropy((seq @ items.T / 0.05).float(), torch.arange(16))  # bf16 logits, as before
    exact = F.cross_entropy(seq.float() @ items.T / 0.05, torch.arange(16))
    assert float(loss) == pytest.approx(float(exact), abs=1e-6)
    assert abs(float(low) - float(exact)) > 1e-4  # bf16 logits would not give it


LEARN = [*TINY, "train.device=cpu", "train.num_threads=1", "eval.ks=[10]", "model.hidden_dropout=0", "model.attn_dropout=0",
         "model.init_std=0.1", "data.max_seq_len=3", "train.batch_size=32", "train.lr=2e-3"]


def test_no_second_validation_pass_and_stage_1_validated_every_k_epochs(tmp_path, monkeypatch):
    from textrec.train import loop
    from textrec.train.run import train_run

    path = tmp_path / "world"
    make_domain("tools", WorldSpec(n_items=40, n_users=120, min_len=5, max_len=10, noise=0.1), seed=1).save(path)
    calls = []
    real = loop._evaluate

    def counting(model, batcher, ec):
        calls.append(batcher)
        return real(model, batcher, ec)

    monkeypatch.setattr(loop, "_evaluate", counting)
    cfg = load_config(model="recformer", overrides=[*LEARN, "train.epochs=5", "model.stage_1_max_epochs=4",
                                                    "model.stage_1_eval_every=2", "model.stage_2_patience=1"])
    result = train_run(path, cfg, tmp_path / "run", quiet=True).fit
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log if "valid" in r] == [2, 4, 5]  # stage 1 every 2 epochs, stage 2 every epoch
    assert [r["phase"].startswith("stage 1") for r in log] == [True] * 4 + [False]
    assert len(calls) == 3 + 1  # three validation passes and the test; none after restoring the best weights
    best = next(r for r in log if r["epoch"] == result.best_epoch)
    assert result.valid == best["valid"]
    # the skipped pass would have given the same numbers: the restored weights re-evaluated
    from textrec.train.run import load_run

    run = load_run(tmp_path / "run")
    from textrec.train.run import make_batchers

    _, valid_b, _ = make_batchers(run.dataset, run.cfg, run.device)
    again = real(run.model, valid_b, run.cfg.eval).metrics
    assert again == pytest.approx(result.valid, abs=1e-6)
    with pytest.raises(Exception, match="stage_1_eval_every"):
        load_config(model="recformer", overrides=[*TINY, "model.stage_1_eval_every=-1"])


def test_fine_tuning_rows_include_an_empty_history_as_the_reference(tmp_path):
    """The reference draws the target position t ~ U[0, n-1] of a training part of n items: t = 0 is the first
    item with no history (<s> alone). Default: kept; ``model.empty_history=false``: histories of one item at least."""
    from textrec.data.dataset import Dataset
    from textrec.data.split import prefix_rows
    from textrec.train.run import make_batchers

    ds = Dataset.from_sequences("toy", [f"i{i}" for i in range(1, 8)], [f"item {i}" for i in range(1, 8)], ["a", "b"],
                                [[1, 2, 3, 4, 5], [6, 7, 1, 2]])
    rows = prefix_rows(ds, 4, empty_history=True)  # training parts [1, 2, 3] and [6, 7]
    assert rows.lengths.tolist() == [0, 1, 2, 0, 1]
    assert rows.targets[:, 0].tolist() == [1, 2, 0, 6, 7] and rows.targets[2, 1] == 3
    assert rows.inputs[0].tolist() == [0, 0, 0, 0]
    assert prefix_rows(ds, 4).lengths.tolist() == [1, 2, 1]  # without: the rows before the option
    attrs = [{"title": f"item {i}"} for i in range(1, 8)]
    for flag, n_rows in (([], 5), (["model.empty_history=false"], 3)):
        cfg = load_config(model="recformer", overrides=[*TINY, "train.batch_size=2", "data.max_seq_len=4", *flag])
        train_b, _, _ = make_batchers(ds, cfg, "cpu")
        assert train_b.n_rows == n_rows
    model = build(attrs, "model.hidden_dropout=0", "model.attn_dropout=0")
    empty = train_b.__class__(rows, 5, "cpu", seed=0, sample_per_user=False)
    batch = empty.batch(torch.tensor([0, 3]))  # two empty histories: <s> alone, targets in column 0
    assert batch.item_seq.shape == (2, 1) and batch.seq_len.tolist() == [0, 0]
    assert torch.equal(model.sequence_tokens(batch.item_seq, batch.seq_len).ids[:, 0], torch.full((2,), model.bos_id))
    with torch.no_grad():
        loss = model.loss(batch)
        seq = model.encode(batch)
    items = model.item_embeddings()[1:]
    want = F.cross_entropy(seq @ items.T / 0.05, torch.tensor([0, 5]))  # items 1 and 6
    assert float(loss) == pytest.approx(float(want), abs=1e-5)
    assert torch.allclose(seq[0], seq[1])  # no history: the same representation
