"""ReChorus datasets with item text (e.g. ``../shared/data/amazon2014-office-rechorus``).

Files in one directory, all tab-separated with a header:

* ``train.csv``: ``user_id  item_id  time``, time-ascending;
* ``dev.csv`` / ``test.csv``: ``user_id  item_id  time  neg_items``, one row per user (the second-to-last
  and last item); the sampled negatives (and any other extra column) are ignored, since textrec ranks
  the full catalogue;
* ``<Name>.item2index``: ``ASIN<TAB>item_id`` without header, the ids used in the csv files;
* ``<Name>.text``: header ``id<TAB>text``, keyed by ASIN.

Each user's sequence is their train rows in file order, then the dev item, then the test item, so the
textrec leave-one-out split reproduces ReChorus's dev and test targets exactly. Nothing is filtered or
re-sorted (the data is published 5-core) and texts are used as given; ``opts.k_core``, ``min_rating``
and ``drop_items_without_text`` do not apply. Items keep the order of their ReChorus ids (textrec id
i + 1 = the i-th smallest ``item_id``, the same number when they are 1..n), users the order of
``user_id``. ``item_meta.csv`` (ReChorus's relation data) is not read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from textrec.data.dataset import Dataset
from textrec.data.formats.common import BadLines, PrepareOptions, iter_lines, iter_tsv
from textrec.data.formats.common import reading
from textrec.errors import DataError
from textrec.log import warn

INTER_COLUMNS = ("user_id", "item_id", "time")


def _find_name(root: Path, name: str | None) -> str:
    names = sorted(p.name[: -len(".item2index")] for p in root.glob("*.item2index"))
    if name is not None and name in names:
        return name
    if len(names) == 1:
        return names[0]
    if not names:
        raise DataError(f"{root}: no <Name>.item2index file (expected a ReChorus dataset with item text)")
    raise DataError(f"{root}: several datasets ({', '.join(names)}); pass --name to choose one")


def _int_rows(path: Path, bad: BadLines) -> Iterator[tuple[int, int, int, int]]:
    """(line, user_id, item_id, time) of a ReChorus csv; extra columns after ``time`` are ignored."""
    lines = iter_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file")
    header = tuple(h.strip() for h in first[1].split("\t"))
    if header[:3] != INTER_COLUMNS:
        raise DataError(f"{path}:{first[0]}: header {' | '.join(header)!r}, expected {' | '.join(INTER_COLUMNS)!r} first")
    for n, line in lines:
        fields = line.split("\t")
        if len(fields) != len(header):
            bad(path, n, f"expected {len(header)} tab-separated fields, found {len(fields)}")
            continue
        try:
            yield n, int(fields[0]), int(fields[1]), int(fields[2])
        except ValueError:
            bad(path, n, "user_id, item_id and time must be integers")


def _read_items(root: Path, name: str, bad: BadLines) -> tuple[dict[int, str], dict[str, str]]:
    """ReChorus item_id -> ASIN, and ASIN -> text."""
    index_path, text_path = root / f"{name}.item2index", root / f"{name}.text"
    asin_by_id: dict[int, str] = {}
    with reading(index_path):
        for n, (asin, token) in iter_tsv(index_path, 2, bad):
            if not token.strip().isdigit():
                bad(index_path, n, f"item_id {token!r} is not an integer")
            elif int(token) in asin_by_id:
                bad(index_path, n, f"item_id {token.strip()} appears twice")
            else:
                asin_by_id[int(token)] = asin.strip()
    texts: dict[str, str] = {}
    with reading(text_path):
        for _, (asin, text) in iter_tsv(text_path, 2, bad, header=("id", "text")):
            texts.setdefault(asin.strip(), text.strip())
    return asin_by_id, texts


def _read_split(path: Path, bad: BadLines, known: dict[int, str]) -> dict[int, tuple[int, int, int]]:
    """dev.csv / test.csv: user_id -> (line, item_id, time), one row per user."""
    rows: dict[int, tuple[int, int, int]] = {}
    with reading(path):
        for n, user, item, time in _int_rows(path, bad):
            if item not in known:
                bad(path, n, f"item_id {item} is not in the .item2index file")
            elif user in rows:
                raise DataError(f"{path}:{n}: second row for user {user} (line {rows[user][0]} is the first)")
            else:
                rows[user] = (n, item, time)
    return rows


def read_rechorus(source: str | Path, opts: PrepareOptions = PrepareOptions()) -> Dataset:
    """A ReChorus directory -> ``Dataset`` whose leave-one-out split is ReChorus's dev/test split."""
    root = Path(source)
    root = root.parent if root.is_file() else root
    if not root.is_dir():
        raise DataError(f"{root}: no such directory")
    name = _find_name(root, opts.name)
    bad = BadLines(opts.skip_bad_lines)
    asin_by_id, texts = _read_items(root, name, bad)
    train: dict[int, list[tuple[int, int]]] = {}
    with reading(root / "train.csv"):
        for n, user, item, time in _int_rows(root / "train.csv", bad):
            if item not in asin_by_id:
                bad(root / "train.csv", n, f"item_id {item} is not in {name}.item2index")
                continue
            train.setdefault(user, []).append((item, time))
    dev, test = (_read_split(root / f, bad, asin_by_id) for f in ("dev.csv", "test.csv"))
    for path, rows in ((root / "dev.csv", dev), (root / "test.csv", test), (root / "train.csv", train)):
        missing = sorted((set(train) | set(dev) | set(test)) - set(rows))
        if missing:
            raise DataError(f"{path}: no row for user {missing[0]} ({len(missing)} user(s) missing), who appears in another file")

    ids = sorted(asin_by_id)
    textrec_id = {rid: i + 1 for i, rid in enumerate(ids)}
    users = sorted(train)
    sequences, times = [], []
    for user in users:
        pairs = train[user] + [dev[user][1:], test[user][1:]]
        sequences.append(np.array([textrec_id[item] for item, _ in pairs], dtype=np.int32))
        times.append(np.array([t for _, t in pairs], dtype=np.int64))
    item_keys = [asin_by_id[rid] for rid in ids]
    no_text = sum(k not in texts for k in item_keys)
    if no_text:
        warn(f"{no_text} item(s) have no row in {root / (name + '.text')}; their text is empty")
    unordered = sum(bool((np.diff(t) < 0).any()) for t in times)
    meta = {
        "source": {"format": "rechorus", "path": str(root.resolve()), "name": name, "time_unit": "s",
                   "files": ["train.csv", "dev.csv", "test.csv", f"{name}.item2index", f"{name}.text"]},
        "filters": {"note": "as published (5-core, leave-one-out); sequence = train rows in file order, dev item, test item"},
        "counts": {"items_without_text": no_text, "users_not_time_ordered": unordered},
        **bad.report(),
    }
    return Dataset.from_sequences(opts.name or name, item_keys, [texts.get(k, "") for k in item_keys],
                                  [str(u) for u in users], sequences, times, meta=meta)
