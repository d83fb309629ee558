"""GPU check: one script to run on a machine with a CUDA GPU and this repository (about 8 minutes on one H100).

    python benchmarks/gpu_check.py                 # GPU: Scientific from ../shared/data, bf16 + torch.compile
    python benchmarks/gpu_check.py --no-recformer  # without the optional last step
    python benchmarks/gpu_check.py --smoke         # CPU fallback: tiny synthetic world, seconds (what the test runs)

Steps, each timed, each written to the JSON as soon as it finishes (an interrupted check keeps what it measured):

1. ``vqrec_run``: the whole VQ-Rec run on Scientific (the released codes), ``textrec train`` to early stop plus the
   test evaluation, timed end to end as a user would run it (process start, bf16 autocast, ``torch.compile``);
2. ``throughput``: training targets/s and evaluation users/s of SASRec, UniSRec and VQ-Rec through textrec's own
   loop (``fit`` for a few epochs, the first one, which compiles, left out), against a *plain-loop ceiling*
   measured in the same process on the same batches: a bare PyTorch causal Transformer of the same width
   and depth with a full-softmax loss, no textrec code in its step, and a bare full-ranking pass over the same
   validation users;
3. ``ddp``: the VQ-Rec run again with ``torchrun --nproc-per-node 2`` when the machine has two GPUs;
4. ``recformer_full`` (optional, last, only with time left): ``benchmarks/recformer_scientific.py --full --no-write``.

Writes ``--out`` (default ``benchmarks/results/gpu_check.json``) and a Markdown table next to it (``.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, SHARED_DATA, machine, machine_line  # noqa: E402

SCIENTIFIC = SHARED_DATA / "amazon-scientific-unisrec"
RELEASED = SCIENTIFIC / "Scientific.OPQ32,IVF1,PQ32x8.strict.index"
MODELS = ("sasrec", "unisrec", "vqrec")


def _env() -> dict:
    src = str(ROOT / "src")
    return {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1"}


def textrec(*args, launcher: list[str] | None = None, timeout: float | None = None) -> tuple[dict, float]:
    """(the --json report, wall seconds) of one textrec command in a fresh process."""
    cmd = [*(launcher or [sys.executable]), "-m", "textrec", *map(str, args)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), timeout=timeout)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    out = proc.stdout.strip()
    return (json.loads(out[out.find("{"):]) if "{" in out else {}), seconds


# ---- data -----------------------------------------------------------------------------------------


def scientific(work: Path) -> Path:
    """Scientific prepared, encoded with the embedded MiniLM, and the released VQ-Rec codes imported (once)."""
    sci = work / "scientific"
    if not (sci / "meta.json").exists():
        textrec("prepare", SCIENTIFIC, "--format", "unisrec", "--out", sci, "--overwrite", "--json")
    if not (sci / "embeddings").is_dir():
        textrec("encode", sci, "--json")
    if not (sci / "codes" / "released.npy").exists():
        textrec("quantize", sci, "--from-index", RELEASED, "--name", "released", "--json")
    return sci


def synthetic(work: Path) -> Path:
    """The CPU fallback's world: 60 items, 300 users, hashing text embeddings, random codes named ``released``."""
    from textrec.data.synthetic import WorldSpec, make_domain

    path = work / "synthetic"
    if not (path / "meta.json").exists():
        make_domain("tools", WorldSpec(n_items=60, n_users=300, min_len=5, max_len=20, noise=0.1), seed=1).save(path)
        textrec("encode", path, "--encoder", "hashing-32", "--json")
        textrec("quantize", path, "--random", "--codebooks", "4", "--codebook-size", "8", "--name", "released", "--json")
    return path


# ---- the plain-loop ceiling -----------------------------------------------------------------------


