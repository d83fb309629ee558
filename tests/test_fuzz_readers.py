"""Property-based fuzzing of every reader and of config parsing (hypothesis, fixed seeds).

Each reader starts from a small valid source and hypothesis damages one of its files: truncation, inserted
bytes (NUL, invalid UTF-8, byte-order marks, quotes, separators, line breaks, NaN and inf, a 200 KB field),
deleted ranges, duplicated or dropped lines, CRLF line ends, re-encoding as UTF-16 or Latin-1, gzip damage.
The invariant: a valid dataset that saves and loads back, or a ``TextrecError`` on one line that names the
file (``textrec`` exits 2 with it); never another exception, never a partial or temporary directory.

The default run tries ``FUZZ_EXAMPLES`` (30) cases per reader; ``-m slow`` runs ``FUZZ_EXAMPLES_SLOW``
(1500; the table in docs/RESULTS.md uses 400). ``TEXTREC_FUZZ_REPORT=FILE`` writes the counts per reader (tried, valid, clean error) as JSON, which
``benchmarks/reliability_table.py`` turns into the table in docs/RESULTS.md.
"""

from __future__ import annotations

import atexit
import gzip
import json
import os
import tempfile
import warnings
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from test_formats_raw import ITEMS_CSV, INTERACTIONS_CSV, amazon2018_dir, ml100k_dir, rechorus_dir, recbole_dir, review, write
from test_unisrec_reader import _write_atomic
from textrec.data.dataset import Dataset
from textrec.data.formats import read_dataset
from textrec.data.formats.common import PrepareOptions
from textrec.errors import TextrecError

FUZZ_EXAMPLES = int(os.environ.get("TEXTREC_FUZZ_EXAMPLES", 30))
FUZZ_EXAMPLES_SLOW = int(os.environ.get("TEXTREC_FUZZ_EXAMPLES_SLOW", 1500))
COUNTS: dict[str, Counter] = defaultdict(Counter)  # reader -> {"tried", "valid", "error", "escaped"}


def _report() -> None:
    target = os.environ.get("TEXTREC_FUZZ_REPORT")
    if target and COUNTS:
        Path(target).write_text(json.dumps({k: dict(v) for k, v in sorted(COUNTS.items())}, indent=2) + "\n")


atexit.register(_report)

PAYLOADS = [b"\x00", b"\xe9", b"\xff\xfe", b"\xfe\xff", b"\xef\xbb\xbf", b'"', b"'", b"\t", b",", b"|", b"::", b"\n",
            b"\r\n", b"\r", b"nan", b"inf", b"-inf", b"1e309", b"-1", b"", b"{", b"}", b"[", b"null", b"\\",
            b"\xc3", b"\xed\xa0\x80", "é".encode(), "\u2028".encode(), b"x" * 200_000, b"\n\n\n", b"=", b"[[x]]"]
OPS = ["insert", "delete", "truncate", "duplicate_line", "drop_line", "crlf", "utf16", "utf16le", "latin1", "gzip_damage"]

mutation = st.tuples(st.sampled_from(OPS), st.integers(0, 10), st.floats(0, 1), st.sampled_from(PAYLOADS))
mutations = st.lists(mutation, min_size=1, max_size=3)


def _mutate(data: bytes, op: str, where: float, payload: bytes) -> bytes:
    pos = int(where * len(data))
    lines = data.splitlines(keepends=True) or [b""]
    line = min(int(where * len(lines)), len(lines) - 1)
    if op == "insert":
        return data[:pos] + payload + data[pos:]
    if op == "delete":
        return data[:pos] + data[pos + 1 + len(payload) % 17:]
    if op == "truncate":
        return data[:pos]
    if op == "duplicate_line":
        return b"".join(lines[: line + 1] + lines[line:])
    if op == "drop_line":
        return b"".join(lines[:line] + lines[line + 1:])
    if op == "crlf":
        return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    text = data.decode("utf-8", errors="surrogateescape")
    try:
        if op == "utf16":
            return text.encode("utf-16")
        if op == "utf16le":
            return text.encode("utf-16-le")
        if op == "latin1":
            return text.encode("latin-1")
    except UnicodeEncodeError:
        return data
    return data  # gzip_damage on a plain file: unchanged


def damage(files: list[Path], plan) -> None:
    """Apply ``plan`` to the source files (a gzip file's text is damaged inside, or its bytes)."""
    for op, which, where, payload in plan:
        path = files[which % len(files)]
        raw = path.read_bytes()
        if path.suffix == ".gz":
            if op == "gzip_damage":
                path.write_bytes(_mutate(raw, "delete" if where < 0.5 else "truncate", where, payload))
                continue
            try:
                inner = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                continue  # damaged already: leave it so
            path.write_bytes(gzip.compress(_mutate(inner, op, where, payload)))
        else:
            path.write_bytes(_mutate(raw, op, where, payload))


# Each example reads from a folder of its own, made and removed around it: in memory (/dev/shm) where the machine has
# it, since on a disk making and removing the folder can cost more than the reading itself, else in the default
# temporary folder. What is checked is the same on either.
SCRATCH = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


