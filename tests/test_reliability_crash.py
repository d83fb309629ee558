"""Crash points: a command killed at any file-system step, then run again, ends as if never killed.

``crash_at(argv, k)`` forks the test process and runs the command in the child with the k-th call of
``os.replace`` / ``os.rename`` / ``os.unlink`` / ``os.rmdir`` (every step that moves, commits or removes a
file: the atomic renames, the checksum manifest, the clean-ups) replaced by ``os._exit(137)`` — what SIGKILL
at that instant does: no ``finally``, no clean-up, the kernel drops the locks. The points are drawn with a
fixed seed among all of a command's steps (``CRASH_POINTS`` per command by default, every one under
``-m slow``). After each crash the plain rerun (``prepare --overwrite``, ``encode``, ``quantize``,
``train`` / ``pretrain`` / ``finetune --resume``) must succeed and give byte-identical datasets, embeddings and codes, and the same final
metrics for a run, with no temporary file, old copy or lock file left anywhere.
``TEXTREC_CRASH_REPORT=FILE`` writes the counts per command (points, tried, held) as JSON for the table in
docs/RESULTS.md. A last test kills a real ``textrec prepare`` process with SIGKILL at seeded moments.
"""

from __future__ import annotations

import atexit
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from test_reliability import TINY, write_csv
from textrec.cli import main

CRASH_POINTS = int(os.environ.get("TEXTREC_CRASH_POINTS", 3))
STEPS = ("replace", "rename", "unlink", "rmdir")
COUNTS: dict[str, Counter] = defaultdict(Counter)


def _report() -> None:
    target = os.environ.get("TEXTREC_CRASH_REPORT")
    if target and COUNTS:
        Path(target).write_text(json.dumps({k: dict(v) for k, v in sorted(COUNTS.items())}, indent=2) + "\n")


atexit.register(_report)


def crash_at(argv: list[str], k: int | None, count_file: Path | None = None) -> int:
    """Run ``textrec argv`` in a forked child that dies at its k-th file-system step (None: never).

    Returns the child's exit status (137 when it died at step k); ``count_file`` receives the number of steps.
    """
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 99
        try:
            seen = [0]

            def wrap(real):
                def step(*args, **kwargs):
                    seen[0] += 1
                    if seen[0] == k:
                        os._exit(137)
                    return real(*args, **kwargs)
                return step

            for name in STEPS:
                setattr(os, name, wrap(getattr(os, name)))
            # one thread: a forked child must not use the OpenMP team its parent (pytest) may have started,
            # whose threads do not exist in the child (libgomp then waits for them forever)
            code = main([str(a) for a in argv] + ["--threads", "1"])
            if count_file is not None:
                count_file.write_text(str(seen[0]))
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def steps_of(argv, tmp: Path) -> int:
    counter = tmp / "steps.txt"
    assert crash_at(argv, None, counter) == 0
    return int(counter.read_text())


def leftovers(*folders: Path) -> list[str]:
    """Temporary files and folders, old copies and lock files under ``folders``."""
    found = []
    for folder in folders:
        for p in folder.rglob(".*"):
            if p.suffix in (".tmp", ".old", ".lock"):
                found.append(str(p.relative_to(folder)))
    return found


def dataset_bytes(path: Path) -> dict:
    meta = json.loads((path / "meta.json").read_text())
    meta.pop("created")
    return {"meta": meta, **{p.name: p.read_bytes() for p in sorted(path.glob("*.parquet"))}}


def points(n_steps: int, seed: int, every: bool, limit: int = CRASH_POINTS) -> list[int]:
    all_points = list(range(1, n_steps + 1))
    return all_points if every else sorted(random.Random(seed).sample(all_points, min(limit, n_steps)))


@pytest.fixture()
def world(tmp_path):
    write_csv(tmp_path / "raw", n_users=30)
    return tmp_path


def _prepare(world: Path, every: bool) -> None:
    argv = ["prepare", world / "raw", "--format", "csv", "--out", world / "data", "--k-core", "0", "--overwrite"]
    assert main([str(a) for a in argv[:-1]]) == 0
    reference = dataset_bytes(world / "data")
    write_csv(world / "raw", n_users=30, seed=5)  # crash while replacing it with another version
    n = steps_of(argv, world)
    other = dataset_bytes(world / "data")
    write_csv(world / "raw", n_users=30)
    for k in points(n, 0, every):
        COUNTS["prepare"]["tried"] += 1
        assert crash_at(argv, k) == 137
        if (world / "data").exists():  # the old or the new dataset, whole
            assert dataset_bytes(world / "data") in (reference, other)
        else:  # killed between moving the old one aside and the new one in: the old one is kept aside whole
            kept = [p / "old" for p in world.glob(".data.*.old") if (p / "old" / "meta.json").exists()]
            assert len(kept) == 1 and dataset_bytes(kept[0]) in (reference, other)
        assert main([str(a) for a in argv]) == 0
        assert dataset_bytes(world / "data") == reference and not leftovers(world)
        COUNTS["prepare"]["held"] += 1
    COUNTS["prepare"]["points"] = n


