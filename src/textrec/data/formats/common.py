"""Shared pieces of the format readers: bad-line policy, line iteration, prepare options.

A reader meets a malformed record in one of two ways, chosen by ``skip_bad_lines``:

* strict (default): raise ``DataError("<file>:<line>: <problem>")`` at the first one;
* skipping: count it, keep going, and report the count (and the first few problems) in ``meta.json``
  and on stderr.
"""

from __future__ import annotations

import gzip
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from textrec.errors import DataError


@dataclass(frozen=True)
class PrepareOptions:
    """Options of ``textrec prepare``; each reader uses the ones that apply to its format."""

    name: str | None = None  # dataset name; default: derived from the source
    k_core: int = 5  # iterative user and item k-core (references: --user_k 5 --item_k 5)
    text_fields: tuple[str, ...] = ("title", "category", "brand")  # item text fields, in this order
    max_text_chars: int = 2000  # texts this long or longer are emptied (UniSRec's clean_text)
    skip_bad_lines: bool = False  # count and skip malformed records instead of failing
    items: str | None = None  # generic format: the items table (CSV or Parquet)
    user_col: str = "user"  # generic format column names
    item_col: str = "item"
    time_col: str = "timestamp"
    text_col: str = "text"
    rating_col: str = "rating"  # generic format: used (dedup, min_rating) only when the column exists
    min_rating: float | None = None  # keep only interactions rated at least this (None keeps all)
    drop_items_without_text: bool = True  # references drop items without metadata; unisrec: False allows a missing .text
    max_users: int | None = None  # raw formats: a seeded sample of this many users after the k-core (None: all)
    sample_seed: int = 0  # which users max_users keeps


@dataclass
class BadLines:
    """Counts malformed records, or raises at the first one when skipping is off."""

    skip: bool = False
    count: int = 0
    examples: list[str] = field(default_factory=list)

    def __call__(self, path: str | Path, line: int, problem: str) -> None:
        where = f"{path}:{line}: {problem}"
        if not self.skip:
            raise DataError(where + " (pass --skip-bad-lines to skip malformed lines)")
        self.count += 1
        if len(self.examples) < 5:
            self.examples.append(where)

    def report(self) -> dict:
        if self.count:
            logging.getLogger(__name__).warning(f"skipped {self.count} malformed line(s); first: {self.examples[0]}")
        return {"skipped_bad_lines": self.count, "bad_line_examples": self.examples}


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a UTF-8 text file, transparently decompressing ``.gz``; missing files raise DataError.

    A leading byte-order mark (what spreadsheets write for "CSV UTF-8") is dropped (``utf-8-sig``), so it
    never sticks to the first header name or the first key.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", errors="replace")
    return open(path, encoding="utf-8-sig", errors="replace", newline="")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without the newline), skipping blank lines."""
    with open_text(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                yield n, line


def iter_tsv(path: str | Path, n_fields: int, bad: BadLines, header: tuple[str, ...] | None = None) -> Iterator[tuple[int, list[str]]]:
    """Tab-separated rows with exactly ``n_fields`` fields; checks the header when one is expected."""
    lines = iter_lines(path)
    if header is not None:
        first = next(lines, None)
        if first is None:
            raise DataError(f"{path}: empty file")
        got = tuple(f.strip() for f in first[1].split("\t"))
        if got != header:
            raise DataError(f"{path}:{first[0]}: header {' | '.join(got)!r}, expected {' | '.join(header)!r}")
    for n, line in lines:
        fields = line.split("\t")
        if len(fields) != n_fields:
            bad(path, n, f"expected {n_fields} tab-separated fields, found {len(fields)}")
            continue
        yield n, fields
