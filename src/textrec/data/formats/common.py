"""Shared pieces of the format readers: bad-line policy, line iteration, text decoding, prepare options.

Text files are decoded strictly: UTF-8 (a leading byte-order mark dropped), UTF-16 when the file starts
with a UTF-16 byte-order mark, or the encoding ``textrec prepare --encoding`` names (``input_encoding``).
Bytes that do not decode are an error naming the file and line, never replaced: a replaced byte would
merge distinct keys (``José`` and ``Josè`` both becoming ``Jos\ufffd``).

A reader meets a malformed record in one of two ways, chosen by ``skip_bad_lines``:

* strict (default): raise ``DataError("<file>:<line>: <problem>")`` at the first one;
* skipping: count it, keep going, and report the count (and the first few problems) in ``meta.json``
  and on stderr.
"""

from __future__ import annotations

import codecs
import contextlib
import contextvars
import gzip
import io
import logging
import zlib
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
    encoding: str | None = None  # text files' encoding; None: UTF-8, or UTF-16 when the file has its byte-order mark

    def check(self) -> None:
        """Refuse option values no reader can use (``ConfigError`` naming the option)."""
        from textrec.errors import ConfigError

        if self.k_core < 0:
            raise ConfigError(f"--k-core must be 0 (no filter) or more, not {self.k_core}")
        if self.max_users is not None and self.max_users < 1:
            raise ConfigError(f"--max-users must be at least 1, not {self.max_users}")
        if self.max_text_chars < 1:
            raise ConfigError(f"max_text_chars must be at least 1, not {self.max_text_chars}")
        if self.min_rating is not None and self.min_rating != self.min_rating:
            raise ConfigError("--min-rating must be a number, not nan")
        if self.encoding is not None:
            try:
                codecs.lookup(self.encoding)
            except LookupError:
                raise ConfigError(f"--encoding {self.encoding!r}: unknown encoding (e.g. utf-8, latin-1, cp1252, utf-16)") from None


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


_ENCODING: contextvars.ContextVar[str | None] = contextvars.ContextVar("textrec_input_encoding", default=None)


@contextlib.contextmanager
def input_encoding(encoding: str | None) -> Iterator[None]:
    """Decode the text files read in this block with ``encoding`` (None: detect UTF-8 / UTF-16, module doc)."""
    token = _ENCODING.set(encoding)
    try:
        yield
    finally:
        _ENCODING.reset(token)


def explicit_encoding() -> str | None:
    """The encoding ``input_encoding`` set, if any."""
    return _ENCODING.get()


def _open_raw(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def text_encoding(path: str | Path) -> str:
    """The encoding ``open_text`` decodes ``path`` with: the explicit one, else UTF-16 by its mark, else UTF-8."""
    explicit = _ENCODING.get()
    if explicit:
        return explicit
    with _open_raw(Path(path)) as f:
        head = f.read(2)
    return "utf-16" if head in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE) else "utf-8-sig"


def open_text(path: str | Path) -> io.TextIOBase:
    """Open a text file, transparently decompressing ``.gz``; missing files raise DataError.

    Decoded strictly (module doc). A leading UTF-8 byte-order mark (what spreadsheets write for "CSV
    UTF-8") is dropped (``utf-8-sig``), so it never sticks to the first header name or the first key.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if path.is_dir():
        raise DataError(f"{path}: is a directory, expected a file")
    encoding = text_encoding(path)
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding=encoding, errors="strict", newline="")
    return open(path, encoding=encoding, errors="strict", newline="")


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Turn I/O failures while reading ``path`` (unreadable, corrupt or truncated gzip, undecodable text) into ``DataError``."""
    try:
        yield
    except UnicodeDecodeError as e:
        raise undecodable(path, e) from None
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None


def undecodable(path: str | Path, error: UnicodeDecodeError) -> DataError:
    """A ``DataError`` naming the file, line and byte that ``error`` met while decoding ``path``."""
    path = Path(path)
    encoding = text_encoding(path)
    where = f"{path}"
    try:
        if "16" not in encoding and "32" not in encoding:  # line-by-line decoding is exact for byte-oriented codecs
            with _open_raw(path) as f:
                for n, raw in enumerate(f, 1):
                    try:
                        raw.decode(encoding)
                    except UnicodeDecodeError as e:
                        where = f"{path}:{n}: byte 0x{raw[e.start]:02x} at column {e.start + 1}"
                        break
    except (OSError, EOFError):
        pass
    name = "UTF-8" if encoding == "utf-8-sig" else encoding
    hint = "re-save it as UTF-8 or pass --encoding (e.g. --encoding latin-1)" if _ENCODING.get() is None else "check --encoding"
    return DataError(f"{where}: not valid {name} text ({error.reason}); {hint}")


def check_no_nul(path: str | Path, line: int, text: str) -> None:
    """NUL characters in text: a UTF-16 file without its byte-order mark, or a binary file."""
    if "\x00" in text:
        raise DataError(f"{path}:{line}: NUL byte in the text (a UTF-16 file without a byte-order mark? pass "
                        "--encoding utf-16; or not a text file)")


def iter_lines(path: str | Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line without the newline), skipping blank lines."""
    with reading(path), open_text(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                check_no_nul(path, n, line)
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
