"""Readers from published or raw formats to a ``Dataset``: one explicit dict, name -> reader.

Each reader is ``reader(source: Path, opts: PrepareOptions) -> Dataset``; ``textrec prepare SOURCE
--format NAME`` looks it up here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textrec.data.dataset import Dataset
from textrec.data.formats.amazon import read_amazon2018, read_amazon2023
from textrec.data.formats.common import PrepareOptions
from textrec.data.formats.generic import read_generic
from textrec.data.formats.movielens import read_movielens
from textrec.data.formats.rechorus import read_rechorus
from textrec.data.formats.unisrec import read_unisrec
from textrec.errors import DataError, NotFoundError

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
    return READERS[fmt](Path(source), opts)
