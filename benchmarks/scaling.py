"""Pre-training cost against corpus size: seconds per epoch and peak memory, synthetic corpora up to 1M users.

    python benchmarks/scaling.py [--sizes 20000:10000 200000:100000 1000000:500000] [--models unisrec vqrec] \
        [--batches 20] [--threads 1] [--work DIR] [--no-write]

For each size USERS:ITEMS a synthetic corpus (``benchmarks/make_corpus.py``: log-normal lengths, Zipf popularity)
is made once under the work folder with 384-d hashing embeddings (``textrec encode --encoder hashing-384``) and
random codes for VQ-Rec (``textrec quantize --random``: the codes' values do not change the cost). Each model then
runs ``textrec pretrain`` for one epoch of ``--batches`` batches (``train.limit_batches``) and one validation on
2,000 users against the whole catalogue, in its own process. Reported: seconds per batch and the projected seconds
of a whole epoch (batches per epoch x seconds per batch), validation seconds per 1,000 users, and the peak resident
memory of the process (the run's ``peak_memory_mb``), which covers loading the corpus, building every training
window, the model, one epoch and the full-catalogue validation.

The work folder (default $TEXTREC_WORK/scaling, else ~/.cache/textrec-work/scaling) keeps the corpora between
runs. Writes benchmarks/results/scaling.json and the docs/RESULTS.md section of the same name.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, machine_line, save_result, update_results  # noqa: E402

SECTION = "scaling"
TITLE = "Pre-training cost against corpus size (synthetic corpora)"
VALID_USERS = 2000


def textrec(*args: str, threads: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-m", "textrec", *args, "--threads", str(threads)], env=env,
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"textrec {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out


def corpus(work: Path, users: int, items: int, threads: int) -> Path:
    out = work / f"corpus-{users}x{items}"
    if not (out / "codes" / "random.npy").is_file():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_corpus.py"), "--users", str(users), "--items",
                        str(items), "--out", str(out), "--overwrite"], check=True, capture_output=True)
        textrec("encode", str(out), "--encoder", "hashing-384", "--name", "hash384", "--no-cache", "--quiet", threads=threads)
        textrec("quantize", str(out), "--random", "--name", "random", "--quiet", threads=threads)
    return out


def measure(data: Path, model: str, batches: int, threads: int, work: Path) -> dict:
    run = work / "runs" / f"{data.name}-{model}"
    overrides = ["train.epochs=1", f"train.limit_batches={batches}", f"train.num_threads={threads}",
                 f"eval.valid_users={VALID_USERS}", "data.embeddings=hash384"]
    if model == "vqrec":
        overrides.append("data.codes=random")
    t0 = time.perf_counter()
    out = textrec("pretrain", str(data), "--model", model, "--out", str(run), "--overwrite", *overrides, threads=threads)
    wall = time.perf_counter() - t0
    targets = int(re.search(r"([\d,]+) training targets", out.stderr).group(1).replace(",", ""))  # the run's header
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    info = json.loads(textrec("info", str(data), "--json", threads=threads).stdout)
    return {"wall_seconds": wall, "train_seconds": record["train_seconds"], "eval_seconds": record["eval_seconds"],
            "peak_memory_mb": record["peak_memory_mb"], "users": info["users"], "items": info["items"],
            "interactions": info["interactions"], "epoch_targets": targets, "epoch_batches": -(-targets // 2048), "batches": batches}


def render(res: dict) -> str:
    lines = [f"## {TITLE}", "",
        f"Machine: {machine_line(res['machine'])}. Command: `{res['command']}`. Each row: `textrec pretrain` for one "
        f"epoch cut to {res['batches']} batches of 2,048 targets (`train.limit_batches`), {res['threads']} thread(s), "
        f"then one validation of {VALID_USERS:,} users against the whole catalogue; peak memory is the process's "
        "resident set over loading, windows, model, training and validation. Load average at the start: "
        f"{res['load_average']}.",
        "",
        "| model | users | items | interactions | s / batch | projected s / epoch (batches) | valid s per 1,000 users | peak memory GiB |",
        "|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in res["rows"]:
        per_batch = r["train_seconds"] / r["batches"]
        epoch = f"{per_batch * r['epoch_batches']:,.0f} ({r['epoch_batches']:,})" if r.get("epoch_batches") else "-"
        lines.append(f"| {r['model']} | {r['users']:,} | {r['items']:,} | {r['interactions']:,} | {per_batch:.2f} | {epoch} | "
                     f"{r['eval_seconds'] / VALID_USERS * 1000:.1f} | {r['peak_memory_mb'] / 1024:.2f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["20000:10000", "200000:100000", "1000000:500000"], metavar="USERS:ITEMS")
    p.add_argument("--models", nargs="+", default=["unisrec", "vqrec"], choices=["unisrec", "vqrec"])
    p.add_argument("--batches", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--work", type=Path)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    work = a.work or Path(os.environ.get("TEXTREC_WORK") or Path.home() / ".cache" / "textrec-work") / "scaling"
    work.mkdir(parents=True, exist_ok=True)
    rows = []
    load = os.getloadavg()[0]
    for size in a.sizes:
        users, items = (int(x) for x in size.split(":"))
        data = corpus(work, users, items, a.threads)
        for model in a.models:
            r = {"model": model, **measure(data, model, a.batches, a.threads, work)}
            rows.append(r)
            print(json.dumps(r), flush=True)
    res = {"command": "python benchmarks/scaling.py " + " ".join(x for x in sys.argv[1:] if "/" not in x),
           "batches": a.batches, "threads": a.threads, "load_average": round(load, 1), "rows": rows,
           "machine": {**machine(), "torch_threads": a.threads}}
    print(render(res))
    if not a.no_write:
        save_result(ROOT / "benchmarks" / "results" / "scaling.json", res)
        update_results(SECTION, render(res))


if __name__ == "__main__":
    main()
