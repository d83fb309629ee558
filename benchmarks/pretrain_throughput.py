"""Pre-training throughput of UniSRec, VQ-Rec and MISSRec, this checkout against an earlier revision in one run.

    python benchmarks/pretrain_throughput.py --baseline REV [--data DIR ...] [--models unisrec vqrec] \
        [--batches 24] [--threads 1]

Each model pre-trains (its ``pretrain_loss``, backward, optimiser step: what ``textrec pretrain`` does per
batch) on ``--batches`` batches spread evenly over one epoch's plan of the merged ``--data`` domains
(domain-stratified batches, the pre-training defaults of the 2-core CPU recipe of ``seqrecbench.py``:
``data.long_sequences=chunked``), after two warm-up batches. The same batches run under the source tree of
``--baseline`` (exported with ``git archive`` into a temporary folder) and under this checkout, alternating
per model, each in its own process with ``--threads`` torch threads. Reported per model and tree: training
targets per second, the positions the Transformer computed (padded) against the real ones, and the projected
seconds of one epoch (the epoch's targets / targets per second); ``interactions_per_s`` divides the domains'
interactions by that projection, the figure the scale issue sets its goal in.

``--data`` defaults to the ten domains prepared by ``benchmarks/seqrecbench.py`` in its work folder
(``--work``, else $TEXTREC_WORK/seqrecbench, else ~/.cache/textrec-work/seqrecbench), with their
``minilm-mean`` embeddings and joint codes. Writes benchmarks/results/pretrain_throughput.json and the
docs/RESULTS.md section of the same name (``--no-write``: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine, machine_line, save_result, update_results  # noqa: E402

SECTION = "pretrain_throughput"
TITLE = "Pre-training throughput (the ten-domain corpus)"
MODEL_SETTINGS = {  # the corpus recipe's per-model settings (seqrecbench.PRETRAIN_MODEL), inputs named
    "unisrec": ["data.embeddings=minilm-mean"],
    "vqrec": ["data.embeddings=minilm-mean", "data.codes=minilm-mean-opq32x256-joint"],
    "missrec": ["data.embeddings=minilm-mean", "model.mode=inductive", "model.text_feature=embeddings",
                "model.image_feature=", "train.batch_size=512"],
}
COMMON = ["data.long_sequences=chunked", "train.device=cpu"]
VALID_USERS = 2000  # validation users ranked against the whole merged catalogue, per model and tree

# what one measuring process runs, under the source tree on its PYTHONPATH (only library calls both trees have)
MEASURE = r"""
import json, resource, sys, time
import torch
from pathlib import Path
from textrec.config import load_config
from textrec.data.dataset import Dataset
from textrec.data.multidomain import domain_of_rows, merge_domains
from textrec.train.inputs import build_model, load_item_inputs
from textrec.train.loop import make_optimizer, seed_everything
from textrec.train.run import make_batchers
try:  # the positions the encoder computes: per group of similar length where the tree groups rows
    from textrec.models.layers import length_groups
    def computed(seq_len, width):
        return sum(len(rows) * w for rows, w in length_groups(seq_len))
except ImportError:
    def computed(seq_len, width):
        return len(seq_len) * width

