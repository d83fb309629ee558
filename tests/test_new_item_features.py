"""Brand-new items get feature-table rows from the encoder that made each table (MISSRec on image features).

A tiny synthetic catalogue with images drawn here, image features from ``textrec encode --images`` (the embedded
EfficientNet-Lite0, and a tiny random CLIP folder built offline by ``test_images``), a feature table of unknown
origin (as UniSRec's ``feat1CLS`` ships with a dataset), and MISSRec runs of one epoch on them.
"""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from test_images import clip_dir, draw  # noqa: F401 -- clip_dir is a fixture used here
from textrec.cli import main
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.text.encoders import HashingEncoder

pytest.importorskip("PIL.Image")

N_DRAWN = 20  # items 1..20 have an image; the last 4 none
TINY = ["model.hidden_size=16", "model.n_heads=2", "model.inner_size=16", "train.epochs=1", "train.batch_size=128",
        "train.device=cpu", "train.num_threads=1"]
IMAGE_TABLE = "efficientnet-lite0"


@pytest.fixture(scope="module")
def world():
    return make_domain("tools", WorldSpec(n_items=24, n_users=60, min_len=5, max_len=8), seed=1)


@pytest.fixture(scope="module")
def data(tmp_path_factory, world):
    """A dataset with a feat1CLS table of unknown origin and an EfficientNet-Lite0 image table made by the CLI."""
    root = tmp_path_factory.mktemp("feat")
    text = np.zeros((world.n_items + 1, 32), dtype=np.float32)
    text[1:] = HashingEncoder(32).encode(world.item_texts)
    world.features["feat1CLS"] = text
    path = world.save(root / "data")
    for i, key in enumerate(world.item_keys[:N_DRAWN]):
        draw(root / "images" / f"{key}.png", seed=i)
    assert main(["encode", str(path), "--images", str(root / "images"), "--device", "cpu", "--json"]) == 0
    return path


def _train(data, out, *extra):
    assert main(["train", str(data), "--model", "missrec", "--out", str(out), "--quiet", *TINY, *extra]) == 0
    return out


@pytest.fixture(scope="module")
def image_run(data, tmp_path_factory):
    """Image only, inductive: an item is scored from its image row alone."""
    return _train(data, tmp_path_factory.mktemp("runs") / "image", 'model.text_feature=""',
                  f"model.image_feature={IMAGE_TABLE}", f'data.features=["{IMAGE_TABLE}"]', "model.mode=inductive")


@pytest.fixture(scope="module")
def mixed_run(data, tmp_path_factory):
    """Text from the unknown-origin feat1CLS, image from EfficientNet-Lite0, transductive (the default)."""
    return _train(data, tmp_path_factory.mktemp("runs") / "mixed", "model.text_feature=feat1CLS",
                  f"model.image_feature={IMAGE_TABLE}", f'data.features=["feat1CLS","{IMAGE_TABLE}"]')


