"""Defects a new user met (project issue 10), each pinned by a test that failed before its fix."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from test_formats_raw import (
    INTERACTIONS_CSV, ITEMS_CSV, K2, MOVIES, RATINGS_ML, amazon2018_dir, ml100k_dir, rechorus_dir, recbole_dir, review,
    sequences, write,
)
from test_text_encode import CountingEncoder
from test_unisrec_reader import _write_atomic
from textrec.cli import build_parser, main
from textrec.data.dataset import Dataset
from textrec.data.formats import read_dataset
from textrec.data.formats.common import PrepareOptions
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import DataError, NotFoundError
from textrec.serve.catalogue import read_new_items
from textrec.text.cache import EmbeddingCache
from textrec.text.encode import encode_dataset, load_item_embeddings

TINY = ["model.hidden_size=16", "model.inner_size=16", "train.epochs=1", "train.batch_size=64", "train.device=cpu"]


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture()
def world_dir(tmp_path):
    """A fresh synthetic dataset (60 items) of this test's own, so codes and embeddings written here stay here."""
    return make_domain("tools", WorldSpec(n_items=60, n_users=200, min_len=5, max_len=12), seed=3).save(tmp_path / "tools")


# ---- 1. a UTF-8 byte-order mark ("CSV UTF-8" exports) -----------------------------------------------------
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


def _unisrec(root: Path) -> Path:
    root.mkdir(parents=True)
    _write_atomic(root, {u: [(u + j) % 12 for j in range(6)] for u in range(8)}, 12)
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
    out = _json(capsys, ["prepare", str(inter), "--format", "csv", "--items", str(items), "--k-core", "0",
                         "--out", str(tmp_path / "data"), "--json"])
    assert (out["users"], out["items"], out["interactions"]) == (2, 3, 6)


def test_new_items_with_byte_order_mark(tmp_path):
    path = tmp_path / "new.csv"
    path.write_text("item,text\nN1,A new pen\nN2,A new ink\n", encoding="utf-8-sig")
    assert read_new_items(path) == (["N1", "N2"], ["A new pen", "A new ink"])


