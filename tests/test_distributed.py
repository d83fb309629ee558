"""Data-parallel training under torchrun (gloo, CPU): two processes give the one-process run.

Each test launches real ``torchrun`` processes (``python -m torch.distributed.run``) on the synthetic world
and compares against one process with the same global batch. Tolerances: with dropout off (and no random
augmentation) the two runs differ only in floating-point summation order, so per-epoch losses agree to a
relative 1e-5 and validation / test metrics to 1e-6 (the same ranks; ``TIGHT``). Models whose training
draws noise per row (UniSRec's gate noise) are a different random draw, checked to a relative 2% on the loss
and 0.1 on each metric (30 of the world's 300 users).

Every launch costs several seconds of process start and rendezvous, so only the SASRec comparison runs by
default (about 30 s on a busy 2-core machine); the other models, the two loopback nodes and the killed rank
are ``slow`` (``pytest -m slow tests/test_distributed.py``, about 5 minutes there).
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from textrec.cli import main
from textrec.data.synthetic import WorldSpec, make_domain

SRC = str(Path(__file__).resolve().parents[1] / "src")
SMALL = ["train.device=cpu", "train.num_threads=1", "train.lr=0.005", "train.patience=20", "eval.ks=[5,10]"]
SASREC = ["--model", "sasrec", "model.hidden_size=32", "model.inner_size=32", "model.hidden_dropout=0", "model.attn_dropout=0",
          "train.batch_size=256", *SMALL]
TIGHT = dict(loss_rel=1e-5, metric_abs=1e-6)


def _env() -> dict:
    env = dict(os.environ, PYTHONPATH=SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    env.pop("RANK", None)
    return env


def _one(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "textrec", *args, "--quiet"], env=_env(), capture_output=True, text=True,
                          timeout=timeout)


def _torchrun(launch: list[str], args: list[str], **kw) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "-m", "textrec", *args, "--quiet"]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _two(args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    p = _torchrun(["--standalone", "--nproc-per-node", "2"], args)
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _ok(proc) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def _same_training(a: Path, b: Path, loss_rel: float, metric_abs: float) -> None:
    la, lb = _log(a), _log(b)
    assert [r["epoch"] for r in la] == [r["epoch"] for r in lb]
    for ra, rb in zip(la, lb):
        assert math.isclose(ra["loss"], rb["loss"], rel_tol=loss_rel), (ra["epoch"], ra["loss"], rb["loss"])
        for k, v in ra.get("valid", {}).items():
            assert abs(v - rb["valid"][k]) <= metric_abs, (ra["epoch"], k, v, rb["valid"][k])
    ma, mb = (json.loads((r / "metrics.json").read_text()) for r in (a, b))
    assert ma["best_epoch"] == mb["best_epoch"] and mb["processes"] == 2
    for split in ("valid", "test"):
        for k, v in (ma[split] or {}).items():
            assert abs(v - mb[split][k]) <= metric_abs, (split, k, v, mb[split][k])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The synthetic world with hashing text embeddings and small OPQ codes."""
    path = tmp_path_factory.mktemp("dist") / "tools"
    make_domain("tools", WorldSpec(n_items=60, n_users=300, min_len=5, max_len=20, noise=0.1), seed=1).save(path)
    assert main(["encode", str(path), "--encoder", "hashing-32", "--json"]) == 0
    assert main(["quantize", str(path), "--codebooks", "4", "--codebook-size", "8", "--json"]) == 0
    return path