def check_invariant(reader: str, src: Path, files: list[Path], read, also: list[str] = ()) -> None:
    """The fuzzing invariant (module doc), counting the outcome for ``reader``."""
    out = src.parent / "out"
    COUNTS[reader]["tried"] += 1
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)  # a numpy cast that wraps a value is a silent corruption
            ds = read()
        if isinstance(ds, Dataset):
            ds.save(out)
            assert Dataset.load(out).content_hash() == ds.content_hash()
        COUNTS[reader]["valid"] += 1
    except TextrecError as e:
        message = str(e)
        assert "\n" not in message, message
        names = [src.name] + [f.name for f in files] + [str(f) for f in files] + [a for a in also if a]
        assert any(n in message for n in names) or "--" in message, message
        assert not out.exists()
        COUNTS[reader]["error"] += 1
    except BaseException:
        COUNTS[reader]["escaped"] += 1
        raise
    leftovers = [p.name for p in src.parent.iterdir() if p.name.startswith(".")]
    assert not leftovers, leftovers


# ---- the readers' valid seeds ----------------------------------------------------------------------


def seed_csv(root: Path):
    inter = write(root / "src" / "interactions.csv", INTERACTIONS_CSV + ["alice,i2,1714900000,4", "bob,i3,1714900001,2"])
    items = write(root / "src" / "items.csv", ITEMS_CSV)
    return inter.parent, [inter, items], "csv", PrepareOptions(k_core=0)


def seed_tsv(root: Path):
    rows = [line.replace(",", "\t") for line in INTERACTIONS_CSV]
    inter = write(root / "src" / "interactions.tsv", rows)
    items = write(root / "src" / "items.tsv", [line.replace(",", "\t") for line in ITEMS_CSV])
    return inter.parent, [inter, items], "csv", PrepareOptions(k_core=0)


def seed_amazon2018(root: Path):
    src = amazon2018_dir(root / "src")
    return src, sorted(p for p in src.rglob("*") if p.is_file()), "amazon2018", PrepareOptions(k_core=2)


def seed_amazon2023(root: Path):
    src = root / "src"
    reviews = [review(u, p, 1_600_000_000_000 + 1000 * k) for k, (u, p) in
               enumerate([("U1", "P1"), ("U1", "P2"), ("U1", "P3"), ("U2", "P2"), ("U2", "P1"), ("U2", "P3")])]
    meta = [json.dumps({"main_category": "Lab", "title": f"T{p}", "categories": ["Lab"], "store": "S", "details": {},
                        "parent_asin": p}) for p in ("P1", "P2", "P3")]
    files = [write(src / "review_categories" / "Lab.jsonl.gz", reviews), write(src / "meta_categories" / "meta_Lab.jsonl", meta)]
    return src, files, "amazon2023", PrepareOptions(k_core=2)


def seed_movielens(root: Path):
    src = ml100k_dir(root / "src")
    return src, [src / "u.data", src / "u.item"], "movielens", PrepareOptions(k_core=2)


def seed_movielens_recbole(root: Path):
    src = recbole_dir(root / "src")
    return src, sorted(src.iterdir()), "movielens", PrepareOptions(k_core=2)


def seed_rechorus(root: Path):
    src = rechorus_dir(root / "src")
    return src, sorted(src.iterdir()), "rechorus", PrepareOptions()


def seed_unisrec(root: Path):
    src = root / "src"
    src.mkdir(parents=True)
    _write_atomic(src, {0: [1, 2, 3, 4, 5], 1: [2, 3, 4, 1], 2: [5, 4, 3, 2, 1, 0]}, 6)
    return src, sorted(src.iterdir()), "unisrec", PrepareOptions()


SEEDS = {"csv": seed_csv, "tsv": seed_tsv, "amazon2018": seed_amazon2018, "amazon2023": seed_amazon2023,
         "movielens": seed_movielens, "movielens-recbole": seed_movielens_recbole, "rechorus": seed_rechorus,
         "unisrec": seed_unisrec}


def fuzz_reader(name: str, plan) -> None:
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        src, files, fmt, opts = SEEDS[name](Path(tmp))
        damage(files, plan)
        check_invariant(name, src, files, lambda: read_dataset(src, fmt, opts))


def fuzz(examples: int):
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("name", sorted(SEEDS))
def test_every_seed_is_valid(name):
    fuzz_reader(name, [])  # the seeds themselves read: damage is what the fuzzing adds
    assert COUNTS[name]["valid"] >= 1


@pytest.mark.parametrize("name", sorted(SEEDS))
@fuzz(FUZZ_EXAMPLES)
@given(plan=mutations)
@example(plan=[("insert", 0, 0.0, b'"')])  # found by fuzzing: an open quote swallowing the header (csv)
@example(plan=[("insert", 0, 0.75, b"1e309")])  # found by fuzzing: an infinite timestamp (movielens)
@example(plan=[("truncate", 3, 0.75, b"")])  # found by fuzzing: a user with no training rows (unisrec)
def test_damaged_sources_read_or_fail_on_one_line(name, plan):
    fuzz_reader(name, plan)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SEEDS))