def _recommend(capsys, run, new_file, history, k=100):
    capsys.readouterr()
    code = main(["recommend", str(run), "--items", ",".join(history), "--new-items", str(new_file), "-k", str(k),
                 "--device", "cpu", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out), captured.err


def _image_of(data, key):
    return data.parent / "images" / f"{key}.png"


def _grown(run, new_file):
    from textrec.serve.catalogue import grow_catalogue, read_new_item_table
    from textrec.train.run import load_run

    return grow_catalogue(load_run(run, device="cpu"), read_new_item_table(new_file))


def test_new_item_image_row_is_what_encode_gives_it(data, world, image_run, tmp_path, capsys):
    from textrec.vision.encode import encode_images
    from textrec.vision.encoders import EfficientNetLiteEncoder

    twin_key = world.item_keys[3]  # item id 4
    (tmp_path / "pics").mkdir()
    shutil.copy(_image_of(data, twin_key), tmp_path / "pics" / "twin.png")
    draw(tmp_path / "pics" / "fresh.png", seed=77, size=(120, 90))
    new = tmp_path / "new.csv"  # image paths relative to the file's folder; TWIN has no text (image-only model)
    new.write_text("item,text,image\nTWIN,,pics/twin.png\nFRESH,A fresh thing,pics/fresh.png\n")
    grown, reports = _grown(image_run, new)
    table = grown.inputs.features[IMAGE_TABLE]
    n = world.n_items
    assert bool(table.present[n + 1]) and bool(table.present[n + 2])
    written = np.load(data / "features" / f"{IMAGE_TABLE}.npy")  # what `textrec encode --images` wrote
    np.testing.assert_allclose(table.values[n + 1].numpy(), written[4], rtol=1e-5, atol=1e-5)
    alone = encode_images(EfficientNetLiteEncoder(device="cpu"), [tmp_path / "pics" / "fresh.png"]).vectors[0]
    np.testing.assert_allclose(table.values[n + 2].numpy(), alone, rtol=1e-5, atol=1e-5)
    assert np.abs(alone).sum() > 0 and not np.allclose(alone, written[4])
    (report,) = reports
    assert report.table == IMAGE_TABLE and report.encoded == ["TWIN", "FRESH"] and not report.missing and not report.unreadable
    # end to end: the twin of a catalogue item scores exactly as that item (inductive: its image row is all it has)
    out, err = _recommend(capsys, image_run, new, world.item_keys[:2])
    scores = {r["item"]: r["score"] for r in out["recommendations"]}
    assert scores["TWIN"] == pytest.approx(scores[twin_key], abs=1e-5)
    assert out["new_item_features"][0]["encoded"] == 2
    assert f"feature table '{IMAGE_TABLE}': 2 of 2 new item(s) encoded from their images" in err


def test_changing_the_image_changes_the_score(data, world, image_run, tmp_path, capsys):
    new = tmp_path / "new.csv"
    new.write_text("item,text,image\nNEW,A new thing,a.png\n")
    history = world.item_keys[5:8]
    score = lambda out: out["new_items"][0]["score"]  # noqa: E731
    draw(tmp_path / "a.png", seed=100)
    first, _ = _recommend(capsys, image_run, new, history)
    again, _ = _recommend(capsys, image_run, new, history)
    assert score(first) == score(again)  # the same image, the same catalogue, the same score
    draw(tmp_path / "a.png", seed=101)
    other, _ = _recommend(capsys, image_run, new, history)
    assert abs(score(other) - score(first)) > 1e-4
    new.write_text("item,text\nNEW,A new thing\n")  # no image at all: nothing to score it by
    none, err = _recommend(capsys, image_run, new, history)
    assert score(none) == pytest.approx(-1.0) and "1 masked as absent (1 missing, 0 unreadable): NEW (no image given)" in err


def test_a_new_image_gets_the_nearest_trained_interest_and_nothing_is_reclustered(data, world, image_run, tmp_path, monkeypatch):
    import faiss
    import torch

    from textrec.train.run import load_run

    draw(tmp_path / "a.png", seed=100)
    new = tmp_path / "new.csv"
    new.write_text("item,text,image\nNEW,A new thing,a.png\n")  # one more image row: K = ceil(rows / 2) would grow
    trained = load_run(image_run, device="cpu").model
    monkeypatch.setattr(faiss, "Kmeans", lambda *a, **kw: pytest.fail("k-means ran while a new item was added"))
    grown = _grown(image_run, new)[0].model
    n, k = world.n_items, int(trained.interest_count)
    assert int(grown.interest_count) == k and torch.equal(grown.interest_centroids, trained.interest_centroids)
    assert torch.equal(grown.interest_of_image[: n + 1], trained.interest_of_image)
    with torch.no_grad():
        row = trained.adaptors["image"](grown.feature_image[n + 1 :])  # (1, D) under the trained adaptor
    assert grown.interest_of_image[n + 1 :].tolist() == (torch.cdist(row, trained.interest_centroids[1 : k + 1]).argmin(1) + 1).tolist()
    history = torch.tensor([[6, 7, 8]])
    with torch.no_grad():
        before = trained.score_items(trained.sequence(history, torch.tensor([3])).seq, trained.item_embeddings())
        after = grown.score_items(grown.sequence(history, torch.tensor([3])).seq, grown.item_embeddings())
    torch.testing.assert_close(after[:, : n + 1], before)  # the catalogue's items score as in the trained run


def test_missing_and_unreadable_images_are_masked_and_counted(data, world, mixed_run, tmp_path, capsys):
    draw(tmp_path / "ok.png", seed=5)
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (tmp_path / "empty.png").write_bytes(b"")
    new = tmp_path / "new.jsonl"
    rows = [{"item": "OK", "text": "ok", "image": "ok.png"}, {"item": "GONE", "text": "gone", "image": "gone.png"},
            {"item": "BAD", "text": "bad", "image": "bad.jpg"}, {"item": "EMPTY", "text": "empty", "image": "empty.png"},
            {"item": "URL", "text": "url", "image": "https://example.com/x.jpg"}, {"item": "NONE", "text": "none"}]
    new.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out, err = _recommend(capsys, mixed_run, new, world.item_keys[:2])
    (image,) = [r for r in out["new_item_features"] if r["table"] == IMAGE_TABLE]
    assert image["encoded"] == 1 and set(image["missing"]) == {"GONE", "URL", "NONE"}
    assert set(image["unreadable"]) == {"BAD", "EMPTY"}
    assert "file not found" in image["missing"]["GONE"] and "URL" in image["missing"]["URL"]
    assert "5 masked as absent (3 missing, 2 unreadable)" in err
    assert all(n["rank"] for n in out["new_items"])  # every new item is still a candidate
    grown, _ = _grown(mixed_run, new)
    present = grown.inputs.features[IMAGE_TABLE].present[world.n_items + 1 :]
    values = grown.inputs.features[IMAGE_TABLE].values[world.n_items + 1 :]
    assert present.tolist() == [True, False, False, False, False, False]
    assert float(values[1:].abs().sum()) == 0.0 and float(values[0].abs().sum()) > 0


def test_a_table_of_unknown_origin_stays_masked_with_a_note(data, world, mixed_run, tmp_path, capsys):
    draw(tmp_path / "x.png", seed=9)
    new = tmp_path / "new.csv"
    new.write_text("item,text,image\nN1,One,x.png\nN2,Two,x.png\n")
    out, err = _recommend(capsys, mixed_run, new, world.item_keys[:2])
    notes = [line for line in err.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "'feat1CLS'" in notes[0] and "masked as absent" in notes[0] and "2 new item(s)" in notes[0]
    assert IMAGE_TABLE not in notes[0]
    origins = {r["table"]: (r["origin"], r["encoded"]) for r in out["new_item_features"]}
    assert origins["feat1CLS"] == (None, 0) and origins[IMAGE_TABLE][1] == 2
    grown, _ = _grown(mixed_run, new)
    text = grown.inputs.features["feat1CLS"]
    assert not text.present[world.n_items + 1 :].any() and float(text.values[world.n_items + 1 :].abs().sum()) == 0.0
    assert grown.inputs.features[IMAGE_TABLE].present[world.n_items + 1 :].all()
    scores = {r["item"]: r["score"] for r in out["recommendations"]}
    assert all(math.isfinite(scores[k]) for k in ("N1", "N2"))


def test_clip_tables_get_the_new_items_text_and_image_and_a_gone_folder_is_one_line(data, world, clip_dir, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "clip"
    shutil.copytree(clip_dir, folder)
    assert main(["encode", str(data), "--images", str(data.parent / "images"), "--encoder", str(folder), "--name", "tiny",
                 "--device", "cpu", "--json"]) == 0
    run = _train(data, tmp_path / "run", "model.text_feature=tiny-text", "model.image_feature=tiny-image",
                 'data.features=["tiny-text","tiny-image"]', "model.mode=inductive")
    twin_key = world.item_keys[2]  # item id 3: its text and a copy of its image
    shutil.copy(_image_of(data, twin_key), tmp_path / "twin.png")
    new = tmp_path / "new.csv"
    new.write_text(f'item,text,image\nTWIN,"{world.item_texts[2]}",twin.png\nWORDS,"{world.item_texts[5]}",\n')
    grown, reports = _grown(run, new)
    n = world.n_items
    for name in ("tiny-text", "tiny-image"):
        written = np.load(data / "features" / f"{name}.npy")
        np.testing.assert_allclose(grown.inputs.features[name].values[n + 1].numpy(), written[3], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grown.inputs.features["tiny-text"].values[n + 2].numpy(),
                               np.load(data / "features" / "tiny-text.npy")[6], rtol=1e-4, atol=1e-5)
    assert grown.inputs.features["tiny-image"].present[n + 1 :].tolist() == [True, False]
    assert {r.table: len(r.encoded) for r in reports} == {"tiny-text": 2, "tiny-image": 1}
    out, _ = _recommend(capsys, run, new, world.item_keys[:2])
    scores = {r["item"]: r["score"] for r in out["recommendations"]}
    assert scores["TWIN"] == pytest.approx(scores[twin_key], abs=1e-4)
    folder.rename(tmp_path / "moved")
    capsys.readouterr()
    assert main(["recommend", str(run), "--items", world.item_keys[0], "--new-items", str(new), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[-1].startswith("textrec: error:") and "'tiny-" in err[-1] and str(folder) in err[-1] and "is gone" in err[-1], err


def test_the_image_column_is_a_path_not_an_attribute(tmp_path):
    from textrec.errors import DataError
    from textrec.serve.catalogue import read_new_item_table

    (tmp_path / "sub").mkdir()
    new = tmp_path / "sub" / "new.csv"
    new.write_text(f"item,title,image\nA,Red hammer,pics/a.png\nB,,{tmp_path / 'b.png'}\nC,Saw,\n")
    items = read_new_item_table(new)
    assert items.attributes == [{"title": "Red hammer"}, {}, {"title": "Saw"}]
    assert items.images == [str(tmp_path / "sub" / "pics" / "a.png"), str(tmp_path / "b.png"), ""]
    jsonl = tmp_path / "sub" / "new.jsonl"
    jsonl.write_text('{"item": "A", "image": "a.png"}\n{"item": "B", "image": "https://example.com/b.jpg", "brand": "X"}\n')
    items = read_new_item_table(jsonl)
    assert items.images == [str(tmp_path / "sub" / "a.png"), "https://example.com/b.jpg"]
    assert items.texts == ["", ""] and items.attributes == [{}, {"brand": "X"}]
    jsonl.write_text('{"item": "A", "image": ["a.png", "b.png"]}\n')
    with pytest.raises(DataError, match=f"{jsonl}:1: 'image' must be one path"):
        read_new_item_table(jsonl)
    new.write_text("item,image\nA,\n")
    with pytest.raises(DataError, match="neither a text nor an attribute nor an image"):
        read_new_item_table(new)


def test_recommend_help_describes_the_new_items_file(capsys):
    with pytest.raises(SystemExit):
        main(["recommend", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "text column and/or attribute columns" in shown and "image (a path relative to FILE's folder)" in shown
    assert "JSON lines" in shown
