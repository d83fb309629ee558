"""The UniSRec raw-data preprocessing (``process_amazon.py``), vectorised, shared by the raw readers.

``build_dataset`` turns raw interactions (user key, item key, timestamp, optional rating; one entry per
record, in source-file order) and an item -> text mapping into a ``Dataset``. The steps and their order
follow REFERENCE_NOTES section 0, steps 1-2:

1. exact duplicate (user, item, rating, timestamp) records are dropped, the first one kept (the reference
   loads them into a Python ``set``);
2. optionally, records rated below ``opts.min_rating`` are dropped (not in the reference);
3. items without an entry in the text mapping (Amazon: no metadata record) are dropped when
   ``opts.drop_items_without_text``; an item whose metadata yields an empty text is kept, as in the reference;
4. iterative k-core: users and items with fewer than ``opts.k_core`` interactions are removed, all at once
   per round, until a round removes nothing. The k-core of a graph is unique, so this fixed point is the
   reference's whatever the removal order. With ``opts.max_users`` (not in the reference), all records of a
   seeded sample of that many of the remaining users are then kept, so a corpus can be sized to the machine:
   the sample is *not* filtered again (a k-core of a sparse sample would remove nearly everything), so its
   items may have fewer than k interactions in it, and each kept user has the history the full corpus gives;
5. each user's records are sorted by timestamp. Ties are broken by the record's position in the source
   (a stable sort), which makes the result deterministic. The reference's order for same-timestamp items
   is random: its records come out of a Python ``set``, whose iteration order varies between runs
   (its README warns about this);
6. users left with fewer than 3 interactions (possible with ``k_core < 3``) are dropped and counted; the
   k-core is not re-run after this;
7. ids: users in order of first appearance in the source; items numbered 1..n in order of first
   appearance when walking the users in that order through their chronological sequences (the
   reference's ``item2index``, 0-based there, with the same walk over its ordered records).

Timestamps are stored as int64 (float timestamps are floored, after sorting on the full value). Every count
removed by a step goes to ``meta["counts"]``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

from textrec.data.dataset import MIN_SEQ_LEN, Dataset
from textrec.errors import DataError

if TYPE_CHECKING:  # a runtime import would be circular: the format readers import this module
    from textrec.data.formats.common import PrepareOptions

log = logging.getLogger("textrec.data.preprocess")

TIE_BREAK = "timestamp, then position in the source file (stable sort)"


class KCore(NamedTuple):
    keep: np.ndarray  # (n,) bool, the records of the k-core
    rounds: int  # rounds that removed something


def factorize(values, what: str = "keys") -> tuple[np.ndarray, list[str]]:
    """Codes (int64, one per value) and the distinct values as strings, in order of first appearance."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if not isinstance(values, pa.Array):
        values = pa.array(values if isinstance(values, list) else list(values))
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        values = pc.cast(values, pa.string())
    if values.null_count:
        raise DataError(f"{what}: {values.null_count} missing (null) value(s)")
    encoded = values.dictionary_encode()
    return encoded.indices.to_numpy().astype(np.int64), encoded.dictionary.to_pylist()


