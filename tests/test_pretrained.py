"""Shipped checkpoints: a pre-training run packaged (no catalogue tensors, reduced precision only where the scores
allow it, checksums, a card, a size budget), listed by ``textrec pretrained`` and used by name, read-only."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from doubles import CLI_CPU, cli_json, one_line_error
from textrec.cli import main
from textrec.data.dataset import Dataset
from textrec.data.split import eval_examples
from textrec.data.synthetic import WorldSpec, make_domain
from textrec.errors import TextrecError
from textrec.io import checksummed_path
from textrec.models import model_class
from textrec.models.spec import score, spec_of
from textrec.pretrained import ENV_DIR, list_shipped, shipped_root
from textrec.pretrained.packaging import package
from textrec.quant.codes import _file_sha1, quantize_datasets
from textrec.quant.faiss_io import import_index
from textrec.quant.pq import ItemQuantizer
from textrec.runs import load_run, resolve_run

SMALL = ["model.hidden_size=32", "model.inner_size=32", "train.batch_size=256", "train.epochs=2", *CLI_CPU]
TERMS = "synthetic test data, no terms"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """VQ-Rec, UniSRec and MISSRec (text only) pre-trained on two encoded, jointly quantised synthetic sources."""
    root = tmp_path_factory.mktemp("shipped")
    sources = []
    for name, n_items, n_users, seed in (("tools", 30, 80, 0), ("garden", 36, 70, 3)):
        sources.append(make_domain(name, WorldSpec(n_items=n_items, n_users=n_users, min_len=5, max_len=8), seed=seed)
                       .save(root / name))
        assert main(["encode", str(sources[-1]), "--encoder", "hashing-64", "--json"]) == 0
    quantize_datasets(sources, n_codebooks=4, codebook_size=16, out_index=root / "joint.index", name="joint", opq_iterations=3)
    out = {}
    missrec = ["model.mode=inductive", "model.text_feature=embeddings", "model.image_feature="]  # the corpus recipe's
    for model, extra in (("vqrec", ["data.codes=joint"]), ("unisrec", []), ("missrec", missrec)):
        out[model] = root / f"{model}-pt"
        assert main(["pretrain", *map(str, sources), "--model", model, "--out", str(out[model]), *extra, *SMALL]) == 0
    return out


@pytest.fixture(scope="module")
def shipped(runs, tmp_path_factory):
    """Both runs packaged into a root of their own, which ``$TEXTREC_PRETRAINED_DIR`` names for the module."""
    root = tmp_path_factory.mktemp("root")
    made = {m: package(run, f"tiny-{m}", root, terms=TERMS) for m, run in runs.items()}
    mp = pytest.MonkeyPatch()
    mp.setenv(ENV_DIR, str(root))
    yield root, made
    mp.undo()


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    """A dataset freshly prepared from CSV files (nothing encoded or coded): another catalogue than the corpus."""
    folder = tmp_path_factory.mktemp("csv")
    world = make_domain("kitchen", WorldSpec(n_items=28, n_users=60, min_len=5, max_len=8), seed=5)
    with open(folder / "interactions.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "timestamp"])
        for u in range(world.n_users):
            w.writerows([world.user_keys[u], world.item_keys[i - 1], t] for t, i in enumerate(world.sequence(u)))
    with open(folder / "items.csv", "w", newline="") as f:
        csv.writer(f).writerows([["item", "text"], *zip(world.item_keys, world.item_texts)])
    out = folder / "mydata"
    assert main(["prepare", str(folder / "interactions.csv"), "--format", "csv", "--items", str(folder / "items.csv"),
                 "--k-core", "1", "--out", str(out), "--quiet"]) == 0
    return out


def _fresh(csv_data, tmp_path):
    out = tmp_path / "mydata"
    shutil.copytree(csv_data, out)
    return out


def _snapshot(folder):
    """Every entry under ``folder``: its kind, modification time and (files) bytes."""
    return {p.relative_to(folder): (p.is_dir(), p.stat().st_mtime_ns, None if p.is_dir() else p.read_bytes())
            for p in sorted(folder.rglob("*"))}


@torch.no_grad()
def _scores(run, data) -> torch.Tensor:
    """Every validation user's scores of every item of ``data``, by ``run`` loaded zero-shot."""
    from textrec.data.batching import SeqBatch

    loaded = load_run(run, data, "cpu")
    ex = eval_examples(loaded.dataset, "valid", loaded.cfg.data.max_seq_len)
    batch = SeqBatch(torch.as_tensor(ex.histories, dtype=torch.long), torch.as_tensor(ex.lengths, dtype=torch.long))
    return score(loaded.model, loaded.model.encode(batch).float(), loaded.model.item_embeddings().float()[1:])


