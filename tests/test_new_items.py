"""Brand-new items, added by text to a trained run without retraining, are recommended (VQ-Rec, UniSRec)."""

from __future__ import annotations

import json
import re

import pytest

from doubles import cli_json
from textrec.cli import main
from textrec.data.dataset import Dataset
from textrec.data.synthetic import COLORS, WorldSpec, make_domain
from textrec.errors import DataError
from textrec.serve.catalogue import read_new_items

SMALL = ["model.hidden_size=32", "model.inner_size=32", "model.hidden_dropout=0.1", "model.attn_dropout=0.1",
         "train.batch_size=256", "train.lr=0.003", "train.epochs=12", "train.patience=12", "train.device=cpu"]


@pytest.fixture(scope="module")
def garden(tmp_path_factory):
    path = tmp_path_factory.mktemp("new") / "garden"
    make_domain("garden", WorldSpec(n_items=120, n_users=500, noise=0.05), seed=4).save(path)
    assert main(["encode", str(path), "--encoder", "hashing-64", "--json"]) == 0
    assert main(["quantize", str(path), "--codebooks", "8", "--codebook-size", "16", "--json"]) == 0
    return path


@pytest.mark.parametrize("model", ["vqrec", "unisrec"])
def test_new_item_is_recommended_without_retraining(garden, tmp_path, capsys, model):
    run = tmp_path / model
    assert main(["train", str(garden), "--model", model, "--out", str(run), "--quiet", *SMALL]) == 0
    capsys.readouterr()

    ds = Dataset.load(garden)
    # a history of vintage items ending in red: the rule says the next item is vintage and orange
    vintage_red = [k for k, a in zip(ds.item_keys, ds.item_attributes) if "vintage" in a["title"] and " red " in f" {a['title']} "]
    history = vintage_red[:1]
    assert history, "the synthetic world should contain a vintage red item"
    new = tmp_path / "new.csv"
    new.write_text("item,text\nNEW-1,Zorblat orange bamboo birdhouse, vintage style. Garden Outdoor Living. Zorblat.\n"
                   "NEW-2,Zorblat blue glass rake, modern style. Garden Outdoor Living. Zorblat.\n")
    assert main(["recommend", str(run), "--items", ",".join(history), "--new-items", str(new), "-k", "10", "--json"]) == 0
    recs = [r["item"] for r in json.loads(capsys.readouterr().out)["recommendations"]]
    assert len(recs) == 10 and all(isinstance(r, str) for r in recs)
    assert COLORS[(COLORS.index("red") + 1) % len(COLORS)] == "orange"
    # the whole ranking: NEW-1 matches the rule (vintage, next colour after red), NEW-2 does not
    assert main(["recommend", str(run), "--items", ",".join(history), "--new-items", str(new), "-k", "122", "--json"]) == 0
    recs = [r["item"] for r in json.loads(capsys.readouterr().out)["recommendations"]]
    assert recs.index("NEW-1") < recs.index("NEW-2")
    # UniSRec's continuous text vectors carry the rule to the new item; VQ-Rec sees the text only through 8
    # coarse codes of a 64-d hashing encoder here, so it is asked for the top half only
    assert recs.index("NEW-1") < (10 if model == "unisrec" else 61)