@fuzz(FUZZ_EXAMPLES_SLOW)
@given(plan=mutations)
def test_damaged_sources_read_or_fail_on_one_line_at_length(name, plan):
    fuzz_reader(name, plan)


# ---- Parquet: tables of odd values, and damaged files ----------------------------------------------

keys = st.one_of(st.none(), st.sampled_from(["u1", "u2", "u3", "", " ", "a\x00b", "é", "x" * 1000]))
times = st.one_of(st.none(), st.integers(-2**40, 2**40), st.floats(allow_nan=True, allow_infinity=True),
                  st.sampled_from(["2024-05-01", "soon", "", "1e309", "nan"]))


VALID_ROWS = [("u1", "u1", 1), ("u1", "u3", 2), ("u1", "é", 3), ("u2", "u3", 1), ("u2", "u1", 2), ("u2", "é", 3)]


def _parquet_source(root: Path, users, items, ts) -> tuple[Path, list[Path]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    src = root / "src"
    src.mkdir(parents=True)
    kinds = {type(t) for t in ts if t is not None}
    column = pa.array([None if t is None else str(t) for t in ts], pa.string()) if len(kinds) > 1 or str in kinds else pa.array(ts)
    pq.write_table(pa.table({"user": pa.array(users, pa.string()), "item": pa.array(items, pa.string()), "timestamp": column}),
                   src / "interactions.parquet")
    pq.write_table(pa.table({"item": ["u1", "u2", "u3", "é"], "text": ["one", None, "three", "four"]}), src / "items.parquet")
    return src, [src / "interactions.parquet", src / "items.parquet"]


@fuzz(FUZZ_EXAMPLES * 2)
@given(rows=st.lists(st.tuples(keys, keys, times), min_size=0, max_size=6), plan=st.one_of(st.just([]), mutations))
def test_parquet_tables_of_odd_values_read_or_fail_on_one_line(rows, plan):
    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        rows = VALID_ROWS + rows  # a valid table, with odd rows after it
        users, items, ts = (list(c) for c in zip(*rows))
        src, files = _parquet_source(Path(tmp), users, items, ts)
        damage(files, [p for p in plan if p[0] in ("insert", "delete", "truncate")])
        check_invariant("parquet", src, files, lambda: read_dataset(src, "parquet", PrepareOptions(k_core=0)))


# ---- new items for a running catalogue ---------------------------------------------------------------

NEW_ITEMS = {
    "new.csv": ["item,title,brand,text", "n1,Red pen,Bic,a red pen", "n2,Blue pen,,", "n3,,Parker,ink"],
    "new.tsv": ["item\ttitle\tbrand", "n1\tRed pen\tBic", "n2\tBlue pen\t"],
    "new.jsonl": [json.dumps({"item": "n1", "title": "Red pen", "brand": "Bic"}), json.dumps({"item": "n2", "text": "x"})],
}


@pytest.mark.parametrize("name", sorted(NEW_ITEMS))
@fuzz(FUZZ_EXAMPLES)
@given(plan=mutations)
def test_damaged_new_item_files_read_or_fail_on_one_line(name, plan):
    from textrec.serve.catalogue import read_new_item_table

    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        src = Path(tmp) / "src"
        path = write(src / name, NEW_ITEMS[name])
        damage([path], plan)
        check_invariant(f"new items {Path(name).suffix}", src, [path], lambda: read_new_item_table(path))


# ---- configs: TOML files and key=value overrides -----------------------------------------------------

CONFIG = b"""[model]
name = "sasrec"
hidden_size = 16

[train]
lr = 0.001
epochs = 2
batch_size = 64

[eval]
ks = [10, 50]
"""
override_keys = st.sampled_from(["train.lr", "train.epochs", "model.hidden_size", "eval.ks", "data.max_seq_len",
                                 "train.nope", "model", "train.", ".lr", "x.y", "train.lr.x", "train.weight_decay"])
override_values = st.one_of(st.sampled_from(["inf", "-inf", "nan", "1e309", "[1, 0]", "true", "'x'", "", "=", "0x10",
                                             "[", "1_000", "-3", "\x00", "é"]),
                            st.text(max_size=12), st.integers().map(str), st.floats().map(str))
overrides = st.lists(st.tuples(override_keys, override_values).map(lambda kv: f"{kv[0]}={kv[1]}")
                     | st.text(max_size=10), max_size=4)


@fuzz(FUZZ_EXAMPLES * 3)
@given(plan=st.one_of(st.just([]), mutations), extra=overrides)
def test_damaged_configs_and_overrides_parse_or_fail_on_one_line(plan, extra):
    from textrec.config import RunConfig, load_config

    with tempfile.TemporaryDirectory(dir=SCRATCH) as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        path = src / "run.toml"
        path.write_bytes(CONFIG)
        damage([path], plan)

        def read():
            cfg = load_config(path, extra, model="sasrec")
            assert isinstance(cfg, RunConfig)
            return cfg

        check_invariant("config", src, [path], read, also=[e.partition("=")[0].strip() or e for e in extra] + ["override"])
