"""Raw Amazon review data: the 2018 release (Ni et al.) and the 2023 release (Hou et al., McAuley lab).

**2018** (what UniSRec, VQ-Rec and MISSRec start from; REFERENCE_NOTES section 0):

* ratings ``<Category>.csv``: no header, lines ``item,user,rating,timestamp`` (timestamp in seconds);
* metadata ``meta_<Category>.json.gz``: one record per line, JSON, or a Python literal in some releases
  (parsed with ``ast.literal_eval``, never ``eval``); the item key is ``asin``.

SOURCE is the ratings file or a directory holding both files, flat or in the UniSRec layout
``Ratings/<Category>.csv`` + ``Metadata/meta_<Category>.json.gz``; ``opts.name`` picks the category when
there are several and may be the reference's short name (``Scientific`` = ``Industrial_and_Scientific``).
As in ``process_amazon.py``: an item has metadata when some record carries its asin; its text comes from
its *first* record (``already_items``) and is ``item_text(record, opts.text_fields)``, by default
``clean_text(title) + " " + clean_text(category) + " " + clean_text(brand) + " "`` over the keys present.
The reference prints and skips malformed rating lines; here they follow the ``skip_bad_lines`` policy.

**2023**: reviews ``<Category>.jsonl(.gz)`` (``user_id``, ``parent_asin``, ``rating``, ``timestamp`` in
milliseconds, kept in milliseconds) and ``meta_<Category>.jsonl(.gz)``, flat or in the Hugging Face layout
``review_categories/`` + ``meta_categories/``. The item key is ``parent_asin`` (variants of one product are
one item). The 2018 text fields map onto 2023 metadata as

* ``title``    -> ``title``;
* ``category`` -> ``categories`` (a list), or ``main_category`` when that list is empty;
* ``brand``    -> ``details["Brand"]`` when present, otherwise ``store``;
* any other name in ``opts.text_fields`` -> the metadata key of that name;

and, unlike 2018, empty strings and lists count as absent (they would add a lone ". " to the text).

Both readers also store ``item_attributes``: each text field present, cleaned as in the text but without
the final period. Interactions then go through ``textrec.data.preprocess.build_dataset`` (dedup, items
without metadata dropped, 5-core, chronological order, ids).
"""

from __future__ import annotations

import ast
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from textrec.data.dataset import Dataset
from textrec.data.formats.common import BadLines, PrepareOptions, iter_lines
from textrec.data.formats.common import reading
from textrec.data.preprocess import build_dataset
from textrec.errors import DataError
from textrec.text.clean import clean_text, item_text

# Short dataset names of UniSRec's dataset/preprocessing/utils.py -> Amazon 2018 category file names.
AMAZON_FULL_NAMES = {
    "Beauty": "All_Beauty", "Fashion": "AMAZON_FASHION", "Appliances": "Appliances", "Arts": "Arts_Crafts_and_Sewing",
    "Automotive": "Automotive", "Books": "Books", "CDs": "CDs_and_Vinyl", "Cell": "Cell_Phones_and_Accessories",
    "Clothing": "Clothing_Shoes_and_Jewelry", "Music": "Digital_Music", "Electronics": "Electronics",
    "Gift": "Gift_Cards", "Food": "Grocery_and_Gourmet_Food", "Home": "Home_and_Kitchen",
    "Scientific": "Industrial_and_Scientific", "Kindle": "Kindle_Store", "Luxury": "Luxury_Beauty",
    "Magazine": "Magazine_Subscriptions", "Movies": "Movies_and_TV", "Instruments": "Musical_Instruments",
    "Office": "Office_Products", "Garden": "Patio_Lawn_and_Garden", "Pantry": "Prime_Pantry",
    "Pet": "Pet_Supplies", "Software": "Software", "Sports": "Sports_and_Outdoors",
    "Tools": "Tools_and_Home_Improvement", "Toys": "Toys_and_Games", "Games": "Video_Games",
}  # fmt: skip
SHORT_NAMES = {full: short for short, full in AMAZON_FULL_NAMES.items()}
LITERAL_ERRORS = (ValueError, TypeError, SyntaxError, MemoryError, RecursionError)


class Layout(NamedTuple):
    suffixes: tuple[str, ...]  # interactions file: <Category><suffix>
    meta_suffixes: tuple[str, ...]  # metadata file: meta_<Category><suffix>
    dirs: tuple[str, str]  # sub-directories of a release: (interactions, metadata)