@pytest.fixture(scope="module")
def sasrec_pair(world, tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """SASRec trained for 4 epochs in one process and in two (the same global batch)."""
    tmp = tmp_path_factory.mktemp("sasrec")
    args = ["train", str(world), *SASREC, "train.epochs=4"]
    _ok(_one([*args, "--out", str(tmp / "one")]))
    two = _two([*args, "--out", str(tmp / "two"), "--json"])
    _ok(two)
    report = json.loads(two.stdout)  # rank 0 alone reports: stdout is one JSON object
    assert report["processes"] == 2
    return tmp / "one", tmp / "two", args


def test_sasrec_two_processes_train_as_one(sasrec_pair):
    one, two, _ = sasrec_pair
    _same_training(one, two, **TIGHT)
    assert "processes" not in json.loads((one / "metrics.json").read_text())
    assert not list(two.glob(".*.tmp")) and {p.name for p in two.iterdir()} >= {"config.json", "model.safetensors", "state.pt",
                                                                                "log.jsonl", "metrics.json", "checksums.json"}


@pytest.mark.slow
def test_contrastive_pretraining_gathers_negatives_across_processes(world, tmp_path):
    """VQ-Rec pre-training: in-batch negatives from both ranks; the loss is the one-process loss of the global batch."""
    args = ["pretrain", str(world), "--model", "vqrec", "model.hidden_size=32", "model.inner_size=32", "model.hidden_dropout=0",
            "model.attn_dropout=0", "model.semi_synthetic=false", "train.batch_size=256", "train.epochs=3", *SMALL]
    _ok(_one([*args, "--out", str(tmp_path / "one")]))
    _ok(_two([*args, "--out", str(tmp_path / "two")]))
    _same_training(tmp_path / "one", tmp_path / "two", **TIGHT)


@pytest.mark.slow
@pytest.mark.parametrize("model, overrides, tol", [
    ("vqrec", ["model.hidden_size=32", "model.inner_size=32", "train.batch_size=256"], TIGHT),
    ("missrec", ["model.text_feature=embeddings", "model.image_feature=", "model.hidden_size=16", "model.n_heads=2",
                 "model.inner_size=16", "train.batch_size=128"], TIGHT),  # per-epoch k-means: rank 0's, broadcast
    ("recformer", ["model.backbone=random", "model.hidden_size=32", "model.n_heads=2", "model.inner_size=37", "model.n_layers=2",
                   "train.batch_size=64"], dict(loss_rel=1e-5, metric_abs=2e-3)),  # item table re-encoded on every rank
    ("unisrec", ["model.hidden_size=32", "model.inner_size=32", "model.adaptor_dropout=0", "train.batch_size=256"],
     dict(loss_rel=0.02, metric_abs=0.1)),  # the MoE gate noise is drawn per rank: another random draw (300 test users)
])
def test_every_model_trains_in_two_processes_as_in_one(world, tmp_path, model, overrides, tol):
    args = ["train", str(world), "--model", model, *overrides, "model.hidden_dropout=0", "model.attn_dropout=0", "train.epochs=3",
            *SMALL]
    _ok(_one([*args, "--out", str(tmp_path / "one")]))
    _ok(_two([*args, "--out", str(tmp_path / "two")]))
    _same_training(tmp_path / "one", tmp_path / "two", **tol)


@pytest.mark.slow
def test_pretrain_and_finetune_in_two_processes(world, tmp_path):
    """UniSRec, MISSRec, and VQ-Rec whose fine-tuning enters a permutation phase and bakes it (broadcast from rank 0)."""
    for model, extra in (("unisrec", ["model.hidden_size=32", "model.inner_size=32", "train.batch_size=256"]),
                         ("vqrec", ["model.hidden_size=32", "model.inner_size=32", "model.permute_epochs=1", "train.batch_size=256"]),
                         ("missrec", ["model.text_feature=embeddings", "model.image_feature=", "model.hidden_size=16",
                                      "model.n_heads=2", "model.inner_size=16", "train.batch_size=128"])):
        pre, fine = tmp_path / f"{model}-pre", tmp_path / f"{model}-fine"
        _ok(_two(["pretrain", str(world), "--model", model, *extra, "train.epochs=2", *SMALL, "--out", str(pre)]))
        _ok(_two(["finetune", str(world), "--init", str(pre), *extra[-1:], "train.epochs=2", *SMALL, "--out", str(fine)]))
        assert json.loads((fine / "metrics.json").read_text())["processes"] == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_nodes_on_loopback_finish_as_one_process(sasrec_pair, world, tmp_path):
    one, _, args = sasrec_pair
    port = _free_port()
    nodes = [_torchrun(["--nnodes", "2", "--nproc-per-node", "1", "--node-rank", str(r), "--rdzv-backend", "c10d",
                        "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "textrec-test"],
                       [*args, "--out", str(tmp_path / "run")]) for r in (0, 1)]
    for p in nodes:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
    _same_training(one, tmp_path / "run", **TIGHT)


def _rank_pid(launcher: subprocess.Popen, rank: int, timeout: float = 60) -> int:
    """The pid of the worker of ``rank`` among the launcher's children (Linux /proc)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children").read_text().split()
        for pid in children:
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in env:
                return int(pid)
        time.sleep(0.05)
    raise AssertionError(f"no worker of rank {rank} appeared")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds the worker processes through /proc")
def test_killing_a_rank_fails_cleanly_and_resume_completes_the_run(sasrec_pair, tmp_path):
    from textrec.train.loop import verify_checkpoint

    _, two, args = sasrec_pair
    run = tmp_path / "run"
    p = _torchrun(["--standalone", "--nproc-per-node", "2"], [*args, "--out", str(run)])
    victim = _rank_pid(p, 1)
    end = time.monotonic() + 120
    while not (run / "state.pt").exists():  # one epoch finished and saved
        assert p.poll() is None and time.monotonic() < end, "the run ended before a rank could be killed"
        time.sleep(0.01)
    os.kill(victim, signal.SIGKILL)
    _, err = p.communicate(timeout=120)
    assert p.returncode != 0
    ours = [line for line in err.splitlines() if line.startswith("textrec:")]
    assert ours and all(("another process of the distributed run failed" in line) or ("interrupted" in line) for line in ours), err[-3000:]
    # what is left is a resumable run: no temporary file, every checkpoint the one its checksum names
    assert not list(run.glob(".*.tmp"))
    assert verify_checkpoint(run / "state.pt") and verify_checkpoint(run / "model.safetensors")
    epochs_done = len(_log(run))
    assert 1 <= epochs_done < 4
    resumed = _two([*args, "--out", str(run), "--resume"])
    _ok(resumed)
    _same_training(two, run, loss_rel=0.0, metric_abs=0.0)  # the same run as the uninterrupted one, to the bit
