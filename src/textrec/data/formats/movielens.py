"""MovieLens ratings with movie titles and genres, in three layouts, detected from the files present.

* **ml-100k** (GroupLens raw): ``u.data`` = ``user<TAB>item<TAB>rating<TAB>timestamp``; ``u.item`` = 24
  ``|``-separated latin-1 fields (id, title with year, release date, video date, IMDb URL, 19 genre flags);
  genre names from ``u.genre`` (``name|index``) or, without it, the fixed 19-genre list below;
* **ml-1m** (GroupLens raw): ``ratings.dat`` = ``user::item::rating::timestamp``; ``movies.dat`` =
  ``item::title (year)::Genre|Genre`` in latin-1;
* **RecBole atomic** (``ml-100k.inter`` / ``ml-100k.item``, UTF-8, typed headers such as
  ``user_id:token``): the title comes without its year (``movie_title``, ``release_year``) and genres are
  space-separated (``class``). Two quirks of RecBole's ml-100k file are kept as they are: item 267 is
  titled ``unkonwn`` (its year too, which is then left out), and item 1412's year is ``V`` (RecBole split
  the raw title "... (1995) (V)"; re-attaching it gives back the raw title).

SOURCE is the directory or one of its files; ``opts.name`` picks the RecBole prefix when there are several.
Item text, cleaned like the Amazon texts (``item_text`` with title -> "title (year)", category -> genres):
``"Toy Story (1995). Animation Children's Comedy. "``. Ratings are implicit feedback: every rating is an
interaction unless ``opts.min_rating`` is set. The interactions then go through
``textrec.data.preprocess.build_dataset`` (dedup, items without a movie row dropped, k-core, order, ids).
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from pathlib import Path

from textrec.data.dataset import Dataset
from textrec.data.formats.amazon import Interactions, field_attributes
from textrec.data.formats.common import BadLines, PrepareOptions, check_no_nul, explicit_encoding, iter_lines
from textrec.data.formats.common import reading
from textrec.data.preprocess import build_dataset
from textrec.errors import DataError
from textrec.text.clean import item_text

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
UNKNOWN_YEARS = ("", "unknown", "unkonwn")  # RecBole's ml-100k spells item 267's year "unkonwn"


def latin1_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) of a latin-1 file (the GroupLens raw files), skipping blank lines.

    A file that starts with a UTF-8 byte-order mark was re-saved as UTF-8 (by an editor or a spreadsheet)
    and is read as such, without the mark.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with reading(path), open(path, "rb") as f:
        encoding = explicit_encoding() or ("utf-8-sig" if f.read(3) == codecs.BOM_UTF8 else "latin-1")
    with reading(path), open(path, encoding=encoding, errors="strict", newline="") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if line.strip():
                check_no_nul(path, n, line)
                yield n, line


def _add_rating(out: Interactions, path: Path, n: int, fields: list[str], bad: BadLines) -> None:
    user, item, rating, time = (f.strip() for f in fields)
    try:
        out.add(user, item, float(rating), int(float(time)))
    except (ValueError, OverflowError):  # OverflowError: a timestamp of inf or 1e309
        bad(path, n, f"rating {rating!r} or timestamp {time!r} is not a number")


def _read_ratings(path: Path, sep: str, bad: BadLines) -> Interactions:
    """``u.data`` (tab) or ``ratings.dat`` (``::``): user, item, rating, timestamp."""
    out = Interactions()
    for n, line in latin1_lines(path):
        fields = line.split(sep)
        if len(fields) != 4:
            bad(path, n, f"expected 4 {sep!r}-separated fields (user, item, rating, timestamp), found {len(fields)}")
            continue
        _add_rating(out, path, n, fields, bad)
    return out


def _read_genre_names(path: Path) -> tuple[str, ...]:
    if not path.is_file():
        return GENRES_100K
    names = {}
    for n, line in latin1_lines(path):
        name, _, index = line.rpartition("|")
        if not index.strip().isdigit():
            raise DataError(f"{path}:{n}: expected 'name|index', found {line!r}")
        names[int(index)] = name
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{path}: genre indices are not 0..{len(names) - 1}")
    return tuple(names[i] for i in range(len(names)))


def _read_items_100k(path: Path, genre_names: tuple[str, ...], bad: BadLines) -> dict[str, tuple[str, list[str]]]:
    movies: dict[str, tuple[str, list[str]]] = {}
    n_fields = 5 + len(genre_names)
    for n, line in latin1_lines(path):
        fields = line.split("|")
        if len(fields) != n_fields:
            bad(path, n, f"expected {n_fields} '|'-separated fields (5 + {len(genre_names)} genre flags), found {len(fields)}")
            continue
        flags = fields[5:]
        if any(f not in ("0", "1") for f in flags):
            bad(path, n, "genre flags must be 0 or 1")
            continue
        movies.setdefault(fields[0].strip(), (fields[1].strip(), [g for g, f in zip(genre_names, flags) if f == "1"]))
    return movies


def _read_items_1m(path: Path, bad: BadLines) -> dict[str, tuple[str, list[str]]]:
    movies: dict[str, tuple[str, list[str]]] = {}
    for n, line in latin1_lines(path):
        fields = line.split("::")
        if len(fields) != 3:
            bad(path, n, f"expected 3 '::'-separated fields (item, title, genres), found {len(fields)}")
            continue
        genres = [g for g in fields[2].strip().split("|") if g and g != "(no genres listed)"]
        movies.setdefault(fields[0].strip(), (fields[1].strip(), genres))
    return movies


def _recbole_rows(path: Path, required: tuple[str, ...], bad: BadLines) -> Iterator[tuple[int, dict[str, str]]]:
    """Rows of a RecBole atomic file as {field name without type: value}; checks the typed header."""
    lines = iter_lines(path)
    first = next(lines, None)
    if first is None:
        raise DataError(f"{path}: empty file")
    names = [h.strip().split(":")[0] for h in first[1].split("\t")]
    missing = [r for r in required if r not in names]
    if missing:
        raise DataError(f"{path}:{first[0]}: header lacks {', '.join(missing)} (found {', '.join(names)})")
    for n, line in lines:
        fields = line.split("\t")
        if len(fields) != len(names):
            bad(path, n, f"expected {len(names)} tab-separated fields, found {len(fields)}")
            continue
        yield n, dict(zip(names, fields))


def _read_recbole(prefix: Path, bad: BadLines) -> tuple[Interactions, dict[str, tuple[str, list[str]]]]:
    inter_path, item_path = Path(f"{prefix}.inter"), Path(f"{prefix}.item")
    out = Interactions()
    with reading(inter_path):
        for n, row in _recbole_rows(inter_path, ("user_id", "item_id", "timestamp"), bad):
            fields = [row["user_id"], row["item_id"], row.get("rating", "1"), row["timestamp"]]
            _add_rating(out, inter_path, n, fields, bad)
    movies: dict[str, tuple[str, list[str]]] = {}
    with reading(item_path):
        for _, row in _recbole_rows(item_path, ("item_id", "movie_title"), bad):
            title, year = row["movie_title"].strip(), row.get("release_year", "").strip()
            if year.lower() not in UNKNOWN_YEARS:
                title = f"{title} ({year})"
            movies.setdefault(row["item_id"].strip(), (title, row.get("class", "").split()))
    return out, movies


def detect(source: Path, name: str | None) -> tuple[str, Path]:
    """(layout, directory or RecBole prefix) of a MovieLens source (module doc)."""
    if source.is_file():
        if source.suffix == ".inter":
            return "recbole", source.with_suffix("")
        source = source.parent
    if not source.is_dir():
        raise DataError(f"{source}: no such file or directory")
    if (source / "u.data").is_file():
        return "ml-100k", source
    if (source / "ratings.dat").is_file():
        return "ml-1m", source
    prefixes = sorted(p.name[: -len(".inter")] for p in source.glob("*.inter") if p.name.count(".") == 1)
    if name is not None and name in prefixes:
        return "recbole", source / name
    if len(prefixes) == 1:
        return "recbole", source / prefixes[0]
    if prefixes:
        raise DataError(f"{source}: several RecBole datasets ({', '.join(prefixes)}); pass --name to choose one")
    raise DataError(f"{source}: no MovieLens files (expected u.data + u.item, ratings.dat + movies.dat, or <name>.inter + <name>.item)")


def read_movielens(source: str | Path, opts: PrepareOptions = PrepareOptions()) -> Dataset:
    """MovieLens (ml-100k raw, ml-1m raw or RecBole atomic) -> ``Dataset`` with title + genre texts."""
    layout, where = detect(Path(source), opts.name)
    bad = BadLines(opts.skip_bad_lines)
    if layout == "ml-100k":
        files = [where / "u.data", where / "u.item"]
        interactions = _read_ratings(files[0], "\t", bad)
        movies = _read_items_100k(files[1], _read_genre_names(where / "u.genre"), bad)
    elif layout == "ml-1m":
        files = [where / "ratings.dat", where / "movies.dat"]
        interactions = _read_ratings(files[0], "::", bad)
        movies = _read_items_1m(files[1], bad)
    else:
        files = [Path(f"{where}.inter"), Path(f"{where}.item")]
        interactions, movies = _read_recbole(where, bad)
    if not interactions.users:
        raise DataError(f"{files[0]}: no interactions")
    texts, attributes = {}, {}
    for item, (title, genres) in movies.items():
        fields = {"title": title, "category": genres or None}
        texts[item] = item_text(fields, opts.text_fields, opts.max_text_chars)
        attributes[item] = field_attributes(fields, opts)
    source_meta = {"format": "movielens", "layout": layout, "path": str(files[0].resolve()),
                   "items_file": str(files[1].resolve()), "time_unit": "s",
                   "text": "title (year). genres. (category = genres)"}
    return build_dataset(opts.name or where.name, interactions.users, interactions.items, interactions.times, texts, opts,
                         ratings=interactions.ratings, item_attributes=attributes, source=source_meta,
                         extra_meta=bad.report())