# ---- 2. a UniSRec dataset without its .text file -----------------------------------------------------------
def test_unisrec_without_text_file_is_an_error(tmp_path, capsys):
    raw = _unisrec(tmp_path / "raw")
    (raw / "Toy.text").unlink()
    assert main(["prepare", str(raw), "--format", "unisrec", "--out", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{raw / 'Toy.text'}: file not found" in err[0], err
    # asked for explicitly, it prepares with a warning, and encode then refuses the all-empty catalogue
    assert main(["prepare", str(raw), "--format", "unisrec", "--out", str(tmp_path / "data"), "--keep-items-without-text"]) == 0
    assert "warning:" in capsys.readouterr().err
    assert main(["encode", str(tmp_path / "data"), "--encoder", "hashing"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "every item text" in err[0] and "is empty" in err[0], err


# ---- 3. a duplicate key in --new-items -------------------------------------------------------------------
def test_new_items_duplicate_key(tmp_path):
    path = tmp_path / "new.csv"
    path.write_text('item,text\nN1,A new pen\nN2,"A new\nink"\nN1,Another pen\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:5: duplicate item 'N1'")):
        read_new_items(path)


# ---- 4. an unknown item token in a .inter file ----------------------------------------------------------
def test_unisrec_unknown_item_names_the_inter_file_and_line(tmp_path):
    raw = _unisrec(tmp_path / "raw")
    path = raw / "Toy.valid.inter"
    lines = path.read_text().splitlines(keepends=True)
    user, hist, _ = lines[3].rstrip("\n").split("\t")
    lines[3] = f"{user}\t{hist}\t99\n"
    path.write_text("".join(lines))
    with pytest.raises(DataError, match=re.escape(f"{path}:4: unknown item '99' (not in Toy.item2index)")):
        read_dataset(raw, "unisrec")


# ---- 5. quantize reports progress, collisions and codebook usage in words -------------------------------
def test_quantize_reports_progress_collisions_and_usage(world_dir, capsys):
    pytest.importorskip("faiss")
    from textrec.quant.codes import code_statistics, load_item_codes

    assert main(["encode", str(world_dir), "--encoder", "hashing-32", "--json"]) == 0
    capsys.readouterr()
    assert main(["quantize", str(world_dir), "--codebooks", "4", "--codebook-size", "8"]) == 0
    err = capsys.readouterr().err
    assert re.search(r"training OPQ rotation and PQ codebooks \(4 x 8\) on [\d,]+ vectors", err), err
    assert re.search(r"encoding 60 items", err), err
    line = err.strip().splitlines()[-1]
    m = re.fullmatch(r"codes 'hashing-32-mean-opq4x8': 60 items, 4 codebooks x 8 codewords; (\d+) items share their "
                     r"full code with another item \(collisions\); codebook usage: mean ([\d.]+)/8 codewords used per "
                     r"codebook \(min (\d+)\); (\d+\.\d) s; wrote (\S+)", line)
    assert m, line
    codes, _ = load_item_codes(world_dir)
    stats = code_statistics(codes[1:], 8)
    assert int(m[1]) == stats["collisions"] and int(m[3]) == stats["codebook_usage_min"]
    assert float(m[2]) == pytest.approx(stats["codebook_usage_mean"], abs=0.05) and Path(m[5]).exists()
    out = _json(capsys, ["quantize", str(world_dir), "--codebooks", "4", "--codebook-size", "8", "--name", "again", "--json"])
    assert out["collisions"] == stats["collisions"] and out["codebook_usage"] == stats["codebook_usage"]
    assert out["codebook_usage_min"] == stats["codebook_usage_min"]
    assert out["codebook_usage_mean"] == pytest.approx(stats["codebook_usage_mean"])
    assert out["collision_groups"] == stats["collision_groups"] and out["seconds"] == round(out["seconds"], 3)


# ---- 6. an interrupted encode keeps the chunks it finished --------------------------------------------------
class DyingEncoder(CountingEncoder):
    """Encodes ``lives`` calls, then dies the way a killed process stops: mid-way."""

    def __init__(self, lives: int) -> None:
        super().__init__(dim=32)
        self.lives = lives

    def encode(self, texts):
        if self.lives == 0:
            raise KeyboardInterrupt
        self.lives -= 1
        return super().encode(texts)


def test_killed_encode_resumes_from_the_cache(tmp_path, world_dir, monkeypatch):
    import textrec.text.encode as encode_mod

    monkeypatch.setattr(encode_mod, "CHUNK_TEXTS", 25, raising=False)
    cache = tmp_path / "cache"
    n_distinct = len(set(Dataset.load(world_dir).item_texts))
    with pytest.raises(KeyboardInterrupt):
        encode_dataset(world_dir, encoder=DyingEncoder(lives=2), cache=cache, progress=False)
    assert len(EmbeddingCache("hashing-v1:32", "mean", 512, 32, cache)) == 50  # two chunks of 25 were kept
    rerun = CountingEncoder(dim=32)
    res = encode_dataset(world_dir, encoder=rerun, cache=cache, progress=False)
    assert (res.n_cached, res.n_encoded) == (50, n_distinct - 50) and len(rerun.seen) == n_distinct - 50
    table, _ = load_item_embeddings(world_dir)
    fresh = encode_dataset(world_dir, encoder=CountingEncoder(dim=32), cache=False, progress=False, name="fresh")
    np.testing.assert_array_equal(table, np.load(fresh.path))


# ---- 7. several embeddings / codes: say how to choose ---------------------------------------------------------
def test_several_embeddings_or_codes_say_how_to_choose(world_dir):
    encode_dataset(world_dir, encoder="hashing-16", cache=False, progress=False)
    encode_dataset(world_dir, encoder="hashing-32", cache=False, progress=False)
    with pytest.raises(NotFoundError, match=re.escape(
            f"several item embeddings in {world_dir} (hashing-16-mean, hashing-32-mean); choose one with data.embeddings=NAME")):
        load_item_embeddings(world_dir)
    from textrec.quant.codes import load_item_codes, random_codes

    random_codes(world_dir, 4, 8, name="a")
    random_codes(world_dir, 4, 8, name="b")
    with pytest.raises(NotFoundError, match=re.escape(f"several item codes in {world_dir} (a, b); choose one with data.codes=NAME")):
        load_item_codes(world_dir)


# ---- 8. recommend --new-items says where each new item ranks -------------------------------------------------
def test_recommend_reports_the_rank_of_new_items(world_dir, tmp_path, capsys):
    assert main(["encode", str(world_dir), "--encoder", "hashing-32", "--json"]) == 0
    run = tmp_path / "run"
    assert main(["train", str(world_dir), "--model", "unisrec", "--out", str(run), "--quiet", *TINY]) == 0
    new = tmp_path / "new.csv"
    new.write_text("item,text\nN1,Zorblat orange hammer. Tools.\nN2,Zorblat blue saw, vintage. Tools.\n")
    capsys.readouterr()
    argv = ["recommend", str(run), "--items", "tools-00001,tools-00002", "--new-items", str(new)]
    full = _json(capsys, [*argv, "-k", "100", "--json"])
    everything = [r["item"] for r in full["recommendations"]]
    assert len(everything) == 60  # 62 items less the two in the history
    ranks = {r["item"]: r for r in full["new_items"]}
    assert set(ranks) == {"N1", "N2"}
    for key, r in ranks.items():
        assert r["rank"] == everything.index(key) + 1 and r["score"] == pytest.approx(full["recommendations"][r["rank"] - 1]["score"])
    assert main([*argv, "-k", "1"]) == 0
    out = capsys.readouterr().out
    for key, r in ranks.items():
        assert f"new item {key} ranks {r['rank']} of 60" in out


# ---- 9. --model help lists the models ---------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_model_help_lists_the_registry(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    option = help_text[help_text.index("--model MODEL model name"):]
    option = option[:option.index(" --", 2)]  # up to the next option
    for name in ("sasrec", "unisrec", "vqrec", "missrec", "recformer"):  # every shipped model, written out here
        assert re.search(rf"\b{name}\b", option), f"{name} missing from the --model help: {option!r}"
