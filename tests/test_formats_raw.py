"""Raw-format readers (Amazon 2018/2023, MovieLens, generic CSV/Parquet, ReChorus) on small files in the
real formats, and on ../shared/data when it is there."""

from __future__ import annotations

import dataclasses
import gzip
import html
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import (
    requires_shared,  # skips with a reason when ../shared/data is absent
)
from doubles import cli_json
from test_unisrec_reader import _unisrec
from textrec.data.dataset import Dataset
from textrec.data.formats import READERS, read_dataset
from textrec.data.formats.amazon import read_amazon2018, read_amazon2023
from textrec.data.formats.common import PrepareOptions
from textrec.data.formats.generic import read_generic
from textrec.data.formats.movielens import read_movielens
from textrec.data.formats.rechorus import read_rechorus
from textrec.errors import DataError

K2 = PrepareOptions(k_core=2)


def write(path: Path, lines: list[str], encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = ("\n".join(lines) + "\n").encode(encoding)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def sequences(ds: Dataset) -> dict[str, list[str]]:
    return {ds.user_keys[u]: [ds.item_keys[i - 1] for i in ds.sequence(u)] for u in range(ds.n_users)}


def text_of(ds: Dataset, key: str) -> str:
    return ds.item_texts[ds.item_keys.index(key)]


# ---- Amazon 2018 ------------------------------------------------------------------------------------
RATINGS_2018 = [  # item,user,rating,timestamp -- no header
    "A1,U1,5.0,100", "A2,U1,4.0,200", "A3,U1,3.0,300",
    "A1,U2,5.0,150", "A2,U2,5.0,150", "A3,U2,1.0,50",
    "A1,U2,5.0,150",  # exact duplicate: dropped
    "A9,U1,5.0,400",  # A9 has no metadata: dropped
    "A4,U3,5.0,10",  # A4 and U3 fall to the 2-core
]
META_2018 = [
    json.dumps({"asin": "A1", "title": 'Lab &amp; "Bench" Scale...', "category": ["Industrial & Scientific", "Lab"], "brand": "Acme"}),
    "{'asin': 'A2', 'title': 'Old\\nstyle', 'category': [], 'price': '$3'}",  # a Python-literal line (older releases)
    json.dumps({"asin": "A3", "title": "Tube.", "brand": "Bio"}),
    json.dumps({"asin": "A1", "title": "second record of A1, ignored"}),
    json.dumps({"asin": "A4", "title": "Four"}),
]


def amazon2018_dir(root: Path, ratings=RATINGS_2018, meta=META_2018, cat="Industrial_and_Scientific") -> Path:
    write(root / "Ratings" / f"{cat}.csv", ratings)
    write(root / "Metadata" / f"meta_{cat}.json.gz", meta)
    return root


def test_amazon2018_reproduces_reference_text_order_and_filters(tmp_path):
    ds = read_amazon2018(amazon2018_dir(tmp_path), K2)
    assert ds.name == "Scientific"  # the reference's short name
    assert sequences(ds) == {"U1": ["A1", "A2", "A3"], "U2": ["A3", "A1", "A2"]}  # A1/A2 tie at 150: file order
    assert ds.item_keys == ["A1", "A2", "A3"]
    assert text_of(ds, "A1") == "Lab & Bench Scale. Industrial & Scientific Lab. Acme. "
    assert text_of(ds, "A2") == "Oldstyle. . "  # an empty category list still adds ". ", as in the reference
    assert text_of(ds, "A3") == "Tube. Bio. "
    assert ds.item_attributes[0] == {"title": "Lab & Bench Scale", "category": "Industrial & Scientific Lab", "brand": "Acme"}
    counts = ds.meta["counts"]
    assert counts["raw_interactions"] == 9 and counts["duplicates_removed"] == 1
    assert counts["items_without_text_removed"] == 1 and counts["k_core_removed"] == 1
    assert ds.meta["source"]["format"] == "amazon2018" and ds.meta["source"]["metadata"].endswith("meta_Industrial_and_Scientific.json.gz")
    assert ds.seq_times.tolist() == [100, 200, 300, 50, 150, 150]


def _reference_text(record: dict) -> str:
    """UniSRec process_amazon.py's clean_text + generate_text, transcribed as the oracle."""

    def clean_text(raw):
        text = " ".join(raw) if isinstance(raw, list) else str(raw) if isinstance(raw, dict) else raw
        text = re.sub(r'["\n\r]*', "", html.unescape(text))
        index = -1
        while -index < len(text) and text[index] == ".":
            index -= 1
        index += 1
        text = text + "." if index == 0 else text[:index] + "."
        return "" if len(text) >= 2000 else text

    return "".join(clean_text(record[k]) + " " for k in ("title", "category", "brand") if k in record)


def test_amazon2018_text_matches_the_reference_on_edge_cases(tmp_path):
    records = [
        {"asin": "E1", "title": "...", "category": ["Lab &quot;Tools&quot;", "Misc"], "brand": "A.B."},
        {"asin": "E2", "title": "x" * 2000, "brand": {"name": "Acme"}},
        {"asin": "E3", "category": ["Lab"], "price": "$1"},
        {"asin": "E4", "title": "Two\r\nlines..", "category": [], "brand": ""},
        {"asin": "E5", "title": "", "brand": "&lt;b&gt;Bold&lt;/b&gt; &amp; co"},
    ]
    ratings = [f"{r['asin']},{u},5.0,{t}" for t, u in enumerate(["U1", "U2"]) for r in records]
    ds = read_amazon2018(amazon2018_dir(tmp_path, ratings=ratings, meta=[json.dumps(r) for r in records]), K2)
    assert ds.n_items == 5
    for record in records:
        assert text_of(ds, record["asin"]) == _reference_text(record), record["asin"]
    assert text_of(ds, "E2") == " {'name': 'Acme'}. "  # 2000 characters or more become ""


def test_amazon2018_source_layouts_and_names(tmp_path):
    flat = tmp_path / "flat"
    write(flat / "Prime_Pantry.csv", RATINGS_2018)
    write(flat / "meta_Prime_Pantry.json", META_2018)  # uncompressed metadata is accepted too
    assert read_amazon2018(flat, K2).name == "Pantry"
    assert read_amazon2018(flat / "Prime_Pantry.csv", K2).n_interactions == 6
    both = amazon2018_dir(tmp_path / "both")
    amazon2018_dir(both, cat="Office_Products")
    with pytest.raises(DataError, match="several categories .*Industrial_and_Scientific, Office_Products.*--name"):
        read_amazon2018(both, K2)
    assert read_amazon2018(both, PrepareOptions(k_core=2, name="Office")).meta["source"]["category"] == "Office_Products"
    assert read_amazon2018(both / "Ratings" / "Office_Products.csv", K2).name == "Office"
    with pytest.raises(DataError, match="no ratings file for 'Books'"):
        read_amazon2018(both, PrepareOptions(name="Books"))


def test_amazon2018_malformed_lines(tmp_path):
    ratings = RATINGS_2018 + ["A1,U1,5.0", "A2,U3,5.0,yesterday"]
    root = amazon2018_dir(tmp_path, ratings=ratings)
    csv_path = root / "Ratings" / "Industrial_and_Scientific.csv"
    with pytest.raises(DataError, match=rf"{csv_path}:10: expected 4 comma-separated fields .*found 3"):
        read_amazon2018(root, K2)
    ds = read_amazon2018(root, PrepareOptions(k_core=2, skip_bad_lines=True))
    assert ds.meta["skipped_bad_lines"] == 2 and ds.n_interactions == 6
    assert ds.meta["bad_line_examples"][1] == f"{csv_path}:11: timestamp 'yesterday' is not an integer"
    root2 = amazon2018_dir(tmp_path / "m", meta=META_2018 + ['{"asin": "A5", "title": '])
    meta_path = root2 / "Metadata" / "meta_Industrial_and_Scientific.json.gz"
    with pytest.raises(DataError, match=rf"{meta_path}:6: not a JSON object or Python dict literal"):
        read_amazon2018(root2, K2)
    assert read_amazon2018(root2, PrepareOptions(k_core=2, skip_bad_lines=True)).meta["skipped_bad_lines"] == 1


def test_amazon2018_missing_files_and_empty_result(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        read_amazon2018(tmp_path / "nowhere")
    write(tmp_path / "Ratings" / "Software.csv", RATINGS_2018)
    with pytest.raises(DataError, match=r"metadata file meta_Software.json.gz not found \(looked in"):
        read_amazon2018(tmp_path)
    write(tmp_path / "Metadata" / "meta_Software.json.gz", META_2018)
    with pytest.raises(DataError, match=r"Software.csv: no interactions left after the 5-core filter"):
        read_amazon2018(tmp_path)  # default k=5 leaves nothing of this tiny file
    (tmp_path / "Metadata" / "meta_Software.json.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="meta_Software.json.gz: cannot read"):
        read_amazon2018(tmp_path, K2)


# ---- Amazon 2023 ------------------------------------------------------------------------------------
def review(user, parent, ts, rating=5.0, asin=None):
    return json.dumps({"rating": rating, "title": "ok", "text": "fine", "asin": asin or parent + "-v", "parent_asin": parent,
                       "user_id": user, "timestamp": ts, "helpful_vote": 0, "verified_purchase": True})


def test_amazon2023_parent_asin_and_field_mapping(tmp_path):
    reviews = [review("U1", "P1", 1_600_000_000_000), review("U1", "P2", 1_600_000_000_500, asin="P2-red"),
               review("U1", "P3", 1_600_000_001_000), review("U2", "P2", 1_600_000_000_000, asin="P2-blue"),
               review("U2", "P1", 1_600_000_002_000), review("U2", "P3", 1_600_000_003_000)]
    meta = [
        json.dumps({"main_category": "Industrial & Scientific", "title": "Pipette", "categories": ["Lab", "Pipettes"],
                    "store": "LabStore", "details": {"Brand": "Eppendorf"}, "parent_asin": "P1"}),
        json.dumps({"main_category": "Lab Supplies", "title": "Beaker", "categories": [], "store": "GlassCo",
                    "details": {}, "parent_asin": "P2"}),
        json.dumps({"main_category": None, "title": "", "categories": [], "store": None, "parent_asin": "P3"}),
    ]
    write(tmp_path / "review_categories" / "Industrial_and_Scientific.jsonl.gz", reviews)
    write(tmp_path / "meta_categories" / "meta_Industrial_and_Scientific.jsonl", meta)
    ds = read_amazon2023(tmp_path, K2)
    assert sequences(ds) == {"U1": ["P1", "P2", "P3"], "U2": ["P2", "P1", "P3"]}
    assert text_of(ds, "P1") == "Pipette. Lab Pipettes. Eppendorf. "  # details["Brand"] before store
    assert text_of(ds, "P2") == "Beaker. Lab Supplies. GlassCo. "  # main_category when categories is empty
    assert text_of(ds, "P3") == ""  # empty values count as absent
    assert ds.seq_times[0] == 1_600_000_000_000 and ds.meta["source"]["time_unit"] == "ms"
    assert ds.meta["source"]["item_key"] == "parent_asin"


def test_amazon2023_malformed_review(tmp_path):
    reviews = [review("U1", "P1", 1), review("U1", "P2", 2), review("U1", "P3", 3), "{not json",
               json.dumps({"user_id": "U1", "parent_asin": "P1", "rating": 5}), review("U1", "P1", "soon")]
    path = write(tmp_path / "All_Beauty.jsonl", reviews)
    write(tmp_path / "meta_All_Beauty.jsonl", [json.dumps({"parent_asin": "P1", "title": "x"})])
    with pytest.raises(DataError, match=rf"{path}:4: invalid JSON"):
        read_amazon2023(path)
    with pytest.raises(DataError, match=r"no interactions left after the 5-core"):
        read_amazon2023(path, PrepareOptions(skip_bad_lines=True))
    ds = read_amazon2023(path, PrepareOptions(k_core=0, skip_bad_lines=True, drop_items_without_text=False))
    assert ds.meta["skipped_bad_lines"] == 3
    assert ds.meta["bad_line_examples"][1:] == [f"{path}:5: missing timestamp", f"{path}:6: timestamp 'soon' is not an integer"]
    assert sequences(ds) == {"U1": ["P1", "P2", "P3"]} and ds.item_texts == ["x. ", "", ""]


# ---- MovieLens --------------------------------------------------------------------------------------
GENRE_FLAGS = {"1": "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0", "2": "0|0|0|0|0|0|0|0|1|0|0|0|1|0|0|0|0|0|0",
               "3": "1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0"}
MOVIES = {"1": ("Toy Story", "1995", ["Animation", "Children's", "Comedy"]), "2": ("Misérables, Les", "1995", ["Drama", "Musical"]),
          "3": ("unknown", "", ["unknown"])}
RATINGS_ML = [("1", "1", 5, 874965758), ("1", "2", 3, 876893171), ("1", "3", 4, 878542960),
              ("2", "2", 4, 888550871), ("2", "1", 3, 888550871), ("2", "3", 2, 888550000)]


def ml100k_dir(root: Path, extra_data: list[str] = ()) -> Path:
    write(root / "u.data", [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS_ML] + list(extra_data))
    items = []
    for item, (title, year, _) in MOVIES.items():
        full = f"{title} ({year})" if year else title
        items.append(f"{item}|{full}|01-Jan-{year}||http://us.imdb.com/x|{GENRE_FLAGS[item]}")
    write(root / "u.item", items, encoding="latin-1")
    return root


def recbole_dir(root: Path) -> Path:
    write(root / "ml-100k.inter", ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
          + [f"{u}\t{i}\t{r}\t{t}" for u, i, r, t in RATINGS_ML])
    write(root / "ml-100k.item", ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
          + [f"{i}\t{t}\t{y or 'unkonwn'}\t{' '.join(g)}" for i, (t, y, g) in MOVIES.items()])
    return root


def test_movielens_100k_raw_and_recbole_agree(tmp_path):
    raw = read_movielens(ml100k_dir(tmp_path / "ml-100k"), PrepareOptions(k_core=0))
    assert raw.meta["source"]["layout"] == "ml-100k" and raw.name == "ml-100k"
    assert text_of(raw, "1") == "Toy Story (1995). Animation Children's Comedy. "
    assert text_of(raw, "2") == "Misérables, Les (1995). Drama Musical. "  # latin-1 decoded
    assert text_of(raw, "3") == "unknown. unknown. "
    assert sequences(raw) == {"1": ["1", "2", "3"], "2": ["3", "2", "1"]}  # same timestamp: file order
    rec = read_movielens(recbole_dir(tmp_path / "rb") / "ml-100k.inter", PrepareOptions(k_core=0))
    assert rec.meta["source"]["layout"] == "recbole"
    assert rec.item_texts == raw.item_texts and sequences(rec) == sequences(raw)
    assert rec.item_attributes[0] == {"title": "Toy Story (1995)", "category": "Animation Children's Comedy"}


def test_movielens_100k_genre_file_and_bad_lines(tmp_path):
    root = ml100k_dir(tmp_path, extra_data=["1\t2\t5", "2\t1\tfive\t888550871"])
    genres = ["unknown", "Action", "Adventure", "Cartoon", "Kids", "Comedy"] + [f"G{i}" for i in range(6, 19)]
    write(root / "u.genre", [f"{g}|{i}" for i, g in enumerate(genres)] + [""])
    with pytest.raises(DataError, match=rf"{root / 'u.data'}:7: expected 4 '\\t'-separated fields"):
        read_movielens(root, PrepareOptions(k_core=0))
    ds = read_movielens(root, PrepareOptions(k_core=0, skip_bad_lines=True))
    assert ds.meta["skipped_bad_lines"] == 2
    assert ds.meta["bad_line_examples"][1] == f"{root / 'u.data'}:8: rating 'five' or timestamp '888550871' is not a number"
    assert text_of(ds, "1") == "Toy Story (1995). Cartoon Kids Comedy. "  # names from u.genre
    assert read_movielens(root, PrepareOptions(k_core=0, skip_bad_lines=True, min_rating=3)).user_keys == ["1"]


def test_movielens_1m(tmp_path):
    write(tmp_path / "ratings.dat", [f"{u}::{i}::{r}::{t}" for u, i, r, t in RATINGS_ML])
    write(tmp_path / "movies.dat", [f"{i}::{t} ({y})::{'|'.join(g)}" if y else f"{i}::{t}::{'|'.join(g)}"
                                    for i, (t, y, g) in MOVIES.items()], encoding="latin-1")
    ds = read_movielens(tmp_path, PrepareOptions(k_core=0))
    assert ds.meta["source"]["layout"] == "ml-1m"
    assert text_of(ds, "2") == "Misérables, Les (1995). Drama Musical. "


def test_movielens_missing_files(tmp_path):
    with pytest.raises(DataError, match="no MovieLens files"):
        read_movielens(tmp_path)
    write(tmp_path / "u.data", ["1\t1\t5\t1"])
    with pytest.raises(DataError, match=rf"{tmp_path / 'u.item'}: file not found"):
        read_movielens(tmp_path)


# ---- generic CSV / TSV / Parquet --------------------------------------------------------------------
INTERACTIONS_CSV = [
    "user,item,timestamp,rating",
    "alice,i1,2024-05-01T10:00:00Z,5",
    "alice,i2,2024-05-01T12:00:00+02:00,4",  # 10:00 UTC: ties with i1, file order
    "alice,i3,2024-05-02,3",
    "bob,i2,1714500000,5",
    "bob,i3,1714600000.5,5",
    "bob,i1,1714700000,1",
    'carol,"i4",1714700000,5',
]
ITEMS_CSV = ["item,text,brand,price", "i1,Red pen,Bic,1.5", "i2,Blue pen,,2", "i3,Ink,Parker,", "i1,duplicate row,X,9"]


def test_generic_csv_iso_times_attributes_and_dropping(tmp_path):
    inter = write(tmp_path / "inter.csv", INTERACTIONS_CSV)
    items = write(tmp_path / "items.csv", ITEMS_CSV)
    ds = read_generic(inter, PrepareOptions(k_core=0, items=str(items)))
    assert sequences(ds) == {"alice": ["i1", "i2", "i3"], "bob": ["i2", "i3", "i1"]}  # carol's i4 has no text
    assert ds.item_texts == ["Red pen", "Blue pen", "Ink"]
    assert ds.item_attributes == [{"brand": "Bic", "price": "1.5"}, {"price": "2"}, {"brand": "Parker"}]
    assert ds.seq_times[:3].tolist() == [1714557600, 1714557600, 1714608000]
    assert ds.meta["source"]["columns"]["rating"] == "rating" and ds.meta["source"]["duplicate_item_rows"] == 1
    assert read_generic(inter, PrepareOptions(k_core=0, items=str(items), min_rating=3)).user_keys == ["alice"]


def test_generic_tsv_parquet_and_registry(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = {"uid": ["u1"] * 4 + ["u2"] * 4, "iid": pa.array([7, 8, 9, 6, 9, 8, 7, 6], pa.int64()),
             "ts": pa.array([3, 1, 2, 4, 1, 1, 1, 0], pa.int32())}
    pq.write_table(pa.table(table), tmp_path / "events.parquet")
    items = {"iid": [6, 7, 8, 9], "desc": ["six", "seven", "eight", None], "year": [2000, 2001, None, 2003]}
    pq.write_table(pa.table(items), tmp_path / "items.parquet")
    opts = PrepareOptions(k_core=0, items=str(tmp_path / "items.parquet"), user_col="uid", item_col="iid", time_col="ts", text_col="desc")
    ds = read_dataset(tmp_path / "events.parquet", "parquet", opts)
    assert sequences(ds) == {"u1": ["8", "7", "6"], "u2": ["6", "8", "7"]}  # item 9 has no text; ties in file order
    assert ds.item_keys == ["8", "7", "6"] and ds.item_texts == ["eight", "seven", "six"]
    assert ds.meta["source"]["format"] == "parquet" and ds.meta["counts"]["items_without_text_removed"] == 2
    kept = read_dataset(tmp_path / "events.parquet", "parquet", dataclasses.replace(opts, drop_items_without_text=False))
    assert sequences(kept) == {"u1": ["8", "9", "7", "6"], "u2": ["6", "9", "8", "7"]}
    assert text_of(kept, "9") == "" and kept.item_attributes[kept.item_keys.index("9")] == {"year": "2003"}
    write(tmp_path / "d" / "interactions.tsv", ["user\titem\ttimestamp"] + [f"u\t{i}\t{t}" for t, i in enumerate("abc")])
    write(tmp_path / "d" / "items.tsv", ["item\ttext"] + [f"{i}\ttext {i}" for i in "abc"])
    assert sequences(read_generic(tmp_path / "d", PrepareOptions(k_core=0))) == {"u": ["a", "b", "c"]}
    assert READERS["csv"] is READERS["parquet"] is read_generic
    assert {"amazon2018", "amazon2023", "movielens", "csv", "parquet", "rechorus", "unisrec"} <= set(READERS)


def test_generic_tsv_keeps_quotes_and_names_the_dataset_after_its_folder(tmp_path):
    """TSV has no quoting: a title starting with a quote keeps it, and an unbalanced quote swallows no lines."""
    write(tmp_path / "beauty" / "interactions.tsv", ["user\titem\ttimestamp"] + [f"u\t{i}\t{t}" for t, i in enumerate("abc")])
    write(tmp_path / "beauty" / "items.tsv", ["item\ttext", 'a\t"C" Size Battery Adapter', 'b\t"unbalanced title', "c\tplain"])
    ds = read_generic(tmp_path / "beauty", PrepareOptions(k_core=0))
    assert ds.name == "beauty"
    assert sequences(ds) == {"u": ["a", "b", "c"]}
    assert [text_of(ds, k) for k in "abc"] == ['"C" Size Battery Adapter', '"unbalanced title', "plain"]


def test_generic_parquet_time_types(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = write(tmp_path / "items.csv", ["item,text", "a,A", "b,B", "c,C"])
    stamps = pa.array([3_000, 1_000, 2_000, None], pa.timestamp("ms", tz="UTC"))
    pq.write_table(pa.table({"user": ["u"] * 4, "item": ["a", "b", "c", "a"], "timestamp": stamps}), tmp_path / "t.parquet")
    with pytest.raises(DataError, match=rf"{tmp_path / 't.parquet'}:4: missing timestamp"):
        read_generic(tmp_path / "t.parquet", PrepareOptions(k_core=0, items=str(items)))
    ds = read_generic(tmp_path / "t.parquet", PrepareOptions(k_core=0, items=str(items), skip_bad_lines=True))
    assert sequences(ds) == {"u": ["b", "c", "a"]} and ds.seq_times.tolist() == [1, 2, 3]
    iso = pa.array(["2024-01-02", "2024-01-01T00:00:00Z", "2024-01-01T00:00:00+01:00"])
    pq.write_table(pa.table({"user": ["u"] * 3, "item": ["a", "b", "c"], "timestamp": iso}), tmp_path / "s.parquet")
    ds = read_generic(tmp_path / "s.parquet", PrepareOptions(k_core=0, items=str(items)))
    assert sequences(ds) == {"u": ["c", "b", "a"]} and ds.seq_times.tolist() == [1704063600, 1704067200, 1704153600]


def test_generic_errors(tmp_path):
    items = write(tmp_path / "items.csv", ITEMS_CSV)
    bad = write(tmp_path / "bad.csv", INTERACTIONS_CSV + ["erin,i2,last tuesday,5", "dave,i1", ",i1,5,5"])
    with pytest.raises(DataError, match=rf"{bad}:9: timestamp 'last tuesday' is not a number or an ISO-8601 date"):
        read_generic(bad, PrepareOptions(k_core=0, items=str(items)))  # problems are reported in line order
    ds = read_generic(bad, PrepareOptions(k_core=0, items=str(items), skip_bad_lines=True))
    assert ds.meta["skipped_bad_lines"] == 3 and ds.n_interactions == 6
    assert ds.meta["bad_line_examples"][1:] == [f"{bad}:10: expected 4 ','-separated fields, found 2", f"{bad}:11: missing user"]
    with pytest.raises(DataError, match=r"no column 'time' \(columns: user, item, timestamp, rating\)"):
        read_generic(bad, PrepareOptions(items=str(items), time_col="time"))
    with pytest.raises(DataError, match="no items table; pass --items"):
        read_generic(bad)
    with pytest.raises(DataError, match="missing.csv: items table not found"):
        read_generic(bad, PrepareOptions(items=str(tmp_path / "missing.csv")))
    with pytest.raises(DataError, match="nope.csv: file not found"):
        read_generic(tmp_path / "nope.csv", PrepareOptions(items=str(items)))
    empty = write(tmp_path / "empty.csv", [""])
    with pytest.raises(DataError, match="empty.csv: empty file"):
        read_generic(empty, PrepareOptions(items=str(items)))


# ---- ReChorus ---------------------------------------------------------------------------------------
def rechorus_dir(root: Path, dev_rows=("1\t3\t30\t[5, 6]", "2\t1\t30\t[4]")) -> Path:
    write(root / "train.csv", ["user_id\titem_id\ttime", "1\t2\t10", "2\t2\t11", "1\t1\t20", "2\t3\t12"])
    write(root / "dev.csv", ["user_id\titem_id\ttime\tneg_items", *dev_rows])
    write(root / "test.csv", ["user_id\titem_id\ttime\tneg_items", "2\t2\t40\t[1]", "1\t2\t40\t[9]"])
    write(root / "Shop.item2index", ["B003\t3", "B001\t1", "B002\t2"])
    write(root / "Shop.text", ["id\ttext", "B001\tFirst item", "B002\tSecond item", "B003\tThird item"])
    return root


def test_rechorus_sequence_is_train_then_dev_then_test(tmp_path):
    ds = read_rechorus(rechorus_dir(tmp_path))
    assert ds.name == "Shop" and ds.item_keys == ["B001", "B002", "B003"] and ds.user_keys == ["1", "2"]
    assert [ds.sequence(u).tolist() for u in range(2)] == [[2, 1, 3, 2], [2, 3, 1, 2]]
    assert ds.item_texts == ["First item", "Second item", "Third item"]
    assert ds.seq_times.tolist() == [10, 20, 30, 40, 11, 12, 30, 40]


def test_rechorus_errors(tmp_path):
    root = rechorus_dir(tmp_path / "a", dev_rows=("1\t3\t30\t[5]",))
    with pytest.raises(DataError, match=r"dev.csv: no row for user 2"):
        read_rechorus(root)
    root = rechorus_dir(tmp_path / "b", dev_rows=("1\t3\t30\t[5]", "2\t1\t30\t[4]", "2\t1\t31\t[4]"))
    with pytest.raises(DataError, match=r"dev.csv:4: second row for user 2 \(line 3 is the first\)"):
        read_rechorus(root)
    root = rechorus_dir(tmp_path / "c", dev_rows=("1\t3\t30\t[5]", "2\t77\t30\t[4]"))
    with pytest.raises(DataError, match=r"dev.csv:3: item_id 77 is not in the .item2index file"):
        read_rechorus(root)
    with pytest.raises(DataError, match="no <Name>.item2index file"):
        read_rechorus(tmp_path)


def test_raw_dataset_round_trips_through_disk(tmp_path):
    ds = read_amazon2018(amazon2018_dir(tmp_path / "raw"), K2)
    loaded = Dataset.load(ds.save(tmp_path / "out"))
    assert loaded.content_hash() == ds.content_hash()
    assert loaded.meta["counts"] == ds.meta["counts"] and loaded.item_attributes == ds.item_attributes


# ---- real data (../shared/data) ---------------------------------------------------------------------
def test_real_office_rechorus():
    root = requires_shared("amazon2014-office-rechorus")
    ds = read_rechorus(root)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (4905, 2420, 53258)
    index = ds.item_index()
    asin = {line.split("\t")[1].strip(): line.split("\t")[0] for line in (root / "Office.item2index").read_text().splitlines()}
    rows = {}
    for split in ("dev", "test"):
        lines = (root / f"{split}.csv").read_text().splitlines()[1:]
        rows[split] = {f.split("\t")[0]: index[asin[f.split("\t")[1]]] for f in lines}
    users = ds.user_index()
    assert all(ds.sequence(users[u])[-1] == item for u, item in rows["test"].items())
    assert all(ds.sequence(users[u])[-2] == item for u, item in rows["dev"].items())
    assert all(text for text in ds.item_texts) and ds.meta["counts"]["users_not_time_ordered"] == 0


def test_real_movielens_100k_recbole():
    root = requires_shared("movielens-100k-recbole")
    ds = read_movielens(root)
    # MovieLens-100K is 20-core in users but not in items: the 5-core drops 333 rarely rated movies.
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (943, 1349, 99287)
    assert text_of(ds, "1") == "Toy Story (1995). Animation Children's Comedy. "
    assert text_of(ds, "543") == "Misérables, Les (1995). Drama Musical. "
    assert all(t.endswith(". ") for t in ds.item_texts)
    full = read_movielens(root, PrepareOptions(k_core=0))
    assert (full.n_users, full.n_items, full.n_interactions) == (943, 1682, 100000)
    times = full.seq_times
    assert all((np.diff(times[full.seq_offsets[u]:full.seq_offsets[u + 1]]) >= 0).all() for u in range(full.n_users))


# ---- a UTF-8 byte-order mark ("CSV UTF-8" exports) -----------------------------------------------------
def _add_bom(folder: Path) -> None:
    """Re-save every file under ``folder`` as UTF-8 with a byte-order mark, as a spreadsheet or editor would."""
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        data = gzip.decompress(data) if path.suffix == ".gz" else data
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("latin-1")  # the GroupLens raw files
        data = text.encode("utf-8-sig")
        path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _amazon2023(root: Path) -> Path:
    reviews = [review(u, p, t) for t, (u, p) in enumerate(zip(["U1"] * 3 + ["U2"] * 3, ["P1", "P2", "P3", "P3", "P1", "P2"]))]
    write(root / "Shop.jsonl", reviews)
    write(root / "meta_Shop.jsonl", [json.dumps({"parent_asin": p, "title": f"Title {p}"}) for p in ("P1", "P2", "P3")])
    return root


def _ml1m(root: Path) -> Path:
    write(root / "ratings.dat", [f"{u}::{i}::{r}::{t}" for u, i, r, t in RATINGS_ML])
    write(root / "movies.dat", [f"{i}::{t} ({y})::{'|'.join(g)}" if y else f"{i}::{t}::{'|'.join(g)}"
                                for i, (t, y, g) in MOVIES.items()], encoding="latin-1")
    return root


def _csv(root: Path) -> Path:
    write(root / "interactions.csv", INTERACTIONS_CSV)
    write(root / "items.csv", ITEMS_CSV)
    return root


K0 = PrepareOptions(k_core=0)


BOM_SOURCES = {  # format -> (make the source folder, options)
    "amazon2018": (amazon2018_dir, "amazon2018", K2),
    "amazon2023": (_amazon2023, "amazon2023", K0),
    "ml-100k": (ml100k_dir, "movielens", K0),
    "ml-1m": (_ml1m, "movielens", K0),
    "recbole": (recbole_dir, "movielens", K0),
    "csv": (_csv, "csv", K0),
    "rechorus": (rechorus_dir, "rechorus", PrepareOptions()),
    "unisrec": (_unisrec, "unisrec", PrepareOptions()),
}


@pytest.mark.parametrize("source", list(BOM_SOURCES))
def test_every_reader_ignores_a_byte_order_mark(tmp_path, source):
    make, fmt, opts = BOM_SOURCES[source]
    plain = read_dataset(make(tmp_path / "plain"), fmt, opts)
    shutil.copytree(tmp_path / "plain", tmp_path / "bom")
    _add_bom(tmp_path / "bom")
    with_bom = read_dataset(tmp_path / "bom", fmt, opts)
    assert sequences(with_bom) == sequences(plain) and with_bom.item_texts == plain.item_texts
    assert not any(k.startswith(("\ufeff", "ï»¿")) for k in with_bom.user_keys + with_bom.item_keys)


def test_prepare_csv_with_byte_order_mark(tmp_path, capsys):
    inter = write(tmp_path / "inter.csv", INTERACTIONS_CSV, encoding="utf-8-sig")
    items = write(tmp_path / "items.csv", ITEMS_CSV, encoding="utf-8-sig")
    out = cli_json(capsys, ["prepare", str(inter), "--format", "csv", "--items", str(items), "--k-core", "0",
                         "--out", str(tmp_path / "data"), "--json"])
    assert (out["users"], out["items"], out["interactions"]) == (2, 3, 6)
