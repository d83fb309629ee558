"""Readers from published or raw formats to a ``Dataset``: one explicit dict, name -> reader.

Each reader is ``reader(source: Path, opts: PrepareOptions) -> Dataset``; ``textrec prepare SOURCE
--format NAME`` looks it up here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from textrec.data.dataset import Dataset
from textrec.data.formats.amazon import read_amazon2018, read_amazon2023
from textrec.data.formats.common import PrepareOptions, input_encoding
from textrec.data.formats.generic import read_generic
from textrec.data.formats.movielens import read_movielens
from textrec.data.formats.rechorus import read_rechorus
from textrec.data.formats.unisrec import read_unisrec
from textrec.errors import DataError, NotFoundError

log = logging.getLogger("textrec.data.formats")

Reader = Callable[[Path, PrepareOptions], Dataset]

READERS: dict[str, Reader] = {
    "unisrec": read_unisrec,
    "amazon2018": read_amazon2018,
    "amazon2023": read_amazon2023,
    "movielens": read_movielens,
    "csv": read_generic,
    "parquet": read_generic,  # the same reader: it tells CSV/TSV from Parquet by the file extension
    "rechorus": read_rechorus,
}


# formats published already filtered and split: the raw-data options (k-core, user sample) do not apply
PUBLISHED_SPLIT = ("unisrec", "rechorus")


def read_dataset(source: str | Path, fmt: str, opts: PrepareOptions = PrepareOptions()) -> Dataset:
    if fmt not in READERS:
        raise NotFoundError(f"unknown format {fmt!r} (valid: {', '.join(sorted(READERS))})")
    if opts.max_users is not None and fmt in PUBLISHED_SPLIT:
        raise DataError(f"--max-users: the {fmt} format is published already split; it applies to raw formats "
                        f"({', '.join(f for f in READERS if f not in PUBLISHED_SPLIT)})")
    opts.check()
    with input_encoding(opts.encoding):
        ds = READERS[fmt](Path(source), opts)
    warn_degenerate(ds, str(source))
    return ds


LONG_HISTORY = 2000  # a user this long (and far above the mean) dominates a training epoch's time


def degenerate_problems(ds: Dataset) -> list[str]:
    """What makes ``ds`` unfit to learn from or slow to train on, in words (empty when nothing)."""
    problems = []
    distinct = len(set(ds.item_texts))
    if ds.n_items > 1 and distinct == 1:
        what = "empty" if not ds.item_texts[0] else f"identical ({ds.item_texts[0][:40]!r})"
        problems.append(f"all {ds.n_items:,} item texts are {what}: a text model cannot tell the items apart")
    lengths = ds.seq_lengths
    longest = int(lengths.max())
    if longest >= LONG_HISTORY and longest > 20 * float(lengths.mean()):
        user = ds.user_keys[int(lengths.argmax())]
        problems.append(f"user {user!r} has {longest:,} interactions (mean {float(lengths.mean()):.1f}); training "
                        "time per epoch grows with it (windows of data.max_seq_len are cut from it)")
    return problems


def warn_degenerate(ds: Dataset, where: str) -> None:
    for problem in degenerate_problems(ds):
        log.warning("warning: %s: %s", where, problem)
