"""Any interactions table plus an items table, as CSV, TSV or Parquet (read with pyarrow, no pandas).

* interactions (SOURCE): one row per interaction with columns ``opts.user_col``, ``opts.item_col``,
  ``opts.time_col`` and, when present, ``opts.rating_col``; timestamps are integers, floats or ISO-8601
  strings (``2024-05-01T12:00:00Z``; without a zone they are read as UTC), the latter stored as seconds;
* items (``opts.items``): ``opts.item_col``, ``opts.text_col`` and any other columns, which are kept as
  string attributes (``item_attributes``; empty and null values left out). The first row of an item wins.

CSV/TSV files need a header; the delimiter is a tab for ``.tsv``/``.tab`` files and for a ``.csv`` whose
header has tabs but no commas, a comma otherwise; ``.gz`` is read transparently. Tab-separated files are
read without CSV quoting (the TSV convention: a field cannot hold a tab or a line break), so a title that
starts with ``"`` keeps its quote and an unbalanced quote cannot swallow the lines after it; comma-separated
files use CSV quoting. A dataset read from a directory is named after the directory (``--name`` overrides). Errors name the file
and line (for Parquet, the 1-based row). SOURCE may also be a directory with ``interactions.<ext>``
and, unless ``opts.items`` is given, ``items.<ext>``. Texts are used as given (not cleaned); an item with
an empty or missing text has no text. The interactions then go through
``textrec.data.preprocess.build_dataset`` (dedup, items without text dropped, k-core, order, ids).
"""

from __future__ import annotations

import csv
import datetime as dt
import sys
from pathlib import Path

import numpy as np

from textrec.data.dataset import Dataset
from textrec.data.formats.common import BadLines, PrepareOptions, check_no_nul, open_text
from textrec.data.formats.common import reading
from textrec.data.preprocess import build_dataset
from textrec.errors import DataError

EXTENSIONS = (".csv", ".tsv", ".tab", ".csv.gz", ".tsv.gz", ".tab.gz", ".parquet", ".pq")


def _is_parquet(path: Path) -> bool:
    return path.suffix in (".parquet", ".pq")


def _delimiter(path: Path) -> str:
    if path.name.removesuffix(".gz").endswith((".tsv", ".tab")):
        return "\t"
    with reading(path), open_text(path) as f:
        header = f.readline()
    return "\t" if "\t" in header and "," not in header else ","


class Problems:
    """Malformed values of a table, found column by column, then reported to ``BadLines`` in line order."""

    def __init__(self, rows: np.ndarray, found: list[tuple[int, str]]) -> None:
        self.rows = rows  # (n,) line (CSV/TSV) or 1-based row (Parquet) of each parsed row
        self.found = list(found)  # (line, problem); starts with the rows the parser already rejected
        self.keep = np.ones(rows.shape[0], dtype=bool)

    def add(self, row: int, problem: str) -> None:
        self.found.append((int(self.rows[row]), problem))
        self.keep[row] = False

    def report(self, path: Path, bad: BadLines) -> None:
        for line, problem in sorted(self.found):
            bad(path, line, problem)