def first_occurrence_mask(users: np.ndarray, items: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """True for the first record (in source order) of each distinct (user, item, *keys) combination."""
    n = users.shape[0]
    pair = users * (int(items.max()) + 1 if n else 1) + items  # one int64 key: fewer sort passes
    columns = (pair, *keys)
    order = np.lexsort(columns[::-1])  # stable: equal rows keep their source order
    same = np.ones(max(n - 1, 0), dtype=bool)
    for key in columns:
        k = key[order]
        same &= k[1:] == k[:-1]
    keep = np.ones(n, dtype=bool)
    keep[order[1:][same]] = False
    return keep


def k_core(users: np.ndarray, items: np.ndarray, k: int) -> KCore:
    """Iterative user and item k-core of the records (users[r], items[r]): a fixed point, vectorised."""
    idx = np.arange(users.shape[0])
    u, i = users, items
    n_users = int(users.max()) + 1 if users.size else 0
    n_items = int(items.max()) + 1 if items.size else 0
    rounds = 0
    while k > 0 and idx.size:
        ok = (np.bincount(u, minlength=n_users)[u] >= k) & (np.bincount(i, minlength=n_items)[i] >= k)
        if ok.all():
            break
        rounds += 1
        idx, u, i = idx[ok], u[ok], i[ok]
    keep = np.zeros(users.shape[0], dtype=bool)
    keep[idx] = True
    return KCore(keep, rounds)


def _as_times(times, where) -> np.ndarray:
    times = np.asarray(times)
    if times.dtype.kind not in "iuf":
        raise DataError(f"{where}: timestamps must be numbers, got dtype {times.dtype}")
    if times.dtype.kind == "f" and not np.isfinite(times).all():
        raise DataError(f"{where}: timestamps contain NaN or infinity")
    if times.dtype.kind == "f" and times.size and np.abs(times).max() >= 2.0**63:  # stored as int64 seconds
        raise DataError(f"{where}: timestamp {times[np.argmax(np.abs(times))]:g} is out of range (not seconds since 1970?)")
    return times


def build_dataset(
    name: str,
    users: Sequence[str],
    items: Sequence[str],
    times: Sequence[float] | np.ndarray,
    item_texts: Mapping[str, str],
    opts: PrepareOptions,
    *,
    ratings: Sequence[float] | np.ndarray | None = None,
    item_attributes: Mapping[str, dict[str, str]] | None = None,
    source: Mapping | None = None,
    extra_meta: Mapping | None = None,
) -> Dataset:
    """Raw records in source order -> ``Dataset`` (see the module doc for the steps and the id order).

    ``users`` / ``items`` are keys (lists of str or pyarrow arrays), ``times`` numbers, ``item_texts`` maps
    an item key to its text (a key absent = no metadata), ``source`` is stored as ``meta["source"]`` and
    ``extra_meta`` (e.g. the bad-line report) is merged into ``meta``.
    """
    source = dict(source or {})
    where = source.get("path", name)
    user_codes, user_keys_raw = factorize(users, f"{where}: user keys")
    item_codes, item_keys_raw = factorize(items, f"{where}: item keys")
    cols = {"user": user_codes, "item": item_codes, "time": _as_times(times, where)}
    if ratings is not None:
        cols["rating"] = np.asarray(ratings, dtype=np.float64)
    lengths = {k: v.shape[0] for k, v in cols.items()}
    if len(set(lengths.values())) != 1:
        raise DataError(f"{where}: interaction columns differ in length: {lengths}")
    counts: dict[str, int] = {"raw_interactions": int(user_codes.shape[0])}
    _require(cols, "reading", where, counts)

    cols = _filter(cols, first_occurrence_mask(*cols.values()), "duplicates_removed", counts)
    if opts.min_rating is not None:
        if "rating" not in cols:
            raise DataError(f"{where}: min_rating={opts.min_rating} given but this source has no ratings")
        cols = _filter(cols, cols["rating"] >= opts.min_rating, "below_min_rating_removed", counts)
        _require(cols, f"the min_rating={opts.min_rating} filter", where, counts)
    has_text = np.fromiter((k in item_texts for k in item_keys_raw), dtype=bool, count=len(item_keys_raw))
    counts["items_without_text"] = int((~has_text).sum())
    if opts.drop_items_without_text:
        cols = _filter(cols, has_text[cols["item"]], "items_without_text_removed", counts)
        _require(cols, "dropping items without text/metadata", where, counts)
    core = k_core(cols["user"], cols["item"], opts.k_core)
    users_before, items_before = _n_distinct(cols["user"]), _n_distinct(cols["item"])
    cols = _filter(cols, core.keep, "k_core_removed", counts)
    counts["k_core_rounds"] = core.rounds
    counts["k_core_users_removed"] = users_before - _n_distinct(cols["user"])
    counts["k_core_items_removed"] = items_before - _n_distinct(cols["item"])
    _require(cols, f"the {opts.k_core}-core filter", where, counts)
    if opts.max_users is not None:
        cols = _sample_users(cols, opts.max_users, opts.sample_seed, where, counts)

    order = np.lexsort((cols["time"], cols["user"]))  # stable: same-timestamp records keep their source order
    cols = {k: v[order] for k, v in cols.items()}
    per_user = np.bincount(cols["user"], minlength=len(user_keys_raw))
    counts["short_users_removed"] = int(((per_user > 0) & (per_user < MIN_SEQ_LEN)).sum())
    cols = _filter(cols, per_user[cols["user"]] >= MIN_SEQ_LEN, "short_user_interactions_removed", counts)
    _require(cols, f"dropping users with fewer than {MIN_SEQ_LEN} interactions", where, counts)
    return _assemble(name, cols, user_keys_raw, item_keys_raw, item_texts, item_attributes, opts, source, counts, extra_meta)


def _sample_users(cols: dict[str, np.ndarray], max_users: int, seed: int, where, counts: dict[str, int]) -> dict[str, np.ndarray]:
    """Keep all records of a seeded sample of ``max_users`` users (all users when there are no more than that)."""
    if max_users < 1:
        raise DataError(f"{where}: max_users must be at least 1, not {max_users}")
    present = np.flatnonzero(np.bincount(cols["user"]))
    counts["users_before_sampling"] = int(present.size)
    if present.size <= max_users:
        counts["sampled_out_interactions"] = 0
        return cols
    chosen = np.zeros(int(cols["user"].max()) + 1, dtype=bool)
    chosen[np.random.default_rng(seed).choice(present, max_users, replace=False)] = True
    return _filter(cols, chosen[cols["user"]], "sampled_out_interactions", counts)


def _filter(cols: dict[str, np.ndarray], keep: np.ndarray, counter: str, counts: dict[str, int]) -> dict[str, np.ndarray]:
    counts[counter] = int(keep.shape[0] - keep.sum())
    return {k: v[keep] for k, v in cols.items()}


def _require(cols: dict[str, np.ndarray], step: str, where, counts: dict[str, int]) -> None:
    if cols["user"].shape[0] == 0:
        removed = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
        raise DataError(f"{where}: no interactions left after {step} ({removed})")



_DROPS = (  # counter in meta["counts"] -> what it counts, in the order the steps run
    ("duplicates_removed", "duplicate interactions"),
    ("below_min_rating_removed", "interactions rated below --min-rating"),
    ("items_without_text_removed", "interactions of items with no text/metadata"),
    ("k_core_removed", "interactions outside the k-core"),
    ("sampled_out_interactions", "interactions of users left out by --max-users"),
    ("short_user_interactions_removed", f"interactions of users with fewer than {MIN_SEQ_LEN}"),
)


def dropped_summary(counts: Mapping[str, int], duplicate_item_rows: int = 0) -> str:
    """What preprocessing removed, in words (empty when nothing was): ``textrec prepare`` prints it."""
    parts = [f"{counts[k]:,} {what}" for k, what in _DROPS if counts.get(k)]
    if duplicate_item_rows:
        parts.append(f"{duplicate_item_rows:,} repeated item rows (the first row of an item kept)")
    if not parts:
        return ""
    kept = counts.get("interactions")
    head = f"kept {kept:,} of {counts['raw_interactions']:,} interactions; dropped " if kept is not None else "dropped "
    return head + ", ".join(parts) + " (counts in meta.json)"


def _n_distinct(codes: np.ndarray) -> int:
    return int(np.count_nonzero(np.bincount(codes))) if codes.size else 0


def _assemble(
    name: str,
    cols: dict[str, np.ndarray],
    user_keys_raw: list[str],
    item_keys_raw: list[str],
    item_texts: Mapping[str, str],
    item_attributes: Mapping[str, dict[str, str]] | None,
    opts: PrepareOptions,
    source: dict,
    counts: dict[str, int],
    extra_meta: Mapping | None,
) -> Dataset:
    """Records sorted by (user, time) -> dense ids (module doc, step 7) and the ``Dataset``."""
    user_codes = np.flatnonzero(np.bincount(cols["user"], minlength=len(user_keys_raw)))  # ascending = first appearance
    lengths = np.bincount(cols["user"], minlength=len(user_keys_raw))[user_codes]
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    first_items, first_pos = np.unique(cols["item"], return_index=True)
    item_codes = first_items[np.argsort(first_pos, kind="stable")]  # the reference's item2index order
    item_id = np.zeros(len(item_keys_raw), dtype=np.int64)
    item_id[item_codes] = np.arange(1, item_codes.size + 1)
    item_keys = [item_keys_raw[c] for c in item_codes]
    times = cols["time"] if cols["time"].dtype.kind in "iu" else np.floor(cols["time"])
    attributes = None
    if item_attributes is not None:
        attributes = [dict(item_attributes.get(k, {})) for k in item_keys]
    counts.update(users=int(user_codes.size), items=int(item_codes.size), interactions=int(cols["user"].shape[0]))
    summary = dropped_summary(counts, source.get("duplicate_item_rows", 0))
    if summary:
        log.warning("%s: %s", source.get("path", name), summary)
    meta = {
        "source": source,
        "filters": {
            "dedup": "exact (user, item, rating, timestamp) duplicates, first kept",
            "min_rating": opts.min_rating,
            "drop_items_without_text": opts.drop_items_without_text,
            "k_core": opts.k_core,
            "min_seq_len": MIN_SEQ_LEN,
            "order": TIE_BREAK,
            "ids": "users by first appearance in the source; items by first appearance along the ordered sequences",
        },
        "counts": counts,
        **dict(extra_meta or {}),
    }
    return Dataset(
        name=name,
        item_keys=item_keys,
        item_texts=[item_texts.get(k, "") for k in item_keys],
        user_keys=[user_keys_raw[c] for c in user_codes],
        seq_offsets=offsets,
        seq_items=item_id[cols["item"]].astype(np.int32),
        seq_times=times.astype(np.int64),
        item_attributes=attributes,
        meta=meta,
    )
