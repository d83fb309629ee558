"""The demo alone and beside a two-thread CPU load, in one run: does textrec keep to its share of the CPU?

    python benchmarks/contention.py                      # this checkout
    python benchmarks/contention.py --before ../main/src # also another checkout's src, in the same run

For each source tree: ``textrec demo --quick`` alone, then beside a load of two busy threads (one process
multiplying matrices with two torch threads, started first and stopped after). Reported: wall seconds, CPU
seconds of the demo, and the slow-down beside the load. On a machine with C cores a demo that keeps to its
share should slow down by about (C + 2) / C at most beside two busy threads (2x on 2 cores).
The machine's load average before each run is recorded: on a shared machine "alone" is not idle.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine  # noqa: E402

LOAD = """
import torch, time
torch.set_num_threads(2)
a = torch.randn(1024, 1024)
while True:
    a = torch.tanh(a @ a)
"""


def demo(src: Path, work: Path, extra_env: dict) -> dict:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **extra_env}
    for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY"):  # each tree's own defaults
        env.pop(k, None)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_avg = os.getloadavg()[0]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "textrec.cli", "demo", "--quick", "--out", str(work), "--json"],
                          env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": wall, "cpu_seconds": cpu, "load_average_before": load_avg}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, help="another checkout's src folder, measured the same way in the same run")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "contention.json")
    args = p.parse_args()
    trees = {"this": ROOT / "src", **({"before": args.before.resolve()} if args.before else {})}
    result = {"machine": machine(), "runs": {}}
    for name, src in trees.items():
        with tempfile.TemporaryDirectory() as tmp:
            alone = demo(src, Path(tmp) / "alone", {})
            load = subprocess.Popen([sys.executable, "-c", LOAD], env={**os.environ, "OMP_NUM_THREADS": "2"})
            try:
                time.sleep(2)
                beside = demo(src, Path(tmp) / "beside", {})
            finally:
                load.kill()
                load.wait()
        result["runs"][name] = {"src": str(src.relative_to(ROOT.parent)) if src.is_relative_to(ROOT.parent) else str(src),
                                "alone": alone, "beside_two_threads": beside,
                                "slowdown": beside["wall_seconds"] / alone["wall_seconds"]}
        print(json.dumps({name: result["runs"][name]}), file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