# ---- packaging ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["vqrec", "unisrec", "missrec"])
def test_packaging_strips_the_catalogue_tensors_and_keeps_everything_else(runs, shipped, model):
    root, made = shipped
    folder = root / f"tiny-{model}"
    skip = spec_of(model_class(model)).catalogue_keys
    original = load_file(str(runs[model] / "model.safetensors"))
    assert any(k.startswith(skip) for k in original)  # there was something to strip
    kept = load_file(str(folder / "model.safetensors"))
    assert kept and not [k for k in kept if k.startswith(skip)]
    assert set(kept) == {k for k in original if not k.startswith(skip)}
    config = json.loads((folder / "config.json").read_text())
    text = json.dumps(config)
    assert str(runs[model].parent) not in text and "quantizer_source" not in text and "path" not in text  # no machine path
    assert config["shipped"]["name"] == f"tiny-{model}"
    assert (folder / "quantizer.index").is_file() == (model == "vqrec")
    if model == "vqrec":  # the quantiser's codebooks and rotation without the corpus's item codes stored in it
        mine, theirs = (ItemQuantizer.load(f / "quantizer.index") for f in (folder, runs[model]))
        assert len(import_index(runs[model] / "quantizer.index").codes) == 66
        assert not len(import_index(folder / "quantizer.index").codes)
        assert np.array_equal(mine.codebooks, theirs.codebooks) and np.array_equal(mine.rotation, theirs.rotation)
        assert config["new_catalogue"]["quantizer_sha1"] == _file_sha1(folder / "quantizer.index")
    card = json.loads((folder / "card.json").read_text())
    assert [d["name"] for d in card["corpus"]["datasets"]] == ["synthetic-tools", "synthetic-garden"]
    assert card["encoder"]["identity"] == "hashing-v1:64" and card["terms"] == TERMS
    assert card["validation"]["curve"][-1]["epoch"] == 2 and card["weights"]["not_shipped"]
    assert card["command"].startswith(f"textrec pretrain tools garden --model {model}")
    assert f"# tiny-{model}" in (folder / "CARD.md").read_text()
    umask = os.umask(0)
    os.umask(umask)
    assert {stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()} == {0o666 & ~umask}  # readable once installed


def test_half_precision_only_where_its_scores_match_float32(runs, shipped, tmp_path):
    root, made = shipped
    assert made["vqrec"].dtype == "float16" and made["vqrec"].score_gaps["float16"] <= 1e-3
    with safe_open(str(root / "tiny-vqrec" / "model.safetensors"), framework="pt") as f:
        assert f.get_tensor("code_emb.weight").dtype == torch.float16
    # weights a million times smaller (float16 underflows them; bfloat16 rounds to 8 bits): both move the scores
    # by more than 1e-3, so float32 ships
    small = tmp_path / "small"
    shutil.copytree(runs["unisrec"], small)
    state = {k: v * 1e-6 if v.is_floating_point() else v for k, v in load_file(str(small / "model.safetensors")).items()}
    with checksummed_path(small / "model.safetensors") as tmp:
        save_file(state, str(tmp))
    res = package(small, "small", tmp_path / "root", terms=TERMS)
    assert res.dtype == "float32" and set(res.score_gaps) == {"float16", "bfloat16"}
    assert min(res.score_gaps.values()) > 1e-3
    with safe_open(str(res.path / "model.safetensors"), framework="pt") as f:
        assert all(f.get_tensor(k).dtype in (torch.float32, torch.int64, torch.bool) for k in f.keys())
    assert json.loads((res.path / "card.json").read_text())["weights"]["dtype"] == "float32"


