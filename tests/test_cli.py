"""The command line as a new user meets it: prepare -> info -> train -> evaluate -> recommend, and errors."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import textrec
from doubles import cli_json
from test_unisrec_reader import _write_atomic
from textrec.cli import build_parser, main

TINY = ["model.hidden_size=16", "model.inner_size=16", "train.epochs=2", "train.batch_size=64", "train.device=cpu"]




def test_pipeline(tmp_path, capsys, tiny_world):

    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    _write_atomic(raw, {u: rng.integers(0, 40, size=8).tolist() for u in range(50)}, 40)
    data = tmp_path / "data"
    out = cli_json(capsys, ["prepare", str(raw), "--format", "unisrec", "--out", str(data), "--json"])
    assert out["users"] == 50 and out["items"] == 40
    info = cli_json(capsys, ["info", str(data), "--json"])
    assert info["interactions"] == 400 and info["content_hash"]
    run = tmp_path / "run"
    res = cli_json(capsys, ["train", str(data), "--model", "sasrec", "--out", str(run), "--quiet", "--json", *TINY])
    assert set(res["test"]) >= {"recall@10", "ndcg@10", "recall@50", "ndcg@50", "mrr@10"}
    ev = cli_json(capsys, ["evaluate", str(run), "--json"])
    assert ev["users"] == 50 and ev["ndcg@10"] == pytest.approx(res["test"]["ndcg@10"])
    ev_masked = cli_json(capsys, ["evaluate", str(run), "--json", "--mask-history", "--split", "valid", "--ks", "5"])
    assert ev_masked["mask_history"] is True and "recall@5" in ev_masked
    rec = cli_json(capsys, ["recommend", str(run), "--user", "USER3", "-k", "5", "--json"])
    assert len(rec["recommendations"]) == 5 and rec["recommendations"][0]["text"].startswith("Item ")
    history = {h["item"] for h in rec["history"]}
    assert not history & {r["item"] for r in rec["recommendations"]}  # seen items are not recommended
    rec2 = cli_json(capsys, ["recommend", str(run), "--items", "ASIN001,ASIN002", "--json"])
    assert len(rec2["recommendations"]) == 10
    assert main(["recommend", str(run), "--items", "ASIN001"]) == 0
    assert "top 10:" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["info", "/nonexistent/data"], "no such dataset directory"),
        (["train", "/nonexistent/data", "--model", "sasrec", "--out", "{tmp}/r"], "no such dataset directory"),
        (["train", "{data}", "--model", "sasrek", "--out", "{tmp}/r"], "unknown model 'sasrek'"),
        (["train", "{data}", "--model", "sasrec", "--out", "{tmp}/r", "train.lrr=1"], "unknown config key train.lrr"),
        (["prepare", "{tmp}", "--format", "nope", "--out", "{tmp}/x"], "unknown format 'nope'"),
        (["prepare", "{tmp}", "--format", "unisrec", "--out", "{tmp}/x"], "no <name>.train.inter"),
        (["prepare", "{tmp}", "--format", "unisrec", "--out", "{data}"], "already exists"),
        (["evaluate", "{tmp}"], "not a textrec run directory"),
    ],
)
def test_errors_are_one_line(tmp_path, capsys, tiny_dir, argv, message):
    argv = [a.format(tmp=tmp_path, data=tiny_dir) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("textrec: error: ") and message in err[0]


def test_recommend_unknown_user_and_item(tmp_path, capsys, tiny_dir):
    run = tmp_path / "run"
    assert main(["train", str(tiny_dir), "--model", "sasrec", "--out", str(run), "--quiet", *TINY]) == 0
    capsys.readouterr()
    assert main(["recommend", str(run), "--user", "nobody"]) == 2
    assert "unknown user 'nobody'" in capsys.readouterr().err
    assert main(["recommend", str(run), "--items", "tools-00001,nothing"]) == 2
    assert "unknown item 'nothing'" in capsys.readouterr().err
    assert main(["recommend", str(run)]) == 2
    assert "exactly one of --user" in capsys.readouterr().err


def test_module_entry_point_prints_the_version():
    out = subprocess.run([sys.executable, "-m", "textrec.cli", "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith("textrec ")


def test_prepare_help_lists_the_readers_registry(capsys, monkeypatch):
    from textrec.cli import build_parser
    from textrec.data.formats import READERS

    monkeypatch.setitem(READERS, "myformat", READERS["csv"])  # a reader added to the registry shows up by itself
    monkeypatch.setenv("COLUMNS", "400")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["prepare", "--help"])
    assert f"one of {', '.join(READERS)}" in " ".join(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["prepare", "info", "holdout", "encode", "quantize", "train", "pretrain", "finetune",
                                     "evaluate", "recommend", "demo"])
def test_every_command_takes_quiet_verbose_and_json(command):
    from textrec.cli import build_parser

    needed = {"prepare": ["SRC", "--format", "csv", "--out", "X"], "info": ["D"], "holdout": ["D", "--out", "X"],
              "encode": ["D"], "quantize": ["D"], "train": ["D", "--out", "X"], "pretrain": ["D", "--out", "X"],
              "finetune": ["D", "--init", "R", "--out", "X"], "evaluate": ["R"], "recommend": ["R"], "demo": []}
    for flags, quiet, verbose in ((["--quiet"], True, False), (["-v"], False, True), (["--json"], False, False)):
        args = build_parser().parse_args([command, *needed[command], *flags])
        assert (args.quiet, args.verbose, args.json) == (quiet, verbose, flags == ["--json"])


def test_evaluate_and_recommend_take_data_overrides(tmp_path, capsys, tiny_dir):
    run = tmp_path / "run"
    assert main(["train", str(tiny_dir), "--model", "sasrec", "--out", str(run), "--quiet", *TINY]) == 0
    capsys.readouterr()
    # the run's own data setting as an override: accepted, same result; an unknown data key: a one-line error
    plain = cli_json(capsys, ["evaluate", str(run), "--json"])
    same = cli_json(capsys, ["evaluate", str(run), "data.max_seq_len=50", "--json"])
    assert {k: v for k, v in same.items() if k != "seconds"} == {k: v for k, v in plain.items() if k != "seconds"}
    assert main(["evaluate", str(run), "--json", "data.max_seq_len=2"]) == 2  # read, and refused: the model's size
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.max_seq_len cannot change" in err[0], err
    assert main(["recommend", str(run), "--user", "x", "data.max_seq_lenn=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.max_seq_lenn" in err[0], err


# ---- the console script ----------------------------------------------------------------------------
def test_the_installed_console_script_runs():
    exe = shutil.which("textrec")
    if exe is None:
        pytest.skip("no `textrec` console script on PATH (install the package: pip install -e .)")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=300)
    assert version.returncode == 0, version.stderr
    assert textrec.__version__ in version.stdout + version.stderr
    helped = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, timeout=300)
    assert helped.returncode == 0, helped.stderr
    assert "usage: textrec train" in helped.stdout


# ---- --model help lists the models ---------------------------------------------------------------------
@pytest.mark.parametrize("command", ["train", "pretrain"])
def test_model_help_lists_the_registry(command, capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    option = help_text[help_text.index("--model MODEL model name"):]
    option = option[:option.index(" --", 2)]  # up to the next option
    for name in ("sasrec", "unisrec", "vqrec", "missrec", "recformer"):  # every shipped model, written out here
        assert re.search(rf"\b{name}\b", option), f"{name} missing from the --model help: {option!r}"
