import dataclasses

import numpy as np
import pytest
import torch

from textrec.config import load_config
from textrec.data.batching import EvalBatcher, TrainBatcher
from textrec.data.multidomain import domain_of_rows, merge_domains
from textrec.data.split import eval_examples, train_windows
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.train.run import make_batchers


@pytest.mark.parametrize("batching", ["bucket", "random"])
def test_each_epoch_uses_every_row_once(tiny_world, batching):
    windows = train_windows(tiny_world, 8)
    b = TrainBatcher(windows, batch_size=100, batching=batching, seed=0)
    seen = []
    n_targets = 0
    for batch in b.epoch():
        assert batch.item_seq.shape == batch.targets.shape
        assert batch.item_seq.shape[1] == int(batch.seq_len.max())  # trimmed to the longest row
        n_targets += int((batch.targets > 0).sum())
        seen.append(batch.item_seq)
    assert n_targets == windows.n_targets.sum()
    assert sum(s.shape[0] for s in seen) == len(windows.lengths)
    assert len(seen) == len(b)


def test_batches_hold_about_batch_size_targets_and_bucketing_trims(tiny_world):
    windows = train_windows(tiny_world, 50)
    bucket = TrainBatcher(windows, batch_size=200, batching="bucket", seed=0)
    rand = TrainBatcher(windows, batch_size=200, batching="random", seed=0)
    sizes = [int((x.targets > 0).sum()) for x in bucket.epoch()]
    longest = int(windows.n_targets.max())
    assert all(abs(s - 200) < longest for s in sorted(sizes)[1:])  # all but the last batch: budget +- one row
    assert sum(sizes) == windows.n_targets.sum()
    cells = lambda b: sum(x.item_seq.numel() for x in b.epoch())
    assert cells(bucket) < 0.8 * cells(rand)  # bucketing computes much less padding


def test_seeded_plans_repeat(tiny_world):
    windows = train_windows(tiny_world, 8)
    plan = lambda: [r.tolist() for r in TrainBatcher(windows, 64, seed=5).plan()]
    assert plan() == plan()
    b = TrainBatcher(windows, 64, seed=5)
    assert [r.tolist() for r in b.plan()] != [r.tolist() for r in b.plan()]  # epochs differ


def test_eval_batches_cover_all_users_in_length_order(tiny_world):
    ex = eval_examples(tiny_world, "test", 6)
    rows = torch.cat([eb.rows for eb in EvalBatcher(ex, batch_size=37)])
    assert sorted(rows.tolist()) == list(range(tiny_world.n_users))
    assert np.all(np.diff(ex.lengths[rows.numpy()]) >= 0)


# ---- pre-training batches ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def two_lengths():
    """An Office-like domain of short sequences and a MovieLens-like one of long sequences, merged as pretrain_run does."""
    short = make_domain("office", WorldSpec(n_items=60, n_users=600, min_len=4, max_len=8), seed=1)
    long = make_domain("home", WorldSpec(n_items=60, n_users=300, min_len=20, max_len=40), seed=1)
    merged, _ = merge_domains([short, long])
    return merged, domain_of_rows([short, long])


def _batch_mix(merged, domains, extra=()):
    """Per batch (share of domain 0 among its targets, distinct users, rows, targets); domain 0's overall share;
    and the most targets any row carries in an epoch."""
    # default pre-training config; batches of 64 targets, so that (as with real data) users far outnumber a batch
    cfg = load_config(model="unisrec", overrides=["train.batch_size=64", *extra])
    train_b, _, _ = make_batchers(merged, cfg, "cpu", pretraining=True, domains=domains)
    n_targets = train_b.n_targets.numpy()  # what each row contributes per epoch
    overall = n_targets[train_b.row_domains.numpy() == 0].sum() / n_targets.sum()
    mix = []
    for rows in train_b.plan():
        b = train_b.batch(rows)
        per_row = (b.targets > 0).sum(dim=1)
        n = int(per_row.sum())
        mix.append((float(per_row[b.domain == 0].sum()) / n, len(set(b.users.tolist())), len(rows), n))
    return mix, overall, int(n_targets.max())


def _old_batching():
    """The batches before the fix: whole, uncapped windows in length buckets."""
    from textrec.config import DataConfig

    old = ["data.train_rows=windows", "train.batching=bucket"]
    if "pretrain_targets_per_row" in {f.name for f in dataclasses.fields(DataConfig)}:
        old.append("data.pretrain_targets_per_row=0")  # the per-window target cap, when there is one
    return old


@pytest.mark.parametrize("rows", ["auto", "prefixes"])
def test_pretraining_batches_mix_the_domains_in_proportion_and_hold_many_users(two_lengths, rows):
    mix, overall, per_row = _batch_mix(*two_lengths, extra=[f"data.train_rows={rows}"])
    assert 0.1 < overall < 0.5 and len(mix) > 50
    # batch b takes slice b of each domain: each domain's count is within one row's targets of its proportional part
    assert all(abs(share - overall) <= 2 * per_row / n for share, _, _, n in mix)
    # many users: rows are distinct users, and no user brings more targets than one row may carry
    assert np.median([users / n_rows for _, users, n_rows, _ in mix]) >= 0.9
    assert np.median([users / n * per_row for _, users, _, n in mix]) >= 0.9
    if rows == "prefixes":
        assert per_row == 1 and min(users / n for _, users, _, n in mix) >= 0.5
    # the old batches fail both bounds in this setup
    old, _, old_per_row = _batch_mix(*two_lengths, extra=_old_batching())
    assert old_per_row > per_row
    assert max(abs(share - overall) for share, _, _, _ in old) > 0.3
    assert np.median([users / n for _, users, _, n in old]) < 0.1 <= np.median([users / n for _, users, _, n in mix])


@pytest.mark.xfail(strict=True, reason="batching.py TrainBatcher._stratified: rows are length-sorted within a domain, so "
                   "the last slices hold the longest prefixes, which only the few longest users have (worst batch ~0.65)")
def test_every_pretraining_batch_of_prefix_rows_holds_targets_of_distinct_users(two_lengths):
    mix, _, _ = _batch_mix(*two_lengths, extra=["data.train_rows=prefixes"])
    assert min(users / n for _, users, _, n in mix) >= 0.9
