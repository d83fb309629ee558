"""Leave-one-out split and the training / evaluation instances built from it.

Split (as UniSRec's ``process_amazon.py`` and RecBole's ``benchmark_filename`` files): for a user sequence
``s`` (oldest first) the training part is ``s[:-2]``, the validation target ``s[-2]`` with history
``s[:-2]``, and the test target ``s[-1]`` with history ``s[:-1]``; histories are truncated to their last
``max_seq_len`` items.

Training instances. The references materialise every prefix of the training part as its own padded row:
target ``s[p]`` with history ``s[:p][-max_seq_len:]`` for p = 1..len(train)-1 (``prefix_rows`` builds
exactly these; the Scientific ``.train.inter`` file is that list). textrec trains on *windows* instead: one
row per user holding the whole training part, with a next-item target at every position. With a causal
encoder and positions counted from the row start, the hidden state at position t of a window equals the
hidden state of the prefix that ends at t, so a window yields the same (history, target) pairs as its
prefix rows at a fraction of the cost. Training parts longer than ``max_seq_len + 1`` need extra rows:
for each target p > max_seq_len one row with history ``s[p - max_seq_len:p]`` whose only loss position is
the last. ``tests/test_split.py`` checks that windows and prefix rows give the same pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from textrec.data.dataset import Dataset

Split = Literal["valid", "test"]
LongSequences = Literal["exact", "chunked"]


@dataclass
class TrainWindows:
    """Right-padded training rows; ``targets[r, t]`` is the item after ``inputs[r, :t + 1]`` (0 = no loss)."""

    inputs: np.ndarray  # (R, max_seq_len) int32
    targets: np.ndarray  # (R, max_seq_len) int32
    lengths: np.ndarray  # (R,) int32, number of real items in inputs
    users: np.ndarray  # (R,) int64 user row each window comes from

    @property
    def n_targets(self) -> np.ndarray:
        """(R,) number of loss positions per row."""
        return (self.targets > 0).sum(axis=1)


@dataclass
class EvalExamples:
    """One (history, target) pair per user for the validation or the test split."""

    histories: np.ndarray  # (U, max_seq_len) int32, right-padded
    lengths: np.ndarray  # (U,) int32
    targets: np.ndarray  # (U,) int32
    users: np.ndarray  # (U,) int64 user rows
    full_offsets: np.ndarray  # (U + 1,) offsets of the *untruncated* histories in full_items
    full_items: np.ndarray  # every item the user had before the target (for optional history masking)


def _gather(items: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int) -> np.ndarray:
    """Rows ``items[starts[r] : starts[r] + lengths[r]]``, right-padded with 0 to ``width``."""
    cols = np.arange(width)
    valid = cols[None, :] < lengths[:, None]
    idx = np.where(valid, starts[:, None] + cols[None, :], 0)
    return np.where(valid, items[idx], 0).astype(np.int32)


def train_windows(ds: Dataset, max_seq_len: int, long_sequences: LongSequences = "exact") -> TrainWindows:
    """Whole-sequence training rows equivalent to the references' all-prefix rows (see module doc).

    ``long_sequences`` decides how targets beyond the first window of a long training part are trained:
    ``"exact"`` gives each its own row with the full ``max_seq_len`` history (the reference's pairs);
    ``"chunked"`` cuts the training part into consecutive windows of ``max_seq_len`` inputs, so the early
    positions of later windows see a shorter history. Chunking costs O(n) instead of O(n * max_seq_len)
    tokens per user, which matters for domains with very long sequences (MovieLens).
    """
    if long_sequences not in ("exact", "chunked"):
        raise ValueError(f"long_sequences must be 'exact' or 'chunked', not {long_sequences!r}")
    off = ds.seq_offsets
    n_train = ds.seq_lengths - 2  # length of each user's training part
    if long_sequences == "chunked":
        n_windows = np.where(n_train >= 2, -(-(n_train - 1) // max_seq_len), 0)
        users = np.repeat(np.arange(ds.n_users), n_windows)
        k = np.arange(users.size) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)  # window index
        starts = off[users] + k * max_seq_len
        m = np.minimum(n_train[users] - 1 - k * max_seq_len, max_seq_len)
        inputs = _gather(ds.seq_items, starts, m, max_seq_len)
        targets = _gather(ds.seq_items, starts + 1, m, max_seq_len)
        return TrainWindows(inputs, targets, m.astype(np.int32), users.astype(np.int64))
    users = np.flatnonzero(n_train >= 2)
    starts = off[users]
    m = np.minimum(n_train[users] - 1, max_seq_len)
    inputs = _gather(ds.seq_items, starts, m, max_seq_len)
    targets = _gather(ds.seq_items, starts + 1, m, max_seq_len)

    # Targets beyond the first window: p = max_seq_len + 1 .. n_train - 1, history s[p - L : p].
    n_extra = np.maximum(n_train - 1 - max_seq_len, 0)
    extra_users = np.repeat(np.arange(ds.n_users), n_extra)
    if extra_users.size:
        group_start = np.repeat(np.cumsum(n_extra) - n_extra, n_extra)
        p = max_seq_len + 1 + (np.arange(extra_users.size) - group_start)
        base = off[extra_users]
        full = np.full(extra_users.size, max_seq_len)
        x_inputs = _gather(ds.seq_items, base + p - max_seq_len, full, max_seq_len)
        x_targets = np.zeros_like(x_inputs)
        x_targets[:, -1] = ds.seq_items[base + p]
        inputs = np.concatenate([inputs, x_inputs])
        targets = np.concatenate([targets, x_targets])
        m = np.concatenate([m, full])
        users = np.concatenate([users, extra_users])
    return TrainWindows(inputs, targets, m.astype(np.int32), users.astype(np.int64))


def prefix_rows(ds: Dataset, max_seq_len: int, empty_history: bool = False) -> TrainWindows:
    """The references' training rows: one right-padded row per (prefix, next item), loss at the last item.

    Used by tests (the window/prefix equivalence) and by benchmarks that reproduce the reference cost.
    ``empty_history``: also each user's first item with no history (length 0, its target in column 0), as
    Recformer's fine-tuning draws it.
    """
    first = 0 if empty_history else 1  # the first target position
    n_train = ds.seq_lengths - 2
    counts = np.maximum(n_train - first, 0)
    users = np.repeat(np.arange(ds.n_users), counts)
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    p = first + (np.arange(users.size) - group_start)  # target position inside the training part
    hist_len = np.minimum(p, max_seq_len)
    base = ds.seq_offsets[users]
    inputs = _gather(ds.seq_items, base + p - hist_len, hist_len, max_seq_len)
    targets = np.zeros_like(inputs)
    targets[np.arange(users.size), np.maximum(hist_len - 1, 0)] = ds.seq_items[base + p]
    return TrainWindows(inputs, targets, hist_len.astype(np.int32), users.astype(np.int64))


def eval_examples(ds: Dataset, split: Split, max_seq_len: int) -> EvalExamples:
    """Validation (target ``s[-2]``) or test (target ``s[-1]``) pairs, histories cut to ``max_seq_len``."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be 'valid' or 'test', not {split!r}")
    off = ds.seq_offsets
    target_pos = off[1:] - (2 if split == "valid" else 1)
    full_len = target_pos - off[:-1]
    hist_len = np.minimum(full_len, max_seq_len)
    histories = _gather(ds.seq_items, target_pos - hist_len, hist_len, max_seq_len)
    full_offsets = np.concatenate([[0], np.cumsum(full_len)])
    mask = np.ones(ds.n_interactions, dtype=bool)
    mask[off[1:] - 1] = False  # drop each user's test item
    if split == "valid":
        mask[off[1:] - 2] = False
    return EvalExamples(
        histories=histories,
        lengths=hist_len.astype(np.int32),
        targets=ds.seq_items[target_pos].astype(np.int32),
        users=np.arange(ds.n_users, dtype=np.int64),
        full_offsets=full_offsets,
        full_items=ds.seq_items[mask],
    )


def sample_examples(examples: EvalExamples, n: int, seed: int) -> EvalExamples:
    """At most ``n`` of ``examples`` (0 = all): a uniform sample without replacement drawn with ``seed``, in user order."""
    total = len(examples.users)
    if n <= 0 or total <= n:
        return examples
    keep = np.sort(np.random.default_rng(seed).choice(total, size=n, replace=False))
    starts, ends = examples.full_offsets[keep], examples.full_offsets[keep + 1]
    lengths = ends - starts
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    within = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)  # position inside each kept history
    return EvalExamples(
        histories=examples.histories[keep],
        lengths=examples.lengths[keep],
        targets=examples.targets[keep],
        users=examples.users[keep],
        full_offsets=offsets,
        full_items=examples.full_items[np.repeat(starts, lengths) + within],
    )


def training_item_ids(ds: Dataset) -> np.ndarray:
    """Sorted ids of the items that occur in some user's training part (the references' "strict" items)."""
    off = ds.seq_offsets
    keep = np.ones(ds.n_interactions, dtype=bool)
    keep[off[1:] - 1] = False
    keep[off[1:] - 2] = False
    return np.unique(ds.seq_items[keep])
