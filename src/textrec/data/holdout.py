"""Cold-start items: hold a slice of the catalogue out of training entirely, and test on it.

The case no item-ID model can serve: items that nobody interacted with while the model was trained. From a
dataset ``ds`` and a fraction ``f`` of its items (a seeded sample, ``hold_out_items``), two datasets are made:

* **train**: the catalogue without the held-out items (item ids renumbered, the others in their order), and
  every user's sequence with every interaction with a held-out item removed; users left with fewer than
  ``MIN_SEQ_LEN`` items are dropped (counted in ``meta.holdout.dropped_users``). A model trained (and early
  stopped, on warm validation targets) on it has never seen a held-out item, not even as a negative.
* **eval**: the whole catalogue, in ``ds``'s item order, and the same users with their *train* sequences;
  a user whose last interaction in ``ds`` was with a held-out item gets it back as the new last item. So a
  test target is cold (held out) exactly for those users, and warm for every other user, whose test example
  is the one of the train dataset. ``meta.holdout.held_out`` lists the held-out item keys, which
  ``textrec evaluate`` reads to report the cold and the warm users apart.

A content model (one that reads item text, codes, features) trained on the train dataset ranks the eval
catalogue zero-shot (``textrec evaluate RUN --data EVAL``): the held-out items get their vectors from their
content only. Models with a weight per item (SASRec, transductive modes) are refused there, as they must be.

Histories lose the held-out items they held (a user's interactions with new items are unknown at training
time); validation targets are always warm, so model selection never sees a held-out item either.
"""

from __future__ import annotations

import numpy as np

from textrec.data.dataset import MIN_SEQ_LEN, Dataset
from textrec.errors import DataError


def held_out_sample(n_items: int, fraction: float, seed: int) -> np.ndarray:
    """Sorted item ids (1-based) of a seeded sample of ``round(fraction * n_items)`` items (at least one)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"hold-out fraction must be in (0, 1), not {fraction}")
    n = max(1, int(round(fraction * n_items)))
    if n >= n_items:
        raise DataError(f"hold-out fraction {fraction} of {n_items} items leaves no item to train on")
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, n, replace=False)) + 1


def hold_out_items(ds: Dataset, fraction: float, seed: int = 0) -> tuple[Dataset, Dataset]:
    """(train, eval) datasets with a seeded ``fraction`` of ``ds``'s items held out of training (module doc)."""
    held = held_out_sample(ds.n_items, fraction, seed)
    is_held = np.zeros(ds.n_items + 1, dtype=bool)
    is_held[held] = True
    kept = np.flatnonzero(~is_held[1:]) + 1  # old ids of the items the train catalogue keeps
    new_id = np.zeros(ds.n_items + 1, dtype=np.int32)
    new_id[kept] = np.arange(1, len(kept) + 1, dtype=np.int32)

    train_seqs, eval_seqs, users, train_times, eval_times = [], [], [], [], []
    dropped = cold_users = 0
    for u in range(ds.n_users):
        seq = ds.sequence(u)
        warm = ~is_held[seq]
        if int(warm.sum()) < MIN_SEQ_LEN:
            dropped += 1
            continue
        users.append(ds.user_keys[u])
        train_seqs.append(new_id[seq[warm]])
        cold_last = bool(is_held[seq[-1]])
        cold_users += cold_last
        eval_seqs.append(np.concatenate([seq[warm], seq[-1:]]) if cold_last else seq[warm])
        if ds.seq_times is not None:
            t = ds.seq_times[ds.seq_offsets[u] : ds.seq_offsets[u + 1]]
            train_times.append(t[warm])
            eval_times.append(np.concatenate([t[warm], t[-1:]]) if cold_last else t[warm])
    if not users:
        raise DataError(f"{ds.name}: holding out {len(held):,} items leaves no user with {MIN_SEQ_LEN} interactions")
    record = {"of": ds.name, "source": ds.meta.get("source"), "content_hash": ds.meta.get("content_hash") or ds.content_hash(),
              "fraction": fraction, "seed": seed, "held_out_items": int(len(held)), "dropped_users": dropped,
              "cold_test_users": cold_users}
    times = (train_times, eval_times) if ds.seq_times is not None else (None, None)
    attrs = ds.item_attributes
    train = Dataset.from_sequences(
        f"{ds.name}-holdout", [ds.item_keys[i - 1] for i in kept], [ds.item_texts[i - 1] for i in kept], users, train_seqs,
        times[0], item_attributes=None if attrs is None else [attrs[i - 1] for i in kept],
        meta={"source": ds.meta.get("source"), "holdout": {**record, "role": "train"}},
        features={k: np.asarray(v)[np.concatenate([[0], kept])] for k, v in ds.features.items()})
    evaluation = Dataset.from_sequences(
        f"{ds.name}-holdout-eval", ds.item_keys, ds.item_texts, users, eval_seqs, times[1], item_attributes=attrs,
        meta={"source": ds.meta.get("source"),
              "holdout": {**record, "role": "eval", "held_out": [ds.item_keys[i - 1] for i in held]}},
        features={k: np.asarray(v) for k, v in ds.features.items()})
    return train, evaluation


def held_out_ids(ds: Dataset) -> np.ndarray | None:
    """Item ids of ``ds`` that a hold-out left out of training (its ``meta.holdout.held_out``), or None."""
    keys = (ds.meta.get("holdout") or {}).get("held_out")
    if not keys:
        return None
    index = ds.item_index()
    missing = [k for k in keys if k not in index]
    if missing:
        raise DataError(f"{ds.name}: meta.json holdout names {len(missing)} item(s) not in the catalogue, e.g. {missing[0]!r}")
    return np.array(sorted(index[k] for k in keys), dtype=np.int64)