LAYOUT_2018 = Layout((".csv", ".csv.gz"), (".json.gz", ".json"), ("Ratings", "Metadata"))  # UniSRec's raw/ layout
LAYOUT_2023 = Layout((".jsonl", ".jsonl.gz"), (".jsonl", ".jsonl.gz"), ("review_categories", "meta_categories"))  # HF


def parse_record(line: str) -> Any:
    """One metadata line: JSON, else a Python literal (older releases); ``None`` when it is neither."""
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(line)
    except LITERAL_ERRORS:
        return None


def _strip_suffix(filename: str, suffixes: tuple[str, ...]) -> str | None:
    for suffix in suffixes:
        if filename.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)]
    return None


def locate(source: Path, name: str | None, layout: Layout) -> tuple[Path, Path, str]:
    """(interactions file, metadata file, category) from a file or a directory (see the module doc)."""
    suffixes, sub = layout.suffixes, layout.dirs
    if source.is_file():
        category = _strip_suffix(source.name, suffixes)
        if category is None:
            raise DataError(f"{source}: expected a ratings file named <Category>{suffixes[0]}")
        interactions, meta_dirs = source, [source.parent, source.parent.parent / sub[1]]
    elif source.is_dir():
        found: dict[str, Path] = {}
        for d in (source, source / sub[0]):
            for p in sorted(d.iterdir()) if d.is_dir() else ():
                cat = _strip_suffix(p.name, suffixes)
                if cat and not p.name.startswith("meta_"):
                    found.setdefault(cat, p)
        if not found:
            raise DataError(f"{source}: no ratings file <Category>{suffixes[0]} here or in {sub[0]}/")
        if name is not None:
            category = name if name in found else AMAZON_FULL_NAMES.get(name, name)
            if category not in found:
                raise DataError(f"{source}: no ratings file for {name!r} (found: {', '.join(sorted(found))})")
        elif len(found) > 1:
            raise DataError(f"{source}: several categories ({', '.join(sorted(found))}); pass --name to choose one")
        else:
            category = next(iter(found))
        interactions, meta_dirs = found[category], [source, source / sub[1]]
    else:
        raise DataError(f"{source}: no such file or directory")
    for d in meta_dirs:
        for suffix in layout.meta_suffixes:
            if (d / f"meta_{category}{suffix}").is_file():
                return interactions, d / f"meta_{category}{suffix}", category
    looked = ", ".join(str(d) for d in meta_dirs)
    raise DataError(f"{interactions}: metadata file meta_{category}{layout.meta_suffixes[0]} not found (looked in {looked})")


@dataclass
class Interactions:
    """Parsed interaction columns, in file order."""

    users: list[str] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ratings: list[float] = field(default_factory=list)
    times: list[int] = field(default_factory=list)

    def add(self, user: str, item: str, rating: float, time: int) -> None:
        self.users.append(user)
        self.items.append(item)
        self.ratings.append(rating)
        self.times.append(time)


def read_ratings_2018(path: Path, bad: BadLines) -> Interactions:
    """``item,user,rating,timestamp`` lines without header; the reference's ``int(time)`` / ``float(rating)``."""
    out = Interactions()
    users, items, ratings, times = out.users.append, out.items.append, out.ratings.append, out.times.append  # hot loop
    with reading(path):
        for n, line in iter_lines(path):
            fields = line.strip().split(",")
            if len(fields) != 4:
                bad(path, n, f"expected 4 comma-separated fields (item,user,rating,timestamp), found {len(fields)}")
                continue
            try:
                rating, time = float(fields[2]), int(fields[3])
            except ValueError:
                bad(path, n, _number_problem(fields[2], fields[3]))
                continue
            items(fields[0])
            users(fields[1])
            ratings(rating)
            times(time)
    return out


def _number_problem(rating: Any, time: Any) -> str:
    try:
        float(rating)
    except (TypeError, ValueError):
        return f"rating {rating!r} is not a number"
    return f"timestamp {time!r} is not an integer"