def _lift_field_size_limit() -> None:
    """Accept fields of any size, as the Parquet reader does (the csv module refuses fields over 128 KiB)."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long narrower than Py_ssize_t
            limit //= 2


def read_csv_columns(path: Path, wanted: list[str] | None, optional: tuple[str, ...]) -> tuple[dict[str, list[str]], Problems]:
    """Columns ``wanted`` (all when None) and those of ``optional`` present, as stripped strings."""
    delimiter = _delimiter(path)
    _lift_field_size_limit()
    lines: list[int] = []
    found: list[tuple[int, str]] = []
    with reading(path), open_text(path) as f:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
        try:
            header = [h.strip() for h in next(reader, [])]
            check_no_nul(path, 1, "".join(header))
            if not header:
                raise DataError(f"{path}: empty file (expected a header line)")
            missing = [c for c in wanted or [] if c not in header]
            if missing:
                raise DataError(f"{path}:1: no column {missing[0]!r} (columns: {', '.join(header)})")
            wanted = header if wanted is None else wanted + [c for c in optional if c in header]
            index = [header.index(c) for c in wanted]
            cols: dict[str, list[str]] = {c: [] for c in wanted}
            for row in reader:
                if not row:
                    continue
                if len(row) != len(header):
                    found.append((reader.line_num, f"expected {len(header)} {delimiter!r}-separated fields, found {len(row)}"))
                    continue
                for c, i in zip(wanted, index):
                    cols[c].append(row[i].strip())
                lines.append(reader.line_num)
        except csv.Error as e:
            raise DataError(f"{path}:{reader.line_num}: {e}") from None
    return cols, Problems(np.asarray(lines, dtype=np.int64), found)


def read_parquet_columns(path: Path, wanted: list[str] | None, optional: tuple[str, ...]) -> dict:
    """Columns ``wanted`` (all when None) and those of ``optional`` present, of a Parquet file, as pyarrow arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        names = pq.read_schema(path).names
        missing = [c for c in (wanted or []) if c not in names]
        if missing:
            raise DataError(f"{path}: no column {missing[0]!r} (columns: {', '.join(names)})")
        if wanted is not None:
            wanted = wanted + [c for c in optional if c in names]
        table = pq.read_table(path, columns=wanted)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot read Parquet ({' '.join(str(e).split())})") from None
    return {c: table.column(c).combine_chunks() for c in table.column_names}


def read_columns(path: Path, wanted: list[str] | None, optional: tuple[str, ...] = ()) -> tuple[dict, Problems]:
    """Columns as pyarrow arrays, and a ``Problems`` that numbers rows by line (CSV/TSV) or 1-based row (Parquet)."""
    import pyarrow as pa

    if _is_parquet(path):
        cols = read_parquet_columns(path, wanted, optional)
        n_rows = len(next(iter(cols.values()))) if cols else 0
        return cols, Problems(np.arange(1, n_rows + 1), [])
    values, problems = read_csv_columns(path, wanted, optional)
    return {c: pa.array(v, pa.string()) for c, v in values.items()}, problems


def parse_time(value: str) -> float:
    """A number, or an ISO-8601 date or date-time (UTC when it has no zone), as seconds."""
    try:
        return float(value)
    except ValueError:
        when = dt.datetime.fromisoformat(value)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.timezone.utc)
    return when.timestamp()


def numbers(arr, col: str, problems: Problems, dates: bool) -> np.ndarray:
    """Values of a numeric, timestamp/date (``dates``) or string column; bad values go to ``problems``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for r in np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False)) if arr.null_count else ():
        problems.add(r, f"missing {col}")
    kind = arr.type
    if dates and (pa.types.is_timestamp(kind) or pa.types.is_date(kind)):
        arr = pc.cast(arr, pa.timestamp("s")) if pa.types.is_date(kind) else arr
        per_second = {"s": 1, "ms": 1e3, "us": 1e6, "ns": 1e9}[arr.type.unit]
        ticks = pc.cast(arr, pa.int64()).fill_null(0).to_numpy()
        return ticks if per_second == 1 else ticks / per_second
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        values = pc.cast(arr, pa.float64() if pa.types.is_floating(kind) else pa.int64()).fill_null(0).to_numpy()
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        values = _numbers_from_strings(arr.fill_null("0").to_pylist(), col, problems, dates)
    else:
        raise DataError(f"column {col!r} has type {kind}; expected numbers" + (" or dates" if dates else ""))
    if values.dtype.kind == "f":
        for r in np.flatnonzero(problems.keep & ~np.isfinite(values)):
            problems.add(r, f"{col} is not finite")
    return values


def _numbers_from_strings(values: list[str], col: str, problems: Problems, dates: bool) -> np.ndarray:
    for dtype in (np.int64, np.float64):  # fast paths: a whole column of integers, or of floats
        try:
            return np.array(values, dtype=dtype)
        except (ValueError, OverflowError):
            pass
    out = np.zeros(len(values))
    for r, value in enumerate(values):
        try:
            out[r] = parse_time(value) if dates else float(value)
        except ValueError:
            problems.add(r, f"{col} {value!r} is not a number" + (" or an ISO-8601 date" if dates else ""))
    return out


def keys(arr, col: str, problems: Problems):
    """The key column as strings; null or empty keys go to ``problems``."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
        arr = pc.cast(arr, pa.string())
    for r in np.flatnonzero(pc.fill_null(pc.equal(arr, ""), True).to_numpy(zero_copy_only=False)):
        problems.add(r, f"missing {col}")
    return arr


