"""Readers from published or raw formats to a ``Dataset``: one explicit dict, name -> reader.

Each reader is ``reader(source: Path, opts: PrepareOptions) -> Dataset``; ``textrec prepare SOURCE
--format NAME`` looks it up here.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from textrec.data.dataset import Dataset
from textrec.data.formats.common import PrepareOptions
from textrec.data.formats.unisrec import read_unisrec
from textrec.errors import NotFoundError

Reader = Callable[[Path, PrepareOptions], Dataset]

READERS: dict[str, Reader] = {
    "unisrec": read_unisrec,
}


def read_dataset(source: str | Path, fmt: str, opts: PrepareOptions = PrepareOptions()) -> Dataset:
    if fmt not in READERS:
        raise NotFoundError(f"unknown format {fmt!r} (valid: {', '.join(sorted(READERS))})")
    return READERS[fmt](Path(source), opts)
