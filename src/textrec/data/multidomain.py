"""Several datasets as one catalogue, for multi-domain pre-training.

The reference merges its five pre-training domains into one RecBole dataset whose tokens are
``"{domain index}-{id}"`` (``to_pretrain_atomic_files.py``, REFERENCE_NOTES section 0). ``merge_domains``
does the same in memory: item ids of domain k are shifted by the number of items of the domains before
it, item and user keys are prefixed with the dataset name, and each user keeps their own sequence.
Per-item arrays (text embeddings, codes) are merged with ``merge_item_arrays`` in the same order.
A batch of the merged dataset mixes domains, which is what gives the references' "mixed-domain negatives".
"""

from __future__ import annotations

import numpy as np

from textrec.data.dataset import Dataset
from textrec.errors import DataError


def merge_domains(datasets: list[Dataset]) -> tuple[Dataset, np.ndarray]:
    """(merged dataset, item-id offset of each domain); domain k's item i becomes ``i + offsets[k]``."""
    if not datasets:
        raise DataError("no datasets to merge")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise DataError(f"datasets to merge must have distinct names, got {names}")
    offsets = np.cumsum([0] + [d.n_items for d in datasets[:-1]]).astype(np.int64)
    item_keys = [f"{d.name}:{k}" for d in datasets for k in d.item_keys]
    texts = [t for d in datasets for t in d.item_texts]
    users = [f"{d.name}:{u}" for d in datasets for u in d.user_keys]
    items = np.concatenate([d.seq_items.astype(np.int64) + off for d, off in zip(datasets, offsets)])
    seq_offsets = np.concatenate([[0]] + [d.seq_offsets[1:] + base for d, base in zip(datasets, np.cumsum([0] + [d.n_interactions for d in datasets[:-1]]))])
    attributes = None
    if all(d.item_attributes is not None for d in datasets):
        attributes = [a for d in datasets for a in d.item_attributes]
    merged = Dataset(
        name="+".join(names),
        item_keys=item_keys,
        item_texts=texts,
        user_keys=users,
        seq_offsets=seq_offsets,
        seq_items=items.astype(np.int32),
        item_attributes=attributes,
        meta={"source": {"format": "merged", "domains": names, "item_offsets": offsets.tolist()}},
    )
    return merged, offsets


def merge_item_arrays(arrays: list[np.ndarray]) -> np.ndarray:
    """Per-domain (n_k + 1, ...) arrays with a padding row 0 -> one (sum n_k + 1, ...) array."""
    shapes = {a.shape[1:] for a in arrays}
    if len(shapes) != 1:
        raise DataError(f"per-domain item arrays disagree in shape: {sorted(shapes)}")
    return np.concatenate([arrays[0][:1]] + [a[1:] for a in arrays])


def domain_of_rows(datasets: list[Dataset]) -> np.ndarray:
    """(total users,) domain index of each user row of the merged dataset."""
    return np.repeat(np.arange(len(datasets)), [d.n_users for d in datasets])