class Plain(torch.nn.Module):
    """A bare causal Transformer recommender: item embedding + positions -> encoder layers -> dot with the item table."""

    def __init__(self, n_items: int, d: int, layers: int, heads: int, inner: int, max_len: int) -> None:
        super().__init__()
        self.items = torch.nn.Embedding(n_items + 1, d, padding_idx=0)
        self.pos = torch.nn.Embedding(max_len, d)
        layer = torch.nn.TransformerEncoderLayer(d, heads, inner, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

    def hidden(self, seq: torch.Tensor) -> torch.Tensor:
        L = seq.shape[1]
        mask = torch.nn.Transformer.generate_square_subsequent_mask(L, device=seq.device)
        x = self.items(seq) + self.pos(torch.arange(L, device=seq.device))
        return self.encoder(x, mask=mask, is_causal=True)

    def loss(self, seq: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        h = self.hidden(seq)[targets > 0]
        return torch.nn.functional.cross_entropy((h @ self.items.weight[1:].T).float(), targets[targets > 0] - 1)


def plain_ceiling(train_b, valid_b, n_items: int, cfg, device: torch.device, amp: bool, epochs: int) -> dict:
    """Targets/s and users/s of ``Plain`` on textrec's own batches (the batches are built before timing)."""
    mc = cfg.model_config
    torch.manual_seed(0)
    model = Plain(n_items, mc.hidden_size, mc.n_layers, mc.n_heads, mc.inner_size, cfg.data.max_seq_len).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [train_b.batch(rows) for rows in train_b.plan()]
    targets = sum(int((b.targets > 0).sum()) for b in batches)
    seconds = []
    for _ in range(epochs):
        _sync(device)
        t0 = time.perf_counter()
        for b in batches:
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = model.loss(b.item_seq, b.targets)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        _sync(device)
        seconds.append(time.perf_counter() - t0)
    model.eval()
    _sync(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        table = model.items.weight[1:].float()
        for eb in valid_b:
            h = model.hidden(eb.batch.item_seq)[torch.arange(len(eb.targets), device=device), eb.batch.seq_len - 1].float()
            scores = h @ table.T
            _ = (scores >= scores.gather(1, (eb.targets - 1)[:, None])).sum(dim=1)
    _sync(device)
    eval_s = time.perf_counter() - t0
    best = min(seconds[1:] or seconds)
    return {"train_targets_per_s": targets / best, "eval_users_per_s": len(valid_b.order) / eval_s, "seconds_per_epoch": best}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(model_name: str, data: Path, device: torch.device, overrides: list[str], epochs: int) -> dict:
    """textrec's loop (``fit``) for ``epochs`` epochs against the plain ceiling on the same batches."""
    from textrec.config import load_config
    from textrec.data.dataset import Dataset
    from textrec.train.inputs import build_model, load_item_inputs
    from textrec.train.loop import fit, seed_everything
    from textrec.train.run import make_batchers

    cfg = load_config(model=model_name, overrides=[*overrides, f"train.epochs={epochs}", "train.eval_every=1",
                                                    f"train.patience={epochs + 1}"])
    ds = Dataset.load(data)
    inputs, _ = load_item_inputs(cfg, [data])
    seed_everything(cfg.train.seed)
    model = build_model(cfg, inputs).to(device)
    train_b, valid_b, _ = make_batchers(ds, cfg, device)
    res = fit(model, train_b, valid_b, None, cfg, None, quiet=True)
    steady = res.train_seconds[1:] or res.train_seconds  # the first epoch compiles
    per_epoch, per_eval = min(steady), min(res.eval_seconds[1:] or res.eval_seconds)
    amp = device.type == "cuda" and cfg.train.amp
    ceiling = plain_ceiling(train_b, valid_b, ds.n_items, cfg, device, amp, epochs)
    own = {"train_targets_per_s": train_b.total_targets / per_epoch, "eval_users_per_s": len(valid_b.order) / per_eval,
           "seconds_per_epoch": per_epoch, "first_epoch_seconds": res.train_seconds[0]}
    return {"textrec": own, "plain": ceiling,
            "train_fraction_of_ceiling": own["train_targets_per_s"] / ceiling["train_targets_per_s"],
            "eval_fraction_of_ceiling": own["eval_users_per_s"] / ceiling["eval_users_per_s"]}


# ---- the check ------------------------------------------------------------------------------------


def render(r: dict) -> str:
    lines = [f"GPU check: {machine_line(r['machine'])}; {r['setting']}.", ""]
    if "vqrec_run" in r:
        v = r["vqrec_run"]
        t = v["test"]
        lines += ["| step | wall s | epochs (best) | s/epoch | test R@10 | test N@10 |", "|---|---|---|---|---|---|",
                  f"| VQ-Rec whole run, 1 process | {v['wall_seconds']:.1f} | {v['epochs_run']} ({v['best_epoch']}) | "
                  f"{v['seconds_per_epoch']:.2f} | {t['recall@10']:.4f} | {t['ndcg@10']:.4f} |"]
        if "ddp" in r and "wall_seconds" in r["ddp"]:
            d = r["ddp"]
            lines.append(f"| VQ-Rec whole run, 2 processes (DDP) | {d['wall_seconds']:.1f} | {d['epochs_run']} ({d['best_epoch']}) | "
                         f"{d['seconds_per_epoch']:.2f} | {d['test']['recall@10']:.4f} | {d['test']['ndcg@10']:.4f} |")
        lines.append("")
    if r.get("throughput"):
        lines += ["| model | train targets/s | plain ceiling | share | eval users/s | plain ceiling | share |",
                  "|---|---|---|---|---|---|---|"]
        for name, x in r["throughput"].items():
            lines.append(f"| {name} | {x['textrec']['train_targets_per_s']:,.0f} | {x['plain']['train_targets_per_s']:,.0f} | "
                         f"{x['train_fraction_of_ceiling']:.2f} | {x['textrec']['eval_users_per_s']:,.0f} | "
                         f"{x['plain']['eval_users_per_s']:,.0f} | {x['eval_fraction_of_ceiling']:.2f} |")
        lines.append("")
    if "recformer_full" in r:
        rf = r["recformer_full"]
        lines.append(f"Recformer `--full`: {rf.get('status')} after {rf.get('wall_seconds', 0):.0f} s.")
    lines.append(f"Total {r.get('total_seconds', 0):.0f} s.")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="CPU fallback: tiny synthetic world, seconds (also used without CUDA)")
    p.add_argument("--out", type=Path, help="JSON to write (default benchmarks/results/gpu_check.json; --smoke: in --work)")
    p.add_argument("--work", type=Path, help="data and runs (default: a temporary folder)")
    p.add_argument("--budget", type=float, default=480, help="seconds; the optional Recformer step runs only within it")
    p.add_argument("--no-recformer", action="store_true")
    p.add_argument("--epochs", type=int, default=4, help="epochs of each throughput measurement (the first compiles)")
    args = p.parse_args()
    start = time.perf_counter()
    smoke = args.smoke or not torch.cuda.is_available()
    work = args.work or Path(tempfile.mkdtemp(prefix="textrec-gpu-check-"))
    out = args.out or (work / "gpu_check.json" if smoke else ROOT / "benchmarks" / "results" / "gpu_check.json")
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        data = synthetic(work)
        common = ["train.device=cpu", "train.num_threads=1", "model.hidden_size=32", "model.inner_size=32", "train.batch_size=256"]
        setting = "CPU fallback (--smoke): synthetic world of 60 items and 300 users, hidden 32, float32, eager"
        run_extra = [*common, "train.epochs=3"]
    else:
        data = scientific(work)
        common = ["train.device=cuda", "train.amp=true", "train.compile=true"]
        setting = "Scientific (8,442 users, 4,385 items), reference sizes, bf16 autocast, torch.compile"
        run_extra = common
    result: dict = {"machine": machine(), "setting": setting, "smoke": smoke}

    def save() -> None:
        result["total_seconds"] = time.perf_counter() - start
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        out.with_suffix(".md").write_text(render(result), encoding="utf-8")

    def whole_run(tag: str, launcher=None) -> dict:
        report, wall = textrec("train", data, "--model", "vqrec", "--out", work / "runs" / tag, "--overwrite", "--quiet", "--json",
                               "data.codes=released", *run_extra, launcher=launcher)
        keep = ("best_epoch", "epochs_run", "seconds_per_epoch", "seconds_per_eval", "test_eval_seconds", "peak_memory_mb", "valid", "test")
        return {"wall_seconds": wall, **{k: report.get(k) for k in keep}}

    result["vqrec_run"] = whole_run("vqrec")
    save()
    result["throughput"] = {}
    for name in MODELS:
        extra = ["data.codes=released"] if name == "vqrec" else []
        result["throughput"][name] = throughput(name, data, device, [*common, *extra], args.epochs)
        save()
    n_gpus = torch.cuda.device_count() if not smoke else 0
    if n_gpus >= 2:
        result["ddp"] = whole_run("vqrec-ddp", [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"])
    else:
        result["ddp"] = {"skipped": f"{n_gpus} GPU(s); the 2-process run needs two"}
    save()
    left = args.budget - (time.perf_counter() - start)
    if not smoke and not args.no_recformer:
        if left < 60:
            result["recformer_full"] = {"status": f"skipped ({left:.0f} s of the budget left)"}
        else:
            t0 = time.perf_counter()
            cmd = [sys.executable, str(ROOT / "benchmarks" / "recformer_scientific.py"), "--full", "--no-write", "--work", str(work / "recformer")]
            try:
                proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=left)
                status = "finished" if proc.returncode == 0 else f"failed ({proc.returncode}): {proc.stderr[-300:]}"
                tail = proc.stdout[-2000:]
            except subprocess.TimeoutExpired:
                status, tail = "stopped at the budget (partial)", ""
            result["recformer_full"] = {"status": status, "wall_seconds": time.perf_counter() - t0, "stdout_tail": tail}
    save()
    print(render(result), file=sys.stderr)
    print(json.dumps({"out": str(out), "total_seconds": result["total_seconds"]}))


if __name__ == "__main__":
    main()
