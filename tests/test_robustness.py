"""Runs survive what happens to them after training, and failed starts leave nothing behind.

Damaged, truncated or edited checkpoints are refused with one line (checksums.json); a start that cannot
run leaves no directory; a run keeps loading what it was trained with when its dataset gains other
embeddings or codes; an interrupted and resumed run leaves no duplicate log lines or temporary files.
Everything goes through the command line on tiny synthetic datasets (hidden 16, 1-2 epochs).
"""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch

from doubles import one_line_error
from textrec.cli import main
from textrec.data.synthetic import WorldSpec, make_domain

TINY = ["model.hidden_size=16", "model.inner_size=16", "train.epochs=1", "train.batch_size=64", "train.device=cpu"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("robust")
    spec = dict(min_len=5, max_len=10, noise=0.1)
    make_domain("tools", WorldSpec(n_items=40, n_users=80, **spec), seed=1).save(root / "tools")
    make_domain("kitchen", WorldSpec(n_items=30, n_users=60, **spec), seed=2).save(root / "kitchen")
    return root


@pytest.fixture(scope="module")
def sasrec_run(datasets):
    run = datasets / "sasrec"
    assert main(["train", str(datasets / "tools"), "--model", "sasrec", "--out", str(run), "--quiet", *TINY]) == 0
    return run


def _user(data) -> str:
    from textrec.data.dataset import Dataset

    return Dataset.load(data).user_keys[0]


def _damage(path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flipped":  # one byte of a weight, not of the header: safetensors reads it without complaint
        data[-7] ^= 0xFF
    elif how == "truncated":
        data = data[: len(data) // 2]
    else:
        data = bytearray()
    path.write_bytes(bytes(data))


# ---- 1. checkpoints ------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["flipped", "truncated", "empty"])
def test_changed_weights_are_refused_by_their_checksum(tmp_path, capsys, datasets, sasrec_run, how):
    run = tmp_path / "run"
    shutil.copytree(sasrec_run, run)
    _damage(run / "model.safetensors", how)
    expected = f"{run}/model.safetensors is damaged or was changed after training (checksum mismatch)"
    one_line_error(capsys, ["evaluate", run], expected)
    one_line_error(capsys, ["recommend", run, "--user", _user(datasets / "tools")], expected)
    assert json.loads((run / "checksums.json").read_text())["model.safetensors"]["sha256"]


def test_runs_without_checksums_load_and_unreadable_weights_are_one_line(tmp_path, capsys, sasrec_run):
    run = tmp_path / "run"
    shutil.copytree(sasrec_run, run)
    (run / "checksums.json").unlink(missing_ok=True)  # a run written before checksums were kept
    for how in ("truncated", "empty"):
        _damage(run / "model.safetensors", how)
        one_line_error(capsys, ["evaluate", run], f"{run}/model.safetensors is damaged or from another config (")
        shutil.copy(sasrec_run / "model.safetensors", run / "model.safetensors")
    assert main(["evaluate", str(run), "--json"]) == 0  # intact: loads, unverified
    assert "not verified" in capsys.readouterr().err


def test_config_edited_to_other_sizes_is_one_line(tmp_path, capsys, sasrec_run):
    run = tmp_path / "run"
    shutil.copytree(sasrec_run, run)
    config = json.loads((run / "config.json").read_text())
    config["model"].update(hidden_size=32, inner_size=32)
    (run / "config.json").write_text(json.dumps(config))
    line = one_line_error(capsys, ["evaluate", run], f"{run}/model.safetensors is damaged or from another config (")
    assert len(line) < 300  # not load_state_dict's page of size mismatches


def test_resume_refuses_changed_state_and_weights(tmp_path, capsys, datasets, sasrec_run):
    for name in ("state.pt", "model.safetensors"):
        run = tmp_path / name
        shutil.copytree(sasrec_run, run)
        _damage(run / name, "flipped")
        one_line_error(capsys, ["train", datasets / "tools", "--model", "sasrec", "--out", run, "--quiet", "--resume", *TINY],
                        f"{run}/{name} is damaged or was changed after training (checksum mismatch)")


def test_finetune_refuses_changed_pretrained_weights(tmp_path, capsys, datasets):
    for d in ("tools", "kitchen"):
        shutil.copytree(datasets / d, tmp_path / d)
        assert main(["quantize", str(tmp_path / d), "--random", "--codebooks", "4", "--codebook-size", "16"]) == 0
    pre = tmp_path / "pre"
    assert main(["pretrain", str(tmp_path / "tools"), "--model", "vqrec", "--out", str(pre), "--quiet", *TINY]) == 0
    _damage(pre / "model.safetensors", "flipped")
    out = tmp_path / "ft"
    one_line_error(capsys, ["finetune", tmp_path / "kitchen", "--init", pre, "--out", out, "--quiet", *TINY],
                    f"{pre}/model.safetensors is damaged or was changed after training (checksum mismatch)")
    assert not out.exists()


def test_a_write_killed_at_any_moment_leaves_checksums_that_accept_the_file_in_place(tmp_path, monkeypatch):
    import os

    from textrec import io as textrec_io

    path = tmp_path / "model.safetensors"
    with textrec_io.checksummed_path(path) as tmp:
        tmp.write_bytes(b"first")
    assert textrec_io.checksum_matches(path) is True
    real_replace = os.replace

    def killed(src, dst):
        if str(dst) == str(path):  # killed after the new digest was recorded, before the file moved into place
            raise KeyboardInterrupt
        real_replace(src, dst)

    monkeypatch.setattr(textrec_io.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        with textrec_io.checksummed_path(path) as tmp:
            tmp.write_bytes(b"second")
    monkeypatch.setattr(textrec_io.os, "replace", real_replace)
    assert path.read_bytes() == b"first" and textrec_io.checksum_matches(path) is True
    path.write_bytes(b"second")  # ... or killed just after the move: the pending digest accepts the new file
    assert textrec_io.checksum_matches(path) is True
    path.write_bytes(b"third")
    assert textrec_io.checksum_matches(path) is False


# ---- 2. failed starts ----------------------------------------------------------------------------

FAILED_STARTS = {
    "heads": (["model.hidden_size=300", "model.n_heads=7"], "n_heads"),
    "dropout": (["model.hidden_dropout=1.5"], "hidden_dropout"),
    "hidden": (["model.hidden_size=0"], "hidden_size"),
    "cuda": (["train.device=cuda"], "CUDA"),
    "tensorboard": (["train.tensorboard=true"], "tensorboard"),
    "finetune-sasrec": ([], "sasrec"),
}


@pytest.mark.parametrize("case", list(FAILED_STARTS))
def test_a_failed_start_leaves_no_run_directory(tmp_path, capsys, datasets, sasrec_run, case):
    bad, fragment = FAILED_STARTS[case]
    if case == "cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    if case == "tensorboard" and importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed (this start fails only without it)")
    out = tmp_path / "run"
    tools, kitchen = datasets / "tools", datasets / "kitchen"
    if case == "finetune-sasrec":  # an item-ID model cannot move to another catalogue
        argv = ["finetune", kitchen, "--init", sasrec_run, "--out", out, "--quiet", "train.epochs=1", "train.device=cpu"]
        fixed = ["train", kitchen, "--model", "sasrec", "--out", out, "--quiet", *TINY]
    else:
        argv = ["train", tools, "--model", "sasrec", "--out", out, "--quiet", *TINY, *bad]
        fixed = ["train", tools, "--model", "sasrec", "--out", out, "--quiet", *TINY]
    one_line_error(capsys, argv, fragment)
    assert not out.exists()
    out.mkdir()
    one_line_error(capsys, argv, fragment)
    assert out.is_dir() and not any(out.iterdir())
    assert main([str(a) for a in fixed]) == 0  # no --overwrite needed
    assert (out / "model.safetensors").exists()


# ---- 3. a dataset that gains other codes or embeddings -------------------------------------------


def test_vqrec_run_keeps_its_codes_when_the_dataset_gains_others(tmp_path, capsys, datasets):
    data = tmp_path / "tools"
    shutil.copytree(datasets / "tools", data)
    random = ["--random", "--codebooks", "4", "--codebook-size", "16"]
    assert main(["quantize", str(data), *random, "--name", "a"]) == 0
    run = tmp_path / "run"
    assert main(["train", str(data), "--model", "vqrec", "--out", str(run), "--quiet", "--json", *TINY]) == 0
    trained = json.loads(capsys.readouterr().out)["test"]
    assert main(["quantize", str(data), *random, "--name", "b", "--seed", "7"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ndcg@10"] == pytest.approx(trained["ndcg@10"])
    assert main(["recommend", str(run), "--user", _user(data), "--json"]) == 0
    for f in (data / "codes").glob("a.*"):
        f.unlink()
    one_line_error(capsys, ["evaluate", run], "'a'", "trained with")


def test_unisrec_run_keeps_its_embeddings_when_the_dataset_gains_others(tmp_path, capsys, datasets):
    data = tmp_path / "kitchen"
    shutil.copytree(datasets / "kitchen", data)
    assert main(["encode", str(data), "--encoder", "hashing-32"]) == 0
    run = tmp_path / "run"
    assert main(["train", str(data), "--model", "unisrec", "--out", str(run), "--quiet", "--json", *TINY]) == 0
    trained = json.loads(capsys.readouterr().out)["test"]
    assert main(["encode", str(data), "--encoder", "hashing-48"]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["ndcg@10"] == pytest.approx(trained["ndcg@10"])
    assert main(["recommend", str(run), "--user", _user(data), "--json"]) == 0
    for f in (data / "embeddings").glob("hashing-32*"):
        f.unlink()
    one_line_error(capsys, ["recommend", run, "--user", _user(data)], "'hashing-32-mean'", "trained with")


# ---- 4. resume traces ----------------------------------------------------------------------------


def _log_epochs(run) -> list[int]:
    return [json.loads(line)["epoch"] for line in (run / "log.jsonl").read_text().splitlines()]


def test_resume_after_a_kill_leaves_no_duplicate_log_line_or_temporary_file(tmp_path, capsys, datasets, sasrec_run):
    run = tmp_path / "run"
    shutil.copytree(sasrec_run, run)  # a 2-epoch run killed during epoch 2, after epoch 1 was saved:
    config = json.loads((run / "config.json").read_text())
    config["train"]["epochs"] = 2
    (run / "config.json").write_text(json.dumps(config))
    (run / "metrics.json").unlink()
    (run / ".state.pt.abc.tmp").write_bytes(b"half a state")
    with open(run / "log.jsonl", "a") as f:  # its log line for epoch 2 was written, its state.pt was not
        f.write(json.dumps({"epoch": 2, "loss": 1.0, "train_seconds": 0.1}) + "\n")
    two = [a for a in TINY if a != "train.epochs=1"] + ["train.epochs=2"]
    assert main(["train", str(datasets / "tools"), "--model", "sasrec", "--out", str(run), "--quiet", "--resume", *two]) == 0
    assert _log_epochs(run) == [1, 2]
    assert not list(run.glob(".*.tmp"))
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2


def test_a_finished_run_can_be_extended_by_raising_epochs(tmp_path, capsys, datasets, sasrec_run):
    run = tmp_path / "run"
    shutil.copytree(sasrec_run, run)
    more = [a for a in TINY if a != "train.epochs=1"] + ["train.epochs=2"]
    assert main(["train", str(datasets / "tools"), "--model", "sasrec", "--out", str(run), "--quiet", "--resume", *more]) == 0
    assert _log_epochs(run) == [1, 2]
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 2
    assert main(["evaluate", str(run), "--json"]) == 0


# ---- 5. help -------------------------------------------------------------------------------------


def test_finetune_help_says_what_freeze_encoder_defaults_to(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert ("default: the pre-trained model's setting; unisrec and vqrec freeze position embeddings and Transformer "
            "by default, as the references do") in text