def _encode_quantize(world: Path, every: bool) -> None:
    assert main(["prepare", str(world / "raw"), "--format", "csv", "--out", str(world / "data"), "--k-core", "0"]) == 0
    data = world / "data"
    for what, argv, out in (
        ("encode", ["encode", data, "--encoder", "hashing-32", "--name", "h", "--no-cache"], data / "embeddings" / "h.npy"),
        ("quantize", ["quantize", data, "--embeddings", "h", "--codebooks", "4", "--codebook-size", "8", "--name", "q"],
         data / "codes" / "q.npy"),
    ):
        n = steps_of(argv, world)
        reference = out.read_bytes()
        for k in points(n, 1, every):
            COUNTS[what]["tried"] += 1
            assert crash_at(argv, k) == 137
            assert main([str(a) for a in argv]) == 0
            assert out.read_bytes() == reference and not leftovers(world)
            COUNTS[what]["held"] += 1
        COUNTS[what]["points"] = n


def _crash_run(label: str, argv: list, run: Path, world: Path, every: bool, seed: int, limit: int = CRASH_POINTS) -> None:
    """Kill a training command (``argv`` ends in ``--resume``) at its seeded steps; each rerun ends as the uninterrupted one."""
    n = steps_of(argv, world)
    reference = json.loads((run / "metrics.json").read_text())
    for k in points(n, seed, every, limit):
        COUNTS[label]["tried"] += 1
        for f in run.iterdir():
            f.unlink() if f.is_file() else None
        assert crash_at(argv, k) == 137
        assert main([str(a) for a in argv]) == 0, f"rerun after a crash at step {k} of {n}"
        got = json.loads((run / "metrics.json").read_text())
        assert [got.get(key) for key in ("valid", "test", "best_epoch")] == [reference.get(key) for key in ("valid", "test", "best_epoch")]
        assert not leftovers(world)
        COUNTS[label]["held"] += 1
    COUNTS[label]["points"] = n


def _train(world: Path, every: bool) -> None:
    assert main(["prepare", str(world / "raw"), "--format", "csv", "--out", str(world / "data"), "--k-core", "0"]) == 0
    run = world / "run"
    argv = ["train", world / "data", "--model", "sasrec", "--out", run, "--quiet", "--resume", *TINY, "train.epochs=2"]
    _crash_run("train", argv, run, world, every, 2)


PRETRAIN = ["model.hidden_size=16", "model.inner_size=16", "model.n_experts=2", "train.epochs=2", "train.batch_size=64",
            "train.device=cpu", "train.num_threads=1"]


def _pretrain_finetune(world: Path, every: bool) -> None:
    for name, seed in (("data", 0), ("target", 1)):
        write_csv(world / f"raw-{name}", n_users=30, seed=seed)
        assert main(["prepare", str(world / f"raw-{name}"), "--format", "csv", "--out", str(world / name), "--k-core", "0"]) == 0
        assert main(["encode", str(world / name), "--encoder", "hashing-32", "--no-cache"]) == 0
    pre, ft = world / "pre", world / "ft"
    _crash_run("pretrain", ["pretrain", world / "data", "--model", "unisrec", "--out", pre, "--quiet", "--resume", *PRETRAIN],
               pre, world, every, 3, limit=1)  # one point each in the default run: two trainings per point
    _crash_run("finetune", ["finetune", world / "target", "--init", pre, "--out", ft, "--quiet", "--resume", "train.epochs=2"],
               ft, world, every, 4, limit=1)


STEPS_UNDER_TEST = {"prepare": _prepare, "encode+quantize": _encode_quantize, "train": _train,
                    "pretrain+finetune": _pretrain_finetune}


@pytest.mark.parametrize("command", sorted(STEPS_UNDER_TEST))
def test_a_command_killed_at_seeded_steps_reruns_to_the_same_result(world, command):
    STEPS_UNDER_TEST[command](world, every=False)


@pytest.mark.slow
@pytest.mark.parametrize("command", sorted(STEPS_UNDER_TEST))
def test_a_command_killed_at_every_step_reruns_to_the_same_result(world, command):
    STEPS_UNDER_TEST[command](world, every=True)


@pytest.mark.slow
def test_a_real_prepare_process_killed_at_seeded_moments(world):
    argv = [sys.executable, "-c", "import sys; from textrec.cli import main; sys.exit(main())", "prepare", str(world / "raw"), "--format", "csv", "--out", str(world / "data"),
            "--k-core", "0", "--overwrite"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
    reference = dataset_bytes(world / "data")
    rng = random.Random(3)
    for _ in range(5):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        COUNTS["prepare (SIGKILL)"]["tried"] += 1
        assert subprocess.run(argv, env=env, capture_output=True).returncode == 0
        assert dataset_bytes(world / "data") == reference and not leftovers(world)
        COUNTS["prepare (SIGKILL)"]["held"] += 1
