import numpy as np
import pytest
import torch

from textrec.data.batching import EvalBatcher, TrainBatcher
from textrec.data.split import eval_examples, train_windows


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