def read_reviews_2023(path: Path, bad: BadLines) -> Interactions:
    """JSON lines with ``user_id``, ``parent_asin``, ``rating``, ``timestamp`` (ms); other keys ignored."""
    out = Interactions()
    with reading(path):
        for n, line in iter_lines(path):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                bad(path, n, f"invalid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(rec, dict):
                bad(path, n, f"expected a JSON object, found {type(rec).__name__}")
                continue
            missing = [k for k in ("user_id", "parent_asin", "rating", "timestamp") if rec.get(k) is None]
            if missing:
                bad(path, n, f"missing {', '.join(missing)}")
                continue
            rating, time = rec["rating"], rec["timestamp"]
            try:
                out.add(str(rec["user_id"]), str(rec["parent_asin"]), float(rating), int(time))
            except (TypeError, ValueError):
                bad(path, n, _number_problem(rating, time))
    return out


def field_attributes(fields: dict, opts: PrepareOptions) -> dict[str, str]:
    """Each text field present, cleaned as in the item text but without its final period."""
    return {f: clean_text(fields[f], opts.max_text_chars)[:-1] for f in opts.text_fields if fields.get(f) is not None}


def read_metadata(
    path: Path, key: str, wanted: set[str], view: Callable[[dict], dict], opts: PrepareOptions, bad: BadLines
) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Text and attributes of the items in ``wanted``, from the first record of each ``key`` value.

    ``view(record)`` maps a raw record onto the text-field names (identity for 2018).
    """
    texts: dict[str, str] = {}
    attributes: dict[str, dict[str, str]] = {}
    with reading(path):
        for n, line in iter_lines(path):
            rec = parse_record(line)
            if not isinstance(rec, dict):
                problem = "not a JSON object or Python dict literal" if rec is None else f"expected an object, found {type(rec).__name__}"
                bad(path, n, problem)
                continue
            if rec.get(key) is None:
                bad(path, n, f"record has no {key!r}")
                continue
            item = str(rec[key])
            if item in wanted and item not in texts:  # the first record of an item wins (reference: already_items)
                fields = view(rec)
                texts[item] = item_text(fields, opts.text_fields, opts.max_text_chars)
                attributes[item] = field_attributes(fields, opts)
    return texts, attributes


def _present(value: Any) -> bool:
    return value is not None and value != "" and value != []


def view_2023(rec: dict) -> dict:
    """A 2023 metadata record seen through the 2018 text-field names (module doc)."""
    fields = {k: v for k, v in rec.items() if _present(v) and k not in ("title", "category", "brand")}
    if _present(rec.get("title")):
        fields["title"] = rec["title"]
    if _present(rec.get("categories")):
        fields["category"] = rec["categories"]
    elif _present(rec.get("main_category")):
        fields["category"] = rec["main_category"]
    details = rec.get("details")
    if isinstance(details, dict) and _present(details.get("Brand")):
        fields["brand"] = details["Brand"]
    elif _present(rec.get("store")):
        fields["brand"] = rec["store"]
    return fields


def _finish(fmt: str, interactions: Interactions, meta_path: Path, ratings_path: Path, category: str,
            key: str, view: Callable[[dict], dict], opts: PrepareOptions, bad: BadLines, extra: dict) -> Dataset:
    if not interactions.users:
        raise DataError(f"{ratings_path}: no interactions")
    texts, attributes = read_metadata(meta_path, key, set(interactions.items), view, opts, bad)
    source = {
        "format": fmt,
        "path": str(ratings_path.resolve()),
        "metadata": str(meta_path.resolve()),
        "category": category,
        "text_fields": list(opts.text_fields),
        **extra,
    }
    return build_dataset(
        opts.name or SHORT_NAMES.get(category, category),
        interactions.users,
        interactions.items,
        interactions.times,
        texts,
        opts,
        ratings=interactions.ratings,
        item_attributes=attributes,
        source=source,
        extra_meta=bad.report(),
    )


def read_amazon2018(source: str | Path, opts: PrepareOptions = PrepareOptions()) -> Dataset:
    """Amazon 2018 ratings csv + ``meta_<Category>.json.gz`` -> ``Dataset`` (UniSRec's process_amazon.py)."""
    ratings_path, meta_path, category = locate(Path(source), opts.name, LAYOUT_2018)
    bad = BadLines(opts.skip_bad_lines)
    interactions = read_ratings_2018(ratings_path, bad)
    return _finish("amazon2018", interactions, meta_path, ratings_path, category, "asin", dict, opts, bad,
                   {"time_unit": "s", "item_key": "asin"})


def read_amazon2023(source: str | Path, opts: PrepareOptions = PrepareOptions()) -> Dataset:
    """Amazon 2023 reviews + ``meta_<Category>.jsonl`` -> ``Dataset``; items keyed by ``parent_asin``."""
    reviews_path, meta_path, category = locate(Path(source), opts.name, LAYOUT_2023)
    bad = BadLines(opts.skip_bad_lines)
    interactions = read_reviews_2023(reviews_path, bad)
    mapping = {"title": "title", "category": "categories, else main_category", "brand": 'details["Brand"], else store'}
    return _finish("amazon2023", interactions, meta_path, reviews_path, category, "parent_asin", view_2023, opts, bad,
                   {"time_unit": "ms", "item_key": "parent_asin", "text_field_mapping": mapping})
