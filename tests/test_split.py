from collections import Counter

import numpy as np
import pytest

from textrec.data.dataset import Dataset
from textrec.data.split import eval_examples, prefix_rows, sample_examples, train_windows, training_item_ids


def _pairs_from_rows(rows, max_seq_len):
    """(history tuple, target) for every loss position of every row, history cut to max_seq_len."""
    out = Counter()
    for inp, tgt in zip(rows.inputs, rows.targets):
        for t in np.flatnonzero(tgt):
            out[(tuple(inp[: t + 1][-max_seq_len:]), int(tgt[t]))] += 1
    return out


def _reference_pairs(ds, max_seq_len):
    out = Counter()
    for u in range(ds.n_users):
        train = list(ds.sequence(u)[:-2])
        for p in range(1, len(train)):
            out[(tuple(train[:p][-max_seq_len:]), train[p])] += 1
    return out


@pytest.mark.parametrize("max_seq_len", [3, 7, 50])
def test_windows_give_exactly_the_reference_prefix_pairs(tiny_world, max_seq_len):
    ref = _reference_pairs(tiny_world, max_seq_len)
    windows = train_windows(tiny_world, max_seq_len)
    assert _pairs_from_rows(windows, max_seq_len) == ref
    assert _pairs_from_rows(prefix_rows(tiny_world, max_seq_len), max_seq_len) == ref
    assert windows.n_targets.sum() == sum(ref.values())
    # a window has as many rows as users with >= 2 training items, plus one per target beyond the first window
    n_train = tiny_world.seq_lengths - 2
    assert len(windows.lengths) == (n_train >= 2).sum() + np.maximum(n_train - 1 - max_seq_len, 0).sum()


def test_windows_are_right_padded_with_lengths(tiny_world):
    w = train_windows(tiny_world, 5)
    cols = np.arange(5)
    assert ((w.inputs > 0) == (cols[None, :] < w.lengths[:, None])).all()
    assert (w.targets[w.inputs == 0] == 0).all()


def test_eval_examples_leave_one_out():
    ds = Dataset.from_sequences("s", list("abcdefg"), ["t"] * 7, ["u", "v"], [[1, 2, 3, 4, 5, 6, 7], [3, 2, 1]])
    valid, test = eval_examples(ds, "valid", 3), eval_examples(ds, "test", 3)
    assert valid.targets.tolist() == [6, 2] and test.targets.tolist() == [7, 1]
    assert valid.histories.tolist() == [[3, 4, 5], [3, 0, 0]]
    assert test.histories.tolist() == [[4, 5, 6], [3, 2, 0]]
    assert valid.lengths.tolist() == [3, 1] and test.lengths.tolist() == [3, 2]
    # untruncated histories for optional masking
    assert valid.full_items[valid.full_offsets[0] : valid.full_offsets[1]].tolist() == [1, 2, 3, 4, 5]
    assert test.full_items[test.full_offsets[1] : test.full_offsets[2]].tolist() == [3, 2]
    assert training_item_ids(ds).tolist() == [1, 2, 3, 4, 5]


def test_chunked_windows_train_every_target_once(tiny_world):
    exact = train_windows(tiny_world, 4)
    chunked = train_windows(tiny_world, 4, "chunked")
    per_user = lambda w: Counter((int(u), int(t)) for u, row in zip(w.users, w.targets) for t in row if t)
    assert per_user(chunked) == per_user(exact)  # the same targets, once each
    assert chunked.inputs.size < exact.inputs.size
    assert (chunked.lengths <= 4).all() and (chunked.lengths >= 1).all()


def test_a_validation_sample_keeps_whole_users_and_is_fixed_by_its_seed(tiny_world):
    full = eval_examples(tiny_world, "valid", 5)
    n = len(full.users) // 3
    sample = sample_examples(full, n, seed=7)
    assert len(sample.users) == n and np.all(np.diff(sample.users) > 0)  # distinct users, in user order
    assert np.array_equal(sample_examples(full, n, seed=7).users, sample.users)
    assert not np.array_equal(sample_examples(full, n, seed=8).users, sample.users)
    for i, u in enumerate(sample.users):  # every kept user's history, target and untruncated items, unchanged
        assert np.array_equal(sample.histories[i], full.histories[u]) and sample.targets[i] == full.targets[u]
        mine = sample.full_items[sample.full_offsets[i]:sample.full_offsets[i + 1]]
        assert np.array_equal(mine, full.full_items[full.full_offsets[u]:full.full_offsets[u + 1]])
    assert sample_examples(full, 0, seed=7) is full and sample_examples(full, len(full.users), seed=7) is full


def test_pretraining_validates_on_a_sample_of_users_by_default():
    from textrec.config import load_config
    from textrec.errors import ConfigError

    assert load_config(model="unisrec", kind="pretrain").eval.valid_users == 20_000
    assert load_config(model="unisrec").eval.valid_users == 0  # training and fine-tuning validate on everyone
    with pytest.raises(ConfigError, match="eval.valid_users"):
        load_config(model="unisrec", overrides=["eval.valid_users=-1"])