def test_the_size_budget_refuses_in_one_line_and_writes_nothing(runs, tmp_path):
    root = tmp_path / "root"
    first = package(runs["unisrec"], "a", root, terms=TERMS)
    with pytest.raises(Exception) as e:  # the second one alone fits, both together do not
        package(runs["vqrec"], "b", root, terms=TERMS, budget_mb=(first.size_bytes + 1000) / 2**20)
    assert "over the" in str(e.value) and "MB budget" in str(e.value) and "\n" not in str(e.value)
    assert sorted(p.name for p in root.iterdir()) == ["a"]  # no staging folder left, nothing of b
    package(runs["vqrec"], "b", root, terms=TERMS)  # within the default budget


def _edited_run(run, tmp_path, edit):
    copy = tmp_path / run.name
    shutil.copytree(run, copy)
    config = json.loads((copy / "config.json").read_text())
    edit(config)
    (copy / "config.json").write_text(json.dumps(config))
    return copy


def test_packaging_refuses_what_cannot_ship_in_one_line(runs, tmp_path):
    root = tmp_path / "root"

    def refused(run, *fragments, name="x", **kw):
        before = _snapshot(root) if root.exists() else None
        with pytest.raises(TextrecError) as e:
            package(run, name, root, **{"terms": TERMS, **kw})
        assert "\n" not in str(e.value) and all(f in str(e.value) for f in fragments), str(e.value)
        assert (_snapshot(root) if root.exists() else None) == before  # nothing written, nothing replaced

    refused(runs["vqrec"], "lower-case letters", name="My Model")
    refused(runs["vqrec"], "lower-case letters", name="packaging.py")  # never a file of the package folder
    refused(runs["vqrec"], "terms of use", terms=" ")
    refused(_edited_run(runs["vqrec"], tmp_path / "a", lambda c: c.pop("pretrain")), "not a pre-training run")
    no_quantiser = _edited_run(runs["vqrec"], tmp_path / "b", lambda c: c["new_catalogue"].update(quantizer_source="gone.index"))
    (no_quantiser / "quantizer.index").unlink()
    refused(no_quantiser, "carries no quantiser")
    package(runs["unisrec"], "x", root, terms=TERMS)
    refused(runs["vqrec"], "already exists", "overwrite")
    assert package(runs["vqrec"], "x", root, terms=TERMS, overwrite=True).model == "vqrec"
    assert json.loads((root / "x" / "card.json").read_text())["model"] == "vqrec"


def test_the_precision_check_runs_on_other_datasets_when_the_sources_are_gone(runs, tmp_path):
    sources = [d["path"] for d in json.loads((runs["unisrec"] / "config.json").read_text())["pretrain"]["datasets"]]

    def moved(config):
        for d in config["pretrain"]["datasets"]:
            d["path"] = str(tmp_path / "gone" / d["name"])

    run = _edited_run(runs["unisrec"], tmp_path, moved)
    with pytest.raises(TextrecError, match="not found.*--check-data"):
        package(run, "x", tmp_path / "root", terms=TERMS)
    res = package(run, "x", tmp_path / "root", terms=TERMS, check_data=sources[:1])
    assert res.dtype == "float16" and res.score_gaps["float16"] <= 1e-3