@pytest.mark.parametrize("model", ["vqrec", "unisrec"])
def test_new_item_scores_exactly_as_the_same_text_in_the_catalogue(garden, tmp_path, capsys, model):
    """A catalogue item re-added by its text under a new key gets exactly the original's score."""
    run = tmp_path / model
    assert main(["train", str(garden), "--model", model, "--out", str(run), "--quiet", *SMALL[:4], "train.epochs=2"]) == 0
    capsys.readouterr()
    assert main(["recommend", str(run), "--items", "garden-00001,garden-00002", "-k", "3", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["recommendations"]
    new = tmp_path / "copies.csv"
    new.write_text("item,text\n" + "".join(f'COPY-{r["item"]},"{r["text"]}"\n' for r in top))
    assert main(["recommend", str(run), "--items", "garden-00001,garden-00002", "--new-items", str(new), "-k", "6",
                 "--json"]) == 0
    scores = {r["item"]: r["score"] for r in json.loads(capsys.readouterr().out)["recommendations"]}
    assert len(scores) == 6
    for r in top:
        assert scores[f"COPY-{r['item']}"] == pytest.approx(scores[r["item"]], abs=1e-5)


def test_sasrec_refuses_new_items(garden, tmp_path, capsys):
    run = tmp_path / "sasrec"
    assert main(["train", str(garden), "--model", "sasrec", "--out", str(run), "--quiet", *SMALL[:4], "train.epochs=1"]) == 0
    new = tmp_path / "new.csv"
    new.write_text("item,text\nNEW-1,something\n")
    capsys.readouterr()
    assert main(["recommend", str(run), "--items", "garden-00001", "--new-items", str(new)]) == 2
    assert "cannot score new items" in capsys.readouterr().err


def test_a_text_model_does_not_read_the_image_column(garden, tmp_path, capsys):
    run = tmp_path / "unisrec"
    assert main(["train", str(garden), "--model", "unisrec", "--out", str(run), "--quiet", *SMALL[:4], "train.epochs=1"]) == 0
    new = tmp_path / "new.csv"
    new.write_text("item,text,image\nNEW-1,Zorblat orange bamboo rake,pics/rake.png\n")
    capsys.readouterr()
    assert main(["recommend", str(run), "--items", "garden-00001", "--new-items", str(new), "-k", "122", "--json"]) == 0
    captured = capsys.readouterr()
    recs = {r["item"]: r["text"] for r in json.loads(captured.out)["recommendations"]}
    assert recs["NEW-1"] == "Zorblat orange bamboo rake"  # the path is neither text nor attribute
    assert "note: unisrec reads no image feature table here, so the image column" in captured.err
    new.write_text("item,image\nNEW-2,pics/rake.png\n")  # an image alone is nothing to a text model
    assert main(["recommend", str(run), "--items", "garden-00001", "--new-items", str(new)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "new item 'NEW-2' has neither a text nor an attribute (unisrec reads item texts)" in err[0], err


TINY = ["model.hidden_size=16", "model.inner_size=16", "train.epochs=1", "train.batch_size=64", "train.device=cpu"]


def test_new_items_with_byte_order_mark(tmp_path):
    path = tmp_path / "new.csv"
    path.write_text("item,text\nN1,A new pen\nN2,A new ink\n", encoding="utf-8-sig")
    assert read_new_items(path) == (["N1", "N2"], ["A new pen", "A new ink"])


# ---- a duplicate key in --new-items -------------------------------------------------------------------
def test_new_items_duplicate_key(tmp_path):
    path = tmp_path / "new.csv"
    path.write_text('item,text\nN1,A new pen\nN2,"A new\nink"\nN1,Another pen\n', encoding="utf-8")
    with pytest.raises(DataError, match=re.escape(f"{path}:5: duplicate item 'N1'")):
        read_new_items(path)


# ---- recommend --new-items says where each new item ranks -------------------------------------------------
def test_recommend_reports_the_rank_of_new_items(world_dir, tmp_path, capsys):
    assert main(["encode", str(world_dir), "--encoder", "hashing-32", "--json"]) == 0
    run = tmp_path / "run"
    assert main(["train", str(world_dir), "--model", "unisrec", "--out", str(run), "--quiet", *TINY]) == 0
    new = tmp_path / "new.csv"
    new.write_text("item,text\nN1,Zorblat orange hammer. Tools.\nN2,Zorblat blue saw, vintage. Tools.\n")
    capsys.readouterr()
    argv = ["recommend", str(run), "--items", "tools-00001,tools-00002", "--new-items", str(new)]
    full = cli_json(capsys, [*argv, "-k", "100", "--json"])
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
