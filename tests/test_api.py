"""The library calls under ``textrec evaluate`` / ``textrec recommend`` (``textrec.api``), reading a run's data
section from ``key=value`` overrides, choosing the item inputs made like the run's, read-only loading, and the
``textrec`` logger."""

from __future__ import annotations

import json
import logging
import shutil
import warnings

import pytest

import textrec
from doubles import CLI_CPU, cli_json
from textrec.cli import main
from textrec.data.dataset import Dataset
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import ConfigError, NotFoundError, TextrecError
from textrec.quant.codes import quantize_dataset, quantize_datasets

CPU = CLI_CPU
SMALL = ["model.hidden_size=32", "model.inner_size=32", "train.batch_size=256", "train.epochs=1", *CPU]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _json(capsys, argv: list[str]) -> dict:
    return cli_json(capsys, [*argv, "--json"])


def _fingerprint(folder) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sasrec_run(tiny_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("api") / "sasrec"
    assert main(["train", str(tiny_dir), "--model", "sasrec", "--out", str(run), *SMALL, "train.epochs=2"]) == 0
    return run


# ---- evaluate_run / recommend give the CLI's JSON --------------------------------------------------------------


def test_evaluate_run_is_the_cli_json(sasrec_run, capsys):
    cli = _json(capsys, ["evaluate", str(sasrec_run), "--split", "valid", "--device", "cpu"])
    res = textrec.evaluate_run(str(sasrec_run), split="valid", device="cpu")
    lib = res.to_dict()
    assert lib.pop("seconds") >= 0 and cli.pop("seconds") >= 0
    assert lib == cli and list(lib) == list(cli)
    assert lib["ndcg@10"] == res.metrics["ndcg@10"] and res.users == lib["users"] > 0
    assert textrec.evaluate_run(sasrec_run, split="test", device="cpu").metrics != res.metrics  # the split is read
    with pytest.raises(TextrecError, match="split"):
        textrec.evaluate_run(sasrec_run, split="train")


def test_evaluate_run_reports_held_out_groups(tiny_dir, tmp_path, capsys):
    assert main(["holdout", str(tiny_dir), "--fraction", "0.2", "--out", str(tmp_path / "cold"), "--json"]) == 0
    uni = tmp_path / "uni"
    for side in ("train", "eval"):
        assert main(["encode", str(tmp_path / "cold" / side), "--encoder", "hashing-64", "--json"]) == 0
    assert main(["train", str(tmp_path / "cold" / "train"), "--model", "unisrec", "--out", str(uni), *SMALL]) == 0
    cli = _json(capsys, ["evaluate", str(uni), "--data", str(tmp_path / "cold" / "eval")])
    lib = textrec.evaluate_run(uni, data=tmp_path / "cold" / "eval").to_dict()
    assert set(lib["held_out"]) >= {"users", "recall@10", "chance_recall@10"} and lib["held_out"]["users"] > 0
    assert lib["held_out"]["users"] + lib["seen"]["users"] == lib["users"]
    assert {k: v for k, v in lib.items() if k != "seconds"} == {k: v for k, v in cli.items() if k != "seconds"}


def test_recommend_is_the_cli_json(sasrec_run, tiny_world, capsys):
    user = tiny_world.user_keys[3]
    cli = _json(capsys, ["recommend", str(sasrec_run), "--user", user, "-k", "7"])
    res = textrec.recommend(str(sasrec_run), user=user, k=7)
    assert res.to_dict() == cli and len(res.recommendations) == 7
    assert [r.item_key for r in res.recommendations] == [r["item"] for r in cli["recommendations"]]
    history = [h["item"] for h in cli["history"]][-4:]
    by_items = _json(capsys, ["recommend", str(sasrec_run), "--items", ",".join(history), "-k", "3"])
    assert textrec.recommend(sasrec_run, history=history, k=3).to_dict() == by_items
    # a loaded run is accepted as it is (loaded once, asked many times)
    loaded = textrec.load_run(sasrec_run)
    assert textrec.recommend(loaded, history=history, k=3).to_dict()["recommendations"] == by_items["recommendations"]
    for bad in ({}, {"user": user, "history": history}):
        with pytest.raises(TextrecError, match="exactly one"):
            textrec.recommend(sasrec_run, **bad)


def test_recommend_with_new_items_is_the_cli_json(tiny_dir, tmp_path, capsys, caplog):
    data = tmp_path / "tools"
    shutil.copytree(tiny_dir, data)
    assert main(["encode", str(data), "--encoder", "hashing-64", "--json"]) == 0
    run = tmp_path / "uni"
    assert main(["train", str(data), "--model", "unisrec", "--out", str(run), *SMALL]) == 0
    new = tmp_path / "new.csv"
    new.write_text("item,title,brand\nN1,A red hammer,Acme\nN2,A blue saw,Acme\n")
    user = Dataset.load(data).user_keys[0]
    cli = _json(capsys, ["recommend", str(run), "--user", user, "--new-items", str(new), "-k", "70", "--include-history"])
    with caplog.at_level(logging.INFO, logger="textrec"):
        res = textrec.recommend(run, user=user, new_items=new, k=70, include_history=True)
    assert res.to_dict() == cli and {n["item"] for n in res.new_items} == {"N1", "N2"}
    assert res.candidates == cli["candidates"] == 62
    assert "added 2 new item(s) to the catalogue from their attributes" in caplog.text  # logged, not printed


# ---- data overrides and the choice of matching inputs -----------------------------------------------------------


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """VQ-Rec and UniSRec pre-trained on two encoded, jointly quantised sources; a bare third domain beside."""
    root = tmp_path_factory.mktemp("choice")
    sources = []
    for name, n_items, n_users, seed in (("tools", 30, 80, 0), ("garden", 36, 70, 3), ("kitchen", 28, 60, 5)):
        make_domain(name, WorldSpec(n_items=n_items, n_users=n_users, min_len=5, max_len=8), seed=seed).save(root / name)
        if name != "kitchen":
            sources.append(root / name)
            assert main(["encode", str(root / name), "--encoder", "hashing-64", "--json"]) == 0
    quantize_datasets(sources, n_codebooks=4, codebook_size=16, out_index=root / "joint.index", name="joint", opq_iterations=3)
    runs = {}
    for model, extra in (("vqrec", ["data.codes=joint"]), ("unisrec", [])):
        runs[model] = root / f"{model}-pt"
        assert main(["pretrain", *map(str, sources), "--model", model, "--out", str(runs[model]), *extra, *SMALL]) == 0
    return root, runs


def _kitchen_with_two_codes(root, tmp_path):
    """Kitchen encoded with the run's encoder and coded twice: its own quantiser, and the run's (another name)."""
    kitchen = tmp_path / "kitchen"
    shutil.copytree(root / "kitchen", kitchen)
    assert main(["encode", str(kitchen), "--encoder", "hashing-64", "--json"]) == 0
    quantize_dataset(kitchen, n_codebooks=4, codebook_size=16, opq_iterations=3, name="own")
    quantize_dataset(kitchen, embeddings="hashing-64-mean", quantizer=root / "vqrec-pt" / "quantizer.index", name="reused")
    return kitchen


def test_evaluate_and_recommend_data_pick_the_codes_of_the_run_s_quantiser(pretrained, tmp_path, capsys):
    root, runs = pretrained
    kitchen = _kitchen_with_two_codes(root, tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(runs["vqrec"]), "--data", str(kitchen), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert out["zero_shot"] is True and "reading 'reused', made with the run's quantiser" in captured.err
    # the same as naming them; naming the other one is what the run refuses (another quantiser)
    named = _json(capsys, ["evaluate", str(runs["vqrec"]), "--data", str(kitchen), "data.codes=reused"])
    assert named["ndcg@10"] == out["ndcg@10"]
    assert main(["evaluate", str(runs["vqrec"]), "--data", str(kitchen), "data.codes=own"]) == 2
    assert "item codes come from" in capsys.readouterr().err
    user = Dataset.load(kitchen).user_keys[0]
    recs = _json(capsys, ["recommend", str(runs["vqrec"]), "--data", str(kitchen), "--user", user, "-k", "3"])
    assert len(recs["recommendations"]) == 3
    lib = textrec.recommend(runs["vqrec"], user=user, k=3, data=kitchen)
    assert lib.to_dict()["recommendations"] == recs["recommendations"]


def test_finetune_picks_the_codes_of_the_run_s_quantiser(pretrained, tmp_path, capsys):
    root, runs = pretrained
    kitchen = _kitchen_with_two_codes(root, tmp_path)
    ft = tmp_path / "ft"
    capsys.readouterr()
    assert main(["finetune", str(kitchen), "--init", str(runs["vqrec"]), "--out", str(ft), *CPU, "train.epochs=1"]) == 0
    assert "reading 'reused', made with the run's quantiser" not in capsys.readouterr().err  # INFO: hidden by --quiet
    config = json.loads((ft / "config.json").read_text())
    assert config["item_inputs"]["codes"] == ["reused"] and config["data"]["codes"] == "reused"
    # the user's choice wins
    assert main(["finetune", str(kitchen), "--init", str(runs["vqrec"]), "--out", str(tmp_path / "ft2"), *CPU,
                 "train.epochs=1", "data.codes=own"]) == 0
    assert json.loads((tmp_path / "ft2" / "config.json").read_text())["item_inputs"]["codes"] == ["own"]


def test_zero_shot_picks_the_embeddings_of_the_run_s_encoder(pretrained, tmp_path, capsys):
    root, runs = pretrained
    kitchen = tmp_path / "kitchen"
    shutil.copytree(root / "kitchen", kitchen)
    for enc, name in (("hashing-32", "h32"), ("hashing-64", "h64")):
        assert main(["encode", str(kitchen), "--encoder", enc, "--name", name, "--json"]) == 0
    before = _fingerprint(kitchen)
    capsys.readouterr()
    assert main(["evaluate", str(runs["unisrec"]), "--data", str(kitchen), "--json"]) == 0
    captured = capsys.readouterr()
    assert "reading 'h64', made with the run's encoder" in captured.err
    assert json.loads(captured.out)["zero_shot"] is True
    assert _fingerprint(kitchen) == before  # read, not written


def test_only_data_settings_are_overridden_when_reading_a_run(sasrec_run, capsys):
    assert main(["evaluate", str(sasrec_run), "train.lr=0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "only data.* settings" in err[0], err
    assert main(["recommend", str(sasrec_run), "--user", "x", "data.nope=1"]) == 2
    assert "data.nope" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="only data"):
        textrec.evaluate_run(sasrec_run, overrides=["model.hidden_size=8"])
    with pytest.raises(TextrecError, match="loading a run"):
        textrec.evaluate_run(textrec.load_run(sasrec_run), overrides=["data.codes=x"])


def test_loading_a_pretrained_run_on_a_bare_dataset_writes_nothing(pretrained, tmp_path):
    root, runs = pretrained
    kitchen = tmp_path / "kitchen"
    shutil.copytree(root / "kitchen", kitchen)
    before = _fingerprint(kitchen)
    for model in ("vqrec", "unisrec"):
        with pytest.raises(NotFoundError):
            textrec.load_run(runs[model], kitchen)
        assert _fingerprint(kitchen) == before
    # the explicit step makes what the run reads; then the run loads
    from textrec.train.newcatalogue import complete_run_catalogue

    complete_run_catalogue(runs["vqrec"], kitchen)
    assert (kitchen / "codes" / "joint.npy").exists() and textrec.load_run(runs["vqrec"], kitchen).zero_shot


# ---- logging ---------------------------------------------------------------------------------------------------


def test_the_library_logs_and_the_cli_shows_it(tiny_dir, tmp_path, capsys, caplog):
    from textrec.config import load_config
    from textrec.train.run import train_run

    cfg = load_config(None, ["model.hidden_size=16", "model.inner_size=16", "train.epochs=2", "train.device=cpu",
                             "train.num_threads=1", "eval.ks=[10]"], model="sasrec")
    capsys.readouterr()
    with caplog.at_level(logging.INFO, logger="textrec"):
        train_run(tiny_dir, cfg, tmp_path / "lib")
    assert not capsys.readouterr().err.strip()  # the library prints nothing ...
    assert "training sasrec on" in caplog.text and "epoch   2" in caplog.text  # ... it logs
    args = ["train", str(tiny_dir), "--model", "sasrec", "model.hidden_size=16", "model.inner_size=16", "train.epochs=2",
            "train.device=cpu", "train.num_threads=1", "eval.ks=[10]", "--overwrite"]
    assert main([*args, "--out", str(tmp_path / "cli")]) == 0
    err = capsys.readouterr().err
    assert "training sasrec on" in err and "epoch   2" in err
    assert main([*args, "--out", str(tmp_path / "cli"), "--quiet"]) == 0
    quiet = capsys.readouterr().err
    assert "epoch   1" not in quiet and "training sasrec" not in quiet and "best epoch 2 of 2" in quiet
    assert logging.getLogger("textrec").handlers == []  # the CLI's handler is gone after the command


def test_input_problems_are_warnings_and_the_cli_shows_them_as_one_line(tmp_path, capsys):
    from test_unisrec_reader import _write_atomic
    from textrec.data.formats import read_dataset
    from textrec.data.formats.common import PrepareOptions
    from textrec.log import TextrecWarning

    raw = tmp_path / "raw"
    raw.mkdir()
    _write_atomic(raw, {u: [(u + j) % 12 for j in range(6)] for u in range(8)}, 12)
    (raw / "Toy.text").unlink()
    with pytest.warns(TextrecWarning, match="every item text is empty"):
        read_dataset(raw, "unisrec", PrepareOptions(drop_items_without_text=False))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the CLI shows its own warnings whatever the filters say
        assert main(["prepare", str(raw), "--format", "unisrec", "--out", str(tmp_path / "d"), "--keep-items-without-text"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if line.startswith("warning: ")] and "every item text is empty" in err[0], err