def test_the_script_packages_and_refuses_over_budget(runs, tmp_path, capsys):
    from doubles import benchmark_script

    script = benchmark_script("ship_checkpoint")
    assert script.main([str(runs["vqrec"]), "--name", "s", "--out-root", str(tmp_path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "s"
    assert "SeqRecBench" in json.loads((tmp_path / "s" / "card.json").read_text())["terms"]
    assert script.main([str(runs["unisrec"]), "--name", "t", "--out-root", str(tmp_path), "--budget-mb", "0.01"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("ship_checkpoint: error:") and "budget" in err[-1]


# ---- listing and resolving --------------------------------------------------------------------------------------------


def test_textrec_pretrained_lists_them(shipped, runs, capsys):
    root, _ = shipped
    out = cli_json(capsys, ["pretrained", "--json"])
    assert out["root"] == str(root)
    rows = {r["name"]: r for r in out["checkpoints"]}
    assert set(rows) == {"tiny-vqrec", "tiny-unisrec", "tiny-missrec"}
    best = json.loads((runs["vqrec"] / "metrics.json").read_text())["valid"]["ndcg@10"]
    assert rows["tiny-vqrec"]["model"] == "vqrec" and rows["tiny-vqrec"]["best_valid"] == pytest.approx(best)
    assert rows["tiny-unisrec"]["corpus"] == ["synthetic-tools", "synthetic-garden"]
    assert rows["tiny-unisrec"]["card"].endswith("CARD.md") and rows["tiny-vqrec"]["size_bytes"] > 0
    assert main(["pretrained"]) == 0
    assert "tiny-unisrec" in capsys.readouterr().out


def test_the_root_is_the_package_folder_unless_the_environment_names_one(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_DIR, raising=False)
    assert shipped_root() == shipped_root(None) and shipped_root().parts[-2:] == ("textrec", "pretrained")
    monkeypatch.setenv(ENV_DIR, str(tmp_path))
    assert shipped_root() == tmp_path and list_shipped() == []


def test_an_existing_path_wins_over_a_name_and_an_unknown_name_lists_the_shipped(shipped, tmp_path, monkeypatch, capsys):
    root, _ = shipped
    assert resolve_run("tiny-vqrec") == root / "tiny-vqrec"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-vqrec").mkdir()
    assert resolve_run("tiny-vqrec") == Path("tiny-vqrec")  # the folder here, not the shipped one
    assert resolve_run("runs/missing") == Path("runs/missing")  # a path: the loader says what is wrong with it
    one_line_error(capsys, ["evaluate", "tiny-vqrc", "--data", str(tmp_path)], "tiny-vqrc",
                   "shipped: tiny-missrec, tiny-unisrec, tiny-vqrec")


def test_a_tampered_file_fails_its_checksum_in_one_line(shipped, runs, csv_data, tmp_path, monkeypatch, capsys):
    root = tmp_path / "root"
    shutil.copytree(shipped[0], root)
    monkeypatch.setenv(ENV_DIR, str(root))
    card = json.loads((root / "tiny-unisrec" / "card.json").read_text())
    card["terms"] = "anything goes"
    (root / "tiny-unisrec" / "card.json").write_text(json.dumps(card))
    one_line_error(capsys, ["recommend", "tiny-unisrec", "--data", _fresh(csv_data, tmp_path), "--items", "x"],
                   "card.json is damaged or was changed after packaging")
    data = bytearray((root / "tiny-vqrec" / "model.safetensors").read_bytes())
    data[-3] ^= 1
    (root / "tiny-vqrec" / "model.safetensors").write_bytes(bytes(data))
    one_line_error(capsys, ["finetune", _fresh(csv_data, tmp_path / "b"), "--init", "tiny-vqrec", "--out", tmp_path / "ft"],
                   "model.safetensors is damaged")
    assert not (tmp_path / "ft").exists()


# ---- using a shipped checkpoint ---------------------------------------------------------------------------------------


def test_recommend_by_name_zero_shot_on_a_fresh_csv_dataset_writes_only_into_the_dataset(shipped, csv_data, tmp_path, capsys):
    root, _ = shipped
    before = _snapshot(root)
    data = _fresh(csv_data, tmp_path)
    user = Dataset.load(data).user_keys[0]
    for name in ("tiny-unisrec", "tiny-vqrec", "tiny-missrec"):
        out = cli_json(capsys, ["recommend", name, "--data", str(data), "--user", user, "-k", "5", "--json"])
        assert len(out["recommendations"]) == 5 and all(r["item"].startswith("kitchen") for r in out["recommendations"])
    assert (data / "embeddings" / "hashing-64-mean.npy").exists() and (data / "codes" / "joint.npy").exists()
    assert cli_json(capsys, ["evaluate", "tiny-vqrec", "--data", str(data), "--json"])["zero_shot"] is True
    assert _snapshot(root) == before  # nothing written into the shipped folders


@pytest.mark.parametrize("model", ["vqrec", "unisrec", "missrec"])
def test_shipped_scores_match_the_original_run_zero_shot(shipped, runs, csv_data, tmp_path, model):
    data = {run: _fresh(csv_data, tmp_path / run) for run in (str(runs[model]), f"tiny-{model}")}
    for run, folder in data.items():
        assert main(["evaluate", run, "--data", str(folder), "--quiet"]) == 0  # completes each dataset with its tools
    if model == "vqrec":  # the shipped quantiser codes the new items as the run's own does
        original, mine = (np.load(folder / "codes" / "joint.npy") for folder in data.values())
        assert np.array_equal(original, mine)
    original = _scores(runs[model], data[str(runs[model])])
    mine = _scores(f"tiny-{model}", data[f"tiny-{model}"])  # the library resolves the name as the CLI does
    assert original.shape == mine.shape == (60, 28)
    assert float((original - mine).abs().max()) <= 1e-3


def test_finetune_from_a_shipped_name(shipped, csv_data, tmp_path, capsys):
    root, _ = shipped
    before = _snapshot(root)
    ft = tmp_path / "ft"
    out = cli_json(capsys, ["finetune", str(_fresh(csv_data, tmp_path)), "--init", "tiny-vqrec", "--out", str(ft), "--json",
                            *CLI_CPU, "train.epochs=1"])
    assert np.isfinite(out["test"]["ndcg@10"])
    assert json.loads((ft / "config.json").read_text())["init"] == str((root / "tiny-vqrec").resolve())
    assert _snapshot(root) == before


def test_serve_and_export_by_name_say_a_pretraining_run_needs_a_dataset(shipped, capsys):
    for argv in (["serve", "tiny-unisrec"], ["export", "tiny-unisrec", "--out", "x"]):
        one_line_error(capsys, argv, "error: tiny-unisrec: a pre-training run", "--init tiny-unisrec`", "--data DIR")


def test_serve_and_export_by_name_on_a_dataset_write_only_into_the_dataset(shipped, csv_data, tmp_path, capsys, monkeypatch):
    pytest.importorskip("fastapi")
    pytest.importorskip("onnx")
    from fastapi.testclient import TestClient

    import textrec.serve.app as app_module


    root, _ = shipped
    before = _snapshot(root)
    data = _fresh(csv_data, tmp_path)
    served = []
    monkeypatch.setattr(app_module, "_fastapi", lambda: None)
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.append(app))  # what `textrec serve` would listen with
    assert main(["serve", "tiny-vqrec", "--data", str(data)]) == 0  # the CLI completes the bare dataset's codes first
    client = TestClient(served[0])
    user = Dataset.load(data).user_keys[0]
    assert len(client.post("/recommend", json={"user": user, "k": 3}).json()["recommendations"]) == 3
    assert client.post("/items", json={"items": [{"key": "new-pan", "text": "a cast iron frying pan"}]}).status_code == 200
    assert (data / "serve" / "tiny-vqrec" / "journal.jsonl").is_file()  # the added item is kept with the dataset
    out = tmp_path / "export"
    assert main(["export", "tiny-unisrec", "--data", str(data), "--out", str(out)]) == 0
    assert (out / "encoder.onnx").is_file() and np.load(out / "items.npy").shape[0] == Dataset.load(data).n_items + 1
    assert _snapshot(root) == before  # nothing written into the shipped folders