def read_items_table(path: Path, opts: PrepareOptions, bad: BadLines) -> tuple[dict[str, str], dict[str, dict[str, str]], int]:
    """Item key -> text (non-empty texts only), key -> attributes (the other columns), duplicate rows."""
    cols, problems = read_columns(path, None)
    for c in (opts.item_col, opts.text_col):
        if c not in cols:
            raise DataError(f"{path}: no column {c!r} (columns: {', '.join(cols)})")
    item_keys = keys(cols[opts.item_col], opts.item_col, problems).to_pylist()
    problems.report(path, bad)
    values = {c: arr.to_pylist() for c, arr in cols.items()}
    others = [c for c in cols if c not in (opts.item_col, opts.text_col)]
    texts: dict[str, str] = {}
    attributes: dict[str, dict[str, str]] = {}
    for r in np.flatnonzero(problems.keep):
        key = item_keys[r].strip()
        if key in attributes:
            continue  # the first row of an item wins
        text = values[opts.text_col][r]
        if text is not None and str(text).strip():
            texts[key] = str(text).strip()
        attributes[key] = {c: str(values[c][r]) for c in others if values[c][r] is not None and str(values[c][r]) != ""}
    return texts, attributes, int(problems.keep.sum()) - len(attributes)


def _locate(source: Path, opts: PrepareOptions) -> tuple[Path, Path | None]:
    """(interactions table, items table or None) from a file or a directory (module doc)."""
    items = Path(opts.items) if opts.items is not None else None
    if source.is_dir():
        found = [source / f"interactions{e}" for e in EXTENSIONS if (source / f"interactions{e}").is_file()]
        if not found:
            raise DataError(f"{source}: no interactions table (interactions.csv, .tsv or .parquet)")
        if items is None:
            items = next((source / f"items{e}" for e in EXTENSIONS if (source / f"items{e}").is_file()), None)
        source = found[0]
    elif not source.is_file():
        raise DataError(f"{source}: file not found")
    if items is not None and not items.is_file():
        raise DataError(f"{items}: items table not found")
    return source, items


def read_generic(source: str | Path, opts: PrepareOptions = PrepareOptions()) -> Dataset:
    """Interactions table + items table (CSV, TSV or Parquet) -> ``Dataset`` (module doc)."""
    import pyarrow as pa

    path, items_path = _locate(Path(source), opts)
    if items_path is None and opts.drop_items_without_text:
        raise DataError(f"{path}: no items table; pass --items (a table with columns {opts.item_col!r}, {opts.text_col!r})")
    bad = BadLines(opts.skip_bad_lines)
    cols, problems = read_columns(path, [opts.user_col, opts.item_col, opts.time_col], (opts.rating_col,))
    users, items = keys(cols[opts.user_col], opts.user_col, problems), keys(cols[opts.item_col], opts.item_col, problems)
    try:
        times = numbers(cols[opts.time_col], opts.time_col, problems, dates=True)
        ratings = numbers(cols[opts.rating_col], opts.rating_col, problems, dates=False) if opts.rating_col in cols else None
    except DataError as e:
        raise DataError(f"{path}: {e}") from None
    problems.report(path, bad)
    keep = problems.keep
    if not keep.any():
        raise DataError(f"{path}: no interactions")
    mask = pa.array(keep)
    texts, attributes, duplicate_items = read_items_table(items_path, opts, bad) if items_path else ({}, None, 0)
    name = opts.name or (Path(source).name if Path(source).is_dir() else path.name.split(".")[0])
    source_meta = {
        "format": "parquet" if _is_parquet(path) else "csv",
        "path": str(path.resolve()),
        "items": str(items_path.resolve()) if items_path else None,
        "columns": {"user": opts.user_col, "item": opts.item_col, "time": opts.time_col, "text": opts.text_col,
                    "rating": opts.rating_col if ratings is not None else None},
        "duplicate_item_rows": duplicate_items,
    }
    return build_dataset(name, users.filter(mask), items.filter(mask), times[keep], texts, opts,
                         ratings=None if ratings is None else ratings[keep], item_attributes=attributes,
                         source=source_meta, extra_meta=bad.report())
