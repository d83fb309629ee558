"""A pre-trained run taken to a bare dataset (prepared, nothing else): it carries its quantiser, encodes and codes
the new items as its own were, and ranks them zero-shot or fine-tunes on them with one command."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from doubles import CLI_CPU
from textrec.cli import main
from textrec.data.dataset import Dataset
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.quant.codes import (
    _file_sha1,
    load_item_codes,
    quantize_dataset,
    quantize_datasets,
)

CPU = CLI_CPU
SMALL = ["model.hidden_size=32", "model.inner_size=32", "train.batch_size=256", "train.epochs=1", *CPU]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """VQ-Rec and UniSRec pre-trained on two encoded, jointly quantised sources; the joint index then deleted."""
    root = tmp_path_factory.mktemp("newcat")
    for name, n_items, n_users, seed in (("tools", 30, 80, 0), ("garden", 36, 70, 3), ("kitchen", 28, 60, 5)):
        make_domain(name, WorldSpec(n_items=n_items, n_users=n_users, min_len=5, max_len=8), seed=seed).save(root / "bare" / name)
    sources = [root / "tools", root / "garden"]
    for src in sources:
        shutil.copytree(root / "bare" / src.name, src)
        assert main(["encode", str(src), "--encoder", "hashing-64", "--json"]) == 0
    index = root / "quant" / "joint.index"
    quantize_datasets(sources, n_codebooks=4, codebook_size=16, out_index=index, name="joint", opq_iterations=3)
    joint_sha1 = _file_sha1(index)
    runs = {}
    for model, extra in (("vqrec", ["data.codes=joint"]), ("unisrec", [])):
        runs[model] = root / f"{model}-pt"
        assert main(["pretrain", *map(str, sources), "--model", model, "--out", str(runs[model]), *extra, *SMALL]) == 0
    shutil.rmtree(root / "quant")  # the run alone must be enough from here on
    return root, runs, joint_sha1


def _bare(root, tmp_path, name="kitchen"):
    out = tmp_path / name
    shutil.copytree(root / "bare" / name, out)
    return out


def test_pretrained_vqrec_run_carries_its_quantiser_and_encoder(pretrained):
    _, runs, joint_sha1 = pretrained
    config = json.loads((runs["vqrec"] / "config.json").read_text())
    nc = config["new_catalogue"]
    assert nc["codes"] == "joint" and nc["embeddings"] == "hashing-64-mean" and nc["quantizer_sha1"] == joint_sha1
    assert nc["encoder"]["name"] == "hashing-64" and nc["encoder"]["pooling"] == "mean"
    assert _file_sha1(runs["vqrec"] / "quantizer.index") == joint_sha1
    uni = json.loads((runs["unisrec"] / "config.json").read_text())["new_catalogue"]
    assert uni["embeddings"] == "hashing-64-mean" and "quantizer_sha1" not in uni
    assert not (runs["unisrec"] / "quantizer.index").exists()


def test_vqrec_zero_shot_on_a_bare_dataset_codes_it_with_the_bundled_quantiser(pretrained, tmp_path, capsys):
    root, runs, joint_sha1 = pretrained
    kitchen = _bare(root, tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(runs["vqrec"]), "--data", str(kitchen), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["zero_shot"] is True and math.isfinite(out["ndcg@10"])
    assert "encoding its items with hashing-64" in captured.err and "quantiser" in captured.err
    codes, info = load_item_codes(kitchen, "joint")
    assert info["kind"] == "quantizer" and info["quantizer_sha1"] == joint_sha1
    # the same codes as coding the items by hand with the run's quantiser
    by_hand = quantize_dataset(kitchen, embeddings="hashing-64-mean", quantizer=runs["vqrec"] / "quantizer.index", name="by-hand")
    assert np.array_equal(np.load(by_hand.path), codes)
    # a second call finds everything made: nothing encoded again
    assert main(["evaluate", str(runs["vqrec"]), "--data", str(kitchen), "--json"]) == 0
    again = capsys.readouterr()
    assert "note:" not in again.err and json.loads(again.out)["ndcg@10"] == out["ndcg@10"]


def test_a_changed_bundled_quantiser_is_refused(pretrained, tmp_path, capsys):
    root, runs, _ = pretrained
    run = tmp_path / "run"
    shutil.copytree(runs["vqrec"], run)
    other = quantize_dataset(root / "tools", n_codebooks=4, codebook_size=16, opq_iterations=3, name="tools-own")
    shutil.copyfile(other.index_path, run / "quantizer.index")
    capsys.readouterr()
    assert main(["evaluate", str(run), "--data", str(_bare(root, tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "not the quantiser" in err and "sha1 differs" in err, err


def test_embeddings_of_another_encoder_under_the_run_s_name_are_refused(pretrained, tmp_path, capsys):
    root, runs, _ = pretrained
    kitchen = _bare(root, tmp_path)
    assert main(["encode", str(kitchen), "--encoder", "hashing-32", "--name", "hashing-64-mean", "--json"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(runs["vqrec"]), "--data", str(kitchen)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "comes from hashing-32" in err, err
    assert not (kitchen / "codes").exists() or not list((kitchen / "codes").glob("*.npy"))


def test_unisrec_zero_shot_and_finetune_from_a_bare_dataset(pretrained, tmp_path, capsys):
    root, runs, _ = pretrained
    kitchen = _bare(root, tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(runs["unisrec"]), "--data", str(kitchen), "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["zero_shot"] is True and "encoding its items with hashing-64" in captured.err
    assert (kitchen / "embeddings" / "hashing-64-mean.npy").exists()
    user = Dataset.load(kitchen).user_keys[0]
    assert main(["recommend", str(runs["unisrec"]), "--data", str(kitchen), "--user", user, "-k", "5", "--json"]) == 0
    recs = json.loads(capsys.readouterr().out)["recommendations"]
    assert len(recs) == 5 and all(r["item"].startswith("kitchen") for r in recs)
    fresh = tmp_path / "kitchen-2"
    shutil.copytree(root / "bare" / "kitchen", fresh)
    ft = tmp_path / "ft"
    assert main(["finetune", str(fresh), "--init", str(runs["unisrec"]), "--out", str(ft), "--mode", "inductive", *CPU,
                 "train.epochs=1"]) == 0
    assert json.loads((ft / "metrics.json").read_text())["test"]["ndcg@10"] >= 0


def test_vqrec_finetune_on_a_bare_dataset_reuses_the_index_set(pretrained, tmp_path, capsys):
    root, runs, joint_sha1 = pretrained
    kitchen = _bare(root, tmp_path)
    ft = tmp_path / "ft"
    capsys.readouterr()
    assert main(["finetune", str(kitchen), "--init", str(runs["vqrec"]), "--out", str(ft), *CPU, "train.epochs=1"]) == 0
    err = capsys.readouterr().err
    assert "reused index set" in err and "new index set" in err
    assert load_item_codes(kitchen, "joint")[1]["quantizer_sha1"] == joint_sha1
    assert json.loads((ft / "config.json").read_text())["item_inputs"]["codes"] == ["joint"]
