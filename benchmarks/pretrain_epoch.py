"""Seconds per pre-training batch on the ten-domain corpus: one process on one or two threads, or two torchrun processes.

    python benchmarks/pretrain_epoch.py [--models vqrec unisrec] [--setups 1x1 1x2 2x1] [--batches 40] [--work DIR]

Each setup PxT runs ``textrec pretrain`` on the ten domains prepared by ``benchmarks/seqrecbench.py`` (its work
folder, as ``pretrain_throughput.py`` finds it) with P processes (``torchrun --standalone --nproc-per-node P`` when
P > 1, each batch split across them: the same global batch) of T threads, for one epoch cut to ``--batches`` batches
(``train.limit_batches``; the same first batches of the same seeded plan in every setup), then a validation of 1,000
merged users. Reported: seconds per batch (the epoch's training seconds / batches), the projected training time
of a whole epoch (x the epoch's batches), and the machine's load average before each run, which should be near
zero for the projection to mean anything. Writes benchmarks/results/pretrain_epoch.json and the docs/RESULTS.md
section of the same name (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, machine_line, save_result, update_results  # noqa: E402
from pretrain_throughput import COMMON, MODEL_SETTINGS, default_data  # noqa: E402

SECTION = "pretrain_epoch"
TITLE = "Pre-training epoch on the 2-core CPU: processes and threads"


def run_setup(model: str, procs: int, threads: int, data: list[Path], batches: int, out: Path) -> dict:
    overrides = [*COMMON, *MODEL_SETTINGS[model], "train.epochs=1", f"train.limit_batches={batches}",
                 f"train.num_threads={threads}", "eval.valid_users=1000"]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs)] if procs > 1
              else [sys.executable])
    cmd = [*launch, "-m", "textrec.cli", "pretrain", *map(str, data), "--model", model, "--out", str(out), "--overwrite",
           "--threads", str(threads), *overrides]
    load = os.getloadavg()[0]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:8])} ... failed:\n{done.stderr[-2000:]}")
    record = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
    targets = int(re.search(r"([\d,]+) training targets", done.stderr).group(1).replace(",", ""))
    epoch_batches = -(-targets // 2048)
    per_batch = record["train_seconds"] / batches
    return {"model": model, "processes": procs, "threads": threads, "batches": batches, "train_seconds": record["train_seconds"],
            "seconds_per_batch": per_batch, "epoch_batches": epoch_batches, "projected_epoch_seconds": per_batch * epoch_batches,
            "peak_memory_mb": record.get("peak_memory_mb"), "load_average_before": round(load, 2)}


def render(res: dict) -> str:
    lines = [f"## {TITLE}", "",f"Machine: {machine_line(res['machine'])}. Command: `{res['command']}`. One epoch cut to {res['batches']} "
             "batches of 2,048 targets (the same batches in every setup), the ten domains of `seqrecbench`; the projection "
             "is seconds per batch x the epoch's batches (training only; validation of 20,000 users adds 2-3 minutes).", "",
             "| model | processes x threads | s / batch | projected training minutes an epoch | peak memory GiB (rank 0) | load average before |",
             "|---|---|---:|---:|---:|---:|"]
    for r in res["rows"]:
        lines.append(f"| {r['model']} | {r['processes']} x {r['threads']} | {r['seconds_per_batch']:.2f} | "
                     f"{r['projected_epoch_seconds'] / 60:.1f} | {r['peak_memory_mb'] / 1024:.1f} | {r['load_average_before']} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["vqrec", "unisrec"], choices=sorted(MODEL_SETTINGS))
    p.add_argument("--setups", nargs="+", default=["1x1", "2x1"], metavar="PxT")
    p.add_argument("--batches", type=int, default=40)
    p.add_argument("--work", help="seqrecbench.py's work folder")
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    data = default_data(a.work)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in a.models:
            for setup in a.setups:
                procs, threads = (int(x) for x in setup.split("x"))
                rows.append(run_setup(model, procs, threads, data, a.batches, Path(tmp) / f"{model}-{setup}"))
                print(json.dumps(rows[-1]), flush=True)
    res = {"command": "python benchmarks/pretrain_epoch.py " + " ".join(x for x in sys.argv[1:] if "/" not in x),
           "batches": a.batches, "rows": rows,
           "machine": {**machine(), "torch_threads": "/".join(sorted({str(r["threads"]) for r in rows})) + " per process"}}
    print(render(res))
    if not a.no_write:
        save_result(ROOT / "benchmarks" / "results" / "pretrain_epoch.json", res)
        update_results(SECTION, render(res))


if __name__ == "__main__":
    main()
