"""The processed dataset: items with text, one chronological item sequence per user.

On disk a dataset is a directory::

    meta.json           source, filters, counts, content hash, format version
    items.parquet       item_id (1..n_items), item_key, text[, attributes (JSON object per item)]
    sequences.parquet   user_key, items (list of item ids, oldest first)[, timestamps]
    features/*.npy      optional dense item features, (n_items + 1, dim) float32, row 0 = padding

Derived artefacts (text embeddings, item codes) live in sub-directories next to these and are keyed by
the content hash, so they are never silently reused for different data.

Item ids are dense integers starting at 1; 0 is the padding id everywhere in textrec. The split is
leave-one-out by time on each user's sequence (see ``textrec.data.split``), so it is not stored: it is a
pure function of the sequences.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from textrec.errors import DataError
from textrec.io import atomic_dir, read_json, write_json

FORMAT_VERSION = 1
MIN_SEQ_LEN = 3  # leave-one-out needs at least one training item, a validation and a test target


def check_dataset_hash(expected: str | None, dataset: "Dataset | dict", where: str | Path) -> None:
    """Refuse ``dataset`` (a ``Dataset`` or its ``meta.json``) when its content hash is not ``expected``.

    ``where`` names what was made for the ``expected`` content (a run, an embeddings file). Re-preparing a
    dataset in place renumbers its items, so per-item weights or rows made before would silently attach to
    other items; this turns that into one line naming both hashes. ``expected=None`` (a record written
    before textrec kept hashes) is accepted.
    """
    if expected is None:
        return
    meta = dataset.meta if isinstance(dataset, Dataset) else dataset
    actual = meta.get("content_hash") or (dataset.content_hash() if isinstance(dataset, Dataset) else None)
    if actual != expected:
        name = meta.get("name", "the dataset")
        raise DataError(f"{where}: made for dataset content hash {expected[:12]}, but {name} now has content hash "
                        f"{str(actual)[:12]} (it was prepared again or changed); re-run the step that made {where}")


def is_dataset_dir(path: str | Path) -> bool:
    """Whether ``path`` is a directory ``Dataset.save`` wrote (it holds a textrec ``meta.json``)."""
    meta = Path(path) / "meta.json"
    if not meta.is_file():
        return False
    try:
        return "content_hash" in json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


@dataclass
class Dataset:
    """Items and per-user chronological sequences, held as flat (ragged) numpy arrays."""

    name: str
    item_keys: list[str]  # (n_items,) original key of item id i + 1
    item_texts: list[str]  # (n_items,) item text, "" when unknown
    user_keys: list[str]  # (n_users,)
    seq_offsets: np.ndarray  # (n_users + 1,) int64; user u's items are seq_items[off[u]:off[u+1]]
    seq_items: np.ndarray  # (n_interactions,) int32 item ids in 1..n_items
    seq_times: np.ndarray | None = None  # (n_interactions,) int64 timestamps, when known
    item_attributes: list[dict[str, str]] | None = None  # (n_items,) key-value attributes
    meta: dict = field(default_factory=dict)  # source, filters and anything the reader records
    features: dict[str, np.ndarray] = field(default_factory=dict)  # name -> (n_items + 1, dim)

    def __post_init__(self) -> None:
        self.seq_offsets = np.asarray(self.seq_offsets, dtype=np.int64)
        self.seq_items = np.asarray(self.seq_items, dtype=np.int32)
        if self.seq_times is not None:
            self.seq_times = np.asarray(self.seq_times, dtype=np.int64)
        self.validate()

    # ---- sizes -------------------------------------------------------------------------------
    @property
    def n_items(self) -> int:
        """Number of items, excluding the padding id 0."""
        return len(self.item_keys)

    @property
    def n_users(self) -> int:
        return len(self.user_keys)

    @property
    def n_interactions(self) -> int:
        return int(self.seq_items.shape[0])

    @property
    def seq_lengths(self) -> np.ndarray:
        return np.diff(self.seq_offsets)

    def sequence(self, user: int) -> np.ndarray:
        """The chronological item ids of user index ``user`` (0-based row)."""
        return self.seq_items[self.seq_offsets[user] : self.seq_offsets[user + 1]]

    # ---- checks ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``DataError`` if the arrays are inconsistent; cheap, vectorised."""
        n_items, n_users = self.n_items, self.n_users
        if n_items == 0:
            raise DataError(f"dataset {self.name!r} has no items")
        if n_users == 0:
            raise DataError(f"dataset {self.name!r} has no users")
        if len(self.item_texts) != n_items:
            raise DataError(f"dataset {self.name!r}: {len(self.item_texts)} texts for {n_items} items")
        if self.item_attributes is not None and len(self.item_attributes) != n_items:
            raise DataError(f"dataset {self.name!r}: attributes for {len(self.item_attributes)} of {n_items} items")
        off = self.seq_offsets
        if off.shape != (n_users + 1,) or off[0] != 0 or off[-1] != self.seq_items.shape[0]:
            raise DataError(f"dataset {self.name!r}: sequence offsets do not match {n_users} users")
        lengths = np.diff(off)
        if (lengths < MIN_SEQ_LEN).any():
            user = int(np.argmax(lengths < MIN_SEQ_LEN))
            raise DataError(
                f"dataset {self.name!r}: user {self.user_keys[user]!r} has {lengths[user]} interactions; "
                f"leave-one-out needs at least {MIN_SEQ_LEN}"
            )
        if self.seq_items.size and (self.seq_items.min() < 1 or self.seq_items.max() > n_items):
            raise DataError(f"dataset {self.name!r}: item ids must lie in 1..{n_items}")
        if self.seq_times is not None and self.seq_times.shape != self.seq_items.shape:
            raise DataError(f"dataset {self.name!r}: {self.seq_times.shape[0]} timestamps for {self.n_interactions} interactions")
        for name, feat in self.features.items():
            if feat.ndim != 2 or feat.shape[0] != n_items + 1:
                raise DataError(f"dataset {self.name!r}: feature {name!r} has shape {feat.shape}, expected ({n_items + 1}, dim)")

    # ---- identity ----------------------------------------------------------------------------
    def content_hash(self) -> str:
        """SHA-256 of the items (keys, texts, attributes) and the sequences; independent of file format."""
        h = hashlib.sha256()
        for part in (self.item_keys, self.item_texts, self.user_keys):
            h.update(json.dumps(part, ensure_ascii=False).encode())
        if self.item_attributes is not None:
            h.update(json.dumps(self.item_attributes, ensure_ascii=False, sort_keys=True).encode())
        h.update(self.seq_offsets.astype("<i8").tobytes())
        h.update(self.seq_items.astype("<i4").tobytes())
        if self.seq_times is not None:
            h.update(self.seq_times.astype("<i8").tobytes())
        return h.hexdigest()

    def statistics(self) -> dict:
        """Counts and averages as ``textrec info`` prints them."""
        lengths = self.seq_lengths
        text_chars = np.array([len(t) for t in self.item_texts])
        text_words = np.array([len(t.split()) for t in self.item_texts])
        return {
            "name": self.name,
            "users": self.n_users,
            "items": self.n_items,
            "interactions": self.n_interactions,
            "avg_seq_len": round(float(lengths.mean()), 2),
            "max_seq_len": int(lengths.max()),
            "min_seq_len": int(lengths.min()),
            "density": float(self.n_interactions / (self.n_users * self.n_items)),
            "avg_text_chars": round(float(text_chars.mean()), 2),
            "avg_text_words": round(float(text_words.mean()), 2),
            "items_without_text": int((text_chars == 0).sum()),
            # per table its width and the items that have it (a missing modality is an all-zero row)
            "features": {k: {"dim": int(v.shape[1]), "items_present": int((np.abs(v[1:]).sum(axis=1) > 0).sum())}
                         for k, v in self.features.items()},
        }

    # ---- disk --------------------------------------------------------------------------------
    def save(self, path: str | Path, overwrite: bool = False) -> Path:
        """Write the dataset directory atomically; return its path."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        if overwrite and path.exists():
            check_replaceable(path)
        with atomic_dir(path, overwrite=overwrite) as tmp:
            items = {
                "item_id": pa.array(np.arange(1, self.n_items + 1, dtype=np.int32)),
                "item_key": pa.array(self.item_keys, pa.string()),
                "text": pa.array(self.item_texts, pa.string()),
            }
            if self.item_attributes is not None:
                items["attributes"] = pa.array(
                    [json.dumps(a, ensure_ascii=False) for a in self.item_attributes], pa.string()
                )
            pq.write_table(pa.table(items), tmp / "items.parquet")
            seqs = {
                "user_key": pa.array(self.user_keys, pa.string()),
                "items": pa.ListArray.from_arrays(pa.array(self.seq_offsets.astype(np.int32)), pa.array(self.seq_items)),
            }
            if self.seq_times is not None:
                seqs["timestamps"] = pa.ListArray.from_arrays(
                    pa.array(self.seq_offsets.astype(np.int32)), pa.array(self.seq_times)
                )
            pq.write_table(pa.table(seqs), tmp / "sequences.parquet")
            if self.features:
                (tmp / "features").mkdir()
                for name, feat in self.features.items():
                    np.save(tmp / "features" / f"{name}.npy", np.ascontiguousarray(feat, dtype=np.float32))
            meta = dict(self.meta)
            meta.update(
                format_version=FORMAT_VERSION,
                name=self.name,
                n_users=self.n_users,
                n_items=self.n_items,
                n_interactions=self.n_interactions,
                split="leave_one_out",
                content_hash=self.content_hash(),
                features={k: list(v.shape) for k, v in self.features.items()},
                created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            )
            write_json(tmp / "meta.json", meta)
        self.meta = meta
        return path

    @classmethod
    def load(cls, path: str | Path, features: bool = True) -> Dataset:
        """Read a dataset directory written by ``save`` (or ``textrec prepare``)."""
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.is_dir():
            aside = sorted(path.parent.glob(f".{path.name}.*.old/old")) if path.name else []
            if aside:  # a write killed between moving the old dataset aside and the new one in
                raise DataError(f"{path}: a write of it was interrupted; the previous version is whole at {aside[0]} "
                                "(run the write again, which puts it back first, or move it back)")
            raise DataError(f"{path}: no such dataset directory (create one with `textrec prepare`)")
        meta_path = path / "meta.json"
        if not meta_path.exists():
            raise DataError(f"{path}: not a textrec dataset (no meta.json; create one with `textrec prepare`)")
        meta = read_json(meta_path)
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{meta_path}: format_version {meta.get('format_version')!r}, this textrec reads {FORMAT_VERSION}")
        try:
            items = pq.read_table(path / "items.parquet")
            seqs = pq.read_table(path / "sequences.parquet")
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot read dataset tables ({' '.join(str(e).split())})") from None
        item_ids = items.column("item_id").to_numpy()
        if not np.array_equal(item_ids, np.arange(1, len(item_ids) + 1)):
            raise DataError(f"{path / 'items.parquet'}: item_id must be 1..n_items in order")
        attributes = None
        if "attributes" in items.column_names:
            attributes = [json.loads(a) for a in items.column("attributes").to_pylist()]
        seq_col = seqs.column("items").combine_chunks()
        offsets = seq_col.offsets.to_numpy().astype(np.int64)
        flat = seq_col.values.to_numpy().astype(np.int32)
        times = None
        if "timestamps" in seqs.column_names:
            times = seqs.column("timestamps").combine_chunks().values.to_numpy().astype(np.int64)
        feats: dict[str, np.ndarray] = {}
        if features and (path / "features").is_dir():
            for f in sorted((path / "features").glob("*.npy")):
                side = f.with_suffix(".json")  # a table `textrec encode --images` added records what it was made for
                if side.is_file():
                    check_dataset_hash(read_json(side).get("dataset_content_hash"), meta, f)
                try:
                    feats[f.stem] = np.load(f, mmap_mode="r")
                except (OSError, ValueError) as e:
                    raise DataError(f"{f}: cannot read feature table ({e})") from None
        ds = cls(
            name=meta.get("name", path.name),
            item_keys=items.column("item_key").to_pylist(),
            item_texts=items.column("text").to_pylist(),
            user_keys=seqs.column("user_key").to_pylist(),
            seq_offsets=offsets - offsets[0],
            seq_items=flat,
            seq_times=times,
            item_attributes=attributes,
            meta=meta,
            features=feats,
        )
        return ds

    # ---- construction helpers ----------------------------------------------------------------
    @classmethod
    def from_sequences(
        cls,
        name: str,
        item_keys: list[str],
        item_texts: list[str],
        user_keys: list[str],
        sequences: list[np.ndarray] | list[list[int]],
        times: list[np.ndarray] | None = None,
        **kwargs,
    ) -> Dataset:
        """Build from one item-id list per user (ids already in 1..n_items, oldest first)."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        offsets = np.concatenate([[0], np.cumsum(lengths)])
        flat = np.concatenate([np.asarray(s, dtype=np.int32) for s in sequences]) if sequences else np.zeros(0, np.int32)
        flat_times = None
        if times is not None:
            flat_times = np.concatenate([np.asarray(t, dtype=np.int64) for t in times])
        return cls(name, list(item_keys), list(item_texts), list(user_keys), offsets, flat, flat_times, **kwargs)

    def item_index(self) -> dict[str, int]:
        """Map original item key -> item id (1-based)."""
        return {k: i + 1 for i, k in enumerate(self.item_keys)}

    def user_index(self) -> dict[str, int]:
        """Map original user key -> user row (0-based)."""
        return {k: i for i, k in enumerate(self.user_keys)}


def _is_run_dir(path: Path) -> bool:
    try:
        return "textrec_version" in json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False


def check_replaceable(path: str | Path) -> None:
    """Refuse to replace ``path`` unless textrec wrote it: a dataset or run directory, or an empty one.

    ``--overwrite`` must never delete a folder a user made (or the one a command runs in).
    """
    path = Path(path)
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents:
        raise DataError(f"{path}: refusing to replace the current directory or one above it; choose another --out")
    if not path.is_dir():
        raise DataError(f"{path}: exists and is not a directory; refusing to replace it (remove it yourself)")
    if not any(path.iterdir()) or is_dataset_dir(path) or _is_run_dir(path):
        return
    if {p.name for p in path.iterdir()} <= {"train", "eval"} and all(is_dataset_dir(p) for p in path.iterdir()):
        return  # made by `textrec holdout`
    raise DataError(f"{path}: not a directory textrec wrote (no dataset meta.json); refusing to replace it with "
                    "--overwrite (remove it yourself or choose another --out)")