args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
dirs = [Path(d) for d in args["data"]]
cfg = load_config(model=args["model"], overrides=args["overrides"])
datasets = [Dataset.load(d) for d in dirs]
merged, _ = merge_domains(datasets)
inputs, _ = load_item_inputs(cfg, dirs, pretraining=True)
seed_everything(cfg.train.seed)
model = build_model(cfg, inputs)
train_b, _, _ = make_batchers(merged, cfg, torch.device("cpu"), pretraining=True, domains=domain_of_rows(datasets))
loss_fn = model.phases("pretrain")[0].loss
optimizer = make_optimizer(model, cfg.train)
plan = train_b.plan()
every = max(1, len(plan) // (args["batches"] + 2))
chosen = plan[::every][: args["batches"] + 2]
model.train()
targets = real = padded = 0
seconds = cpu_seconds = 0.0
for i, rows in enumerate(chosen):
    batch = train_b.batch(rows)
    t0, c0 = time.perf_counter(), time.process_time()
    loss = loss_fn(batch)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if i >= 2:  # two warm-up batches
        seconds += time.perf_counter() - t0
        cpu_seconds += time.process_time() - c0
        targets += int((batch.targets > 0).sum())
        real += int(batch.seq_len.clamp(min=1).sum())
        padded += computed(batch.seq_len, batch.item_seq.shape[1])
# validation: VALID users of the merged validation split ranked against the whole merged catalogue
import dataclasses
import numpy as np
from textrec.data.batching import EvalBatcher
from textrec.data.split import eval_examples
from textrec.eval.ranking import evaluate
examples = eval_examples(merged, "valid", cfg.data.max_seq_len)
keep = np.sort(np.random.default_rng(0).choice(len(examples.users), size=min(args["valid"], len(examples.users)), replace=False))
examples = dataclasses.replace(examples, histories=examples.histories[keep], lengths=examples.lengths[keep],
                               targets=examples.targets[keep], users=examples.users[keep])
model.eval()
t0, c0 = time.perf_counter(), time.process_time()
evaluate(model, EvalBatcher(examples, cfg.eval.batch_size, "cpu"), cfg.eval.ks, item_chunk=cfg.eval.item_chunk)
valid_seconds, valid_cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
print(json.dumps({
    "valid_users": len(keep), "valid_seconds": valid_seconds, "valid_cpu_seconds": valid_cpu_seconds,
    "cpu_seconds": cpu_seconds,
    "targets": targets, "seconds": seconds, "real_positions": real, "padded_positions": padded,
    "epoch_targets": train_b.total_targets, "epoch_batches": len(plan),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
}))
"""


def default_data(work: str | None) -> list[Path]:
    root = Path(work or os.environ.get("TEXTREC_WORK", "") and Path(os.environ["TEXTREC_WORK"]) / "seqrecbench"
                or Path.home() / ".cache" / "textrec-work" / "seqrecbench")
    return sorted(p for p in (root / "data").iterdir() if (p / "meta.json").is_file())


def export_revision(rev: str, into: Path) -> Path:
    """The source tree of git revision ``rev``, unpacked under ``into``: its ``src`` folder."""
    archive = into / "src.tar"
    with open(archive, "wb") as f:
        subprocess.run(["git", "-C", str(ROOT), "archive", rev, "src"], stdout=f, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    return into / "src"


def measure(src: Path, model: str, data: list[Path], batches: int, threads: int) -> dict:
    args = {"model": model, "overrides": COMMON + MODEL_SETTINGS[model], "data": [str(d) for d in data],
            "batches": batches, "threads": threads, "valid": VALID_USERS}
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": str(threads)}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(args)], env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"measuring {model} under {src} failed:\n{out.stderr[-3000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    # on a shared machine wall time depends on what else runs; with one thread, CPU time is the process's own work
    r["targets_per_s"] = r["targets"] / r["seconds"]
    r["targets_per_cpu_s"] = r["targets"] / r["cpu_seconds"]
    r["epoch_seconds"] = r["epoch_targets"] / r["targets_per_s"]
    r["epoch_cpu_seconds"] = r["epoch_targets"] / r["targets_per_cpu_s"]
    r["padded_over_real"] = r["padded_positions"] / r["real_positions"]
    return r


def interactions_of(data: list[Path]) -> int:
    from textrec.data.dataset import Dataset

    return sum(int(Dataset.load(d).n_interactions) for d in data)


def render(res: dict) -> str:
    lines = [f"## {TITLE}", "",
        f"Machine: {machine_line(res['machine'])}. Command: `{res['command']}`; baseline = git revision "
        f"`{res['baseline']}` (before), this checkout = `{res['revision']}` (after), each model in its own process with "
        f"{res['threads']} torch thread(s), the same {res['batches']} batches spread over one epoch's plan, after two "
        f"warm-up batches. {res['domains']} domains, {res['interactions']:,} interactions, "
        f"{res['rows']['unisrec' if 'unisrec' in res['rows'] else next(iter(res['rows']))]['after']['epoch_targets']:,} "
        "training targets an epoch (at most 8 per window, `data.pretrain_targets_per_row`). Load average at the "
        f"start: {res.get('load_average', '?')} (before and after share whatever else ran, alternating per model).",
        "",
        "| model | targets per CPU s, before -> after | speed-up (CPU) | speed-up (wall) | positions computed / real "
        "(before -> after) | projected epoch, CPU min (before -> after) | interactions per CPU s (after) | "
        "validation CPU s per 1,000 users (before -> after) |",
        "|---|---|---:|---:|---|---|---:|---|",
    ]
    for model, row in res["rows"].items():
        b, a = row["before"], row["after"]
        lines.append(
            f"| {model} | {b['targets_per_cpu_s']:,.0f} -> {a['targets_per_cpu_s']:,.0f} | "
            f"{a['targets_per_cpu_s'] / b['targets_per_cpu_s']:.2f}x | {a['targets_per_s'] / b['targets_per_s']:.2f}x | "
            f"{b['padded_over_real']:.2f} -> {a['padded_over_real']:.2f} | {b['epoch_cpu_seconds'] / 60:.1f} -> "
            f"{a['epoch_cpu_seconds'] / 60:.1f} | {res['interactions'] / a['epoch_cpu_seconds']:,.0f} | "
            f"{b['valid_cpu_seconds'] / b['valid_users'] * 1000:.1f} -> {a['valid_cpu_seconds'] / a['valid_users'] * 1000:.1f} |")
    lines += ["", "CPU seconds are the measuring process's own (one torch thread): on a machine shared with other work they "
              "measure the work done, where wall seconds also count the waits; the wall-clock speed-up is beside them. "
              "Positions computed / real: the after column counts what the grouped encoder computes "
              "(`layers.by_length`: groups of rows of similar length), the before column the padded batch."]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", required=True, help="git revision to compare against (e.g. HEAD~3)")
    p.add_argument("--data", nargs="*", help="dataset directories (default: seqrecbench.py's ten domains)")
    p.add_argument("--work", help="seqrecbench.py's work folder")
    p.add_argument("--models", nargs="+", default=["unisrec", "vqrec"], choices=sorted(MODEL_SETTINGS))
    p.add_argument("--batches", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-write", action="store_true")
    a = p.parse_args()
    data = [Path(d) for d in a.data] if a.data else default_data(a.work)
    revision = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True).stdout.strip()
    rows = {}
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        before_src = export_revision(a.baseline, Path(tmp))
        for model in a.models:
            rows[model] = {"before": measure(before_src, model, data, a.batches, a.threads),
                           "after": measure(ROOT / "src", model, data, a.batches, a.threads)}
            b, af = rows[model]["before"], rows[model]["after"]
            print(f"{model}: {b['targets_per_cpu_s']:,.0f} -> {af['targets_per_cpu_s']:,.0f} targets per CPU s "
                  f"({af['targets_per_cpu_s'] / b['targets_per_cpu_s']:.2f}x; wall {af['targets_per_s'] / b['targets_per_s']:.2f}x); "
                  f"projected epoch {b['epoch_cpu_seconds'] / 60:.1f} -> {af['epoch_cpu_seconds'] / 60:.1f} CPU min", flush=True)
    res = {
        "command": "python benchmarks/pretrain_throughput.py " + " ".join(
            x for x in sys.argv[1:] if not x.startswith("/") and "/" not in x),
        "baseline": a.baseline, "revision": revision + ("+changes" if dirty else ""), "threads": a.threads,
        "batches": a.batches, "domains": len(data), "interactions": interactions_of(data), "rows": rows,
        "machine": {**machine(), "torch_threads": a.threads}, "load_average": round(load, 1),
    }
    print(render(res))
    if not a.no_write:
        save_result(ROOT / "benchmarks" / "results" / "pretrain_throughput.json", res)
        update_results(SECTION, render(res))


if __name__ == "__main__":
    main()
