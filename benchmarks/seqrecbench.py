"""SeqRecBench: prepare, encode, quantise and pre-train on the ten domains of ../shared/data/seqrecbench.

A resumable recipe (project issue 13): every step is a `textrec` command run in a subprocess, logged to
WORK/logs/, and recorded when it succeeds in a done-marker WORK/done/<step>[-<domain>].json (the command, its
seconds, its peak resident memory, its printed summary), so a rerun skips what is complete and redoes what
was interrupted: prepare replaces a partial dataset (`--overwrite`), encode finds the texts it already
encoded in the embedding cache (~/.cache/textrec/embeddings; it fills the cache one whole domain at a time),
pretrain continues from the run's last epoch (`--resume`). The ~4.1M interactions take a few minutes to
prepare; MiniLM encodes titles at ~345 a second on 2 CPU threads (measured: the 93,597 new titles of
`--max-users 2000` in 271 s, model loading included), so the ~196k titles take about ten minutes.

    nohup nice -n 19 python benchmarks/seqrecbench.py --steps prepare,encode --threads 1 > /tmp/seqrecbench.log 2>&1 &
    python benchmarks/seqrecbench.py --steps quantize,pretrain-vqrec,pretrain-unisrec,pretrain-missrec --threads 2 --pt-epochs 10
    python benchmarks/seqrecbench.py --steps quantize,pretrain-vqrec --exclude amazon2018-electronic_1000000,amazon2018-game
    python benchmarks/seqrecbench.py --steps quantize,pretrain-vqrec --exclude food,steam_100000,movielens-1m
    python benchmarks/seqrecbench.py --dry-run        # the commands still to run, and the per-domain counts
    python benchmarks/seqrecbench.py --max-users 5000 # a CPU-sized corpus: 5,000 sampled users per domain
    python benchmarks/seqrecbench.py --max-users 2000 --steps "" --results   # write what is done to docs/RESULTS.md
    python benchmarks/seqrecbench.py --max-users 200 --steps prepare,pretrain-recformer --threads 1 --pt-epochs 4 \
        --pt-set train.amp_cpu=true train.eval_every=2   # Recformer (never a default step): a small sample on CPU

``--results`` writes the record of the work folder (per-domain counts, every step's seconds and peak memory, each
pre-training's curve: loss and merged-validation N@10 by epoch) to benchmarks/results/seqrecbench[_uN].json and to the
docs/RESULTS.md section of the same name, with the work folder written as $PT_WORK.

WORK is --work, else $TEXTREC_WORK/seqrecbench, else ~/.cache/textrec-work/seqrecbench: outside the
repository, whose work tree is recreated each session. It holds data/<domain>/ (prepared datasets with
their embeddings and codes), quant/<codes>.index (the joint quantiser), runs/<model>-pt[-<variant>]/,
logs/, done/ and summary.json (per-domain counts read back with `textrec info --json`, every marker).

Leaving domains out (--exclude, or a subset with --domains) is a variant: its joint quantiser is fitted on
the included domains only, under its own codes name, and its runs are named after what is left out, e.g.
runs/vqrec-pt-no-amazon2018 (a whole family of domains is named by its prefix) or
runs/vqrec-pt-no-food-movielens-steam.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from textrec.io import write_json

from _common import (
    ROOT,
    SHARED_DATA,
    machine,
    machine_line,
    save_result,
    update_results,
)

STEPS = ("prepare", "encode", "quantize", "pretrain-unisrec", "pretrain-vqrec", "pretrain-missrec", "pretrain-recformer")
DEFAULT_STEPS = STEPS[:-1]  # Recformer reads tokens, not embeddings, and costs far more: asked for by name
# per-model settings of the corpus pre-training: MISSRec reads the text embeddings as its only modality (no images)
PRETRAIN_MODEL = {
    "missrec": ["model.mode=inductive", "model.text_feature=embeddings", "model.image_feature=", "train.batch_size=512"],
    # the reference's pre-training (REFERENCE_NOTES section 4: AdamW 5e-5, linear decay, no warm-up, clip 1.0, batch 16
    # per GPU x 4 GPUs all-gathered: 64 in-batch pairs) at the CPU budgets of recformer_scientific.py's reduced setting
    "recformer": ["model.max_token_num=128", "model.max_attr_length=16", "train.optimizer=adamw", "train.lr=5e-5",
                  "train.schedule=linear", "train.warmup_steps=0", "train.grad_clip=1.0", "train.batch_size=64"],
}
# (inductive: pre-training reads the modalities only, as the reference; a transductive model would carry an unused
# item-ID table for every source item and could not be run zero-shot on another catalogue)
CSV_FLAGS = ["--format", "csv", "--user-col", "user", "--item-col", "item", "--time-col", "timestamp", "--text-col", "title"]
# what the 2-core CPU needs beyond the models' defaults; --pt-set adds or overrides keys
PRETRAIN_CPU = ["data.long_sequences=chunked"]  # MovieLens' 165-item histories: one row per 50-item chunk


class StepFailed(Exception):
    pass


def default_work() -> Path:
    base = os.environ.get("TEXTREC_WORK")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "textrec-work") / "seqrecbench"


def find_domains(source: Path) -> list[str]:
    if not source.is_dir():
        sys.exit(f"seqrecbench: no source folder {source}")
    return sorted(p.name for p in source.iterdir() if (p / "interactions.tsv.gz").is_file() and (p / "items.tsv.gz").is_file())


def family(domain: str) -> str:
    return re.split(r"[-_]", domain)[0]  # amazon2018-game -> amazon2018, steam_100000 -> steam


def variant_tag(available: list[str], included: list[str]) -> str:
    """'' for all domains; else 'no-...' naming those left out (or 'only-...' naming those kept, when shorter)."""
    if set(included) == set(available):
        return ""

    def names(chosen: list[str]) -> str:
        out: list[str] = []
        for d in (d for d in available if d in chosen):
            whole = all(x in chosen for x in available if family(x) == family(d))
            name = family(d) if whole else re.sub(r"_\d+$", "", d)  # a sampled domain without its "_N"
            if name not in out:
                out.append(name)
        return "-".join(out)

    no = "no-" + names([d for d in available if d not in included])
    only = "only-" + names(included)
    return no if len(no) <= len(only) else only


def thread_env(n: int) -> dict[str, str]:
    """Thread limits for torch, faiss, BLAS and the tokenizer; sparse progress bars in the logs."""
    env = {k: str(n) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")}
    return {**env, "TOKENIZERS_PARALLELISM": "true" if n > 1 else "false", "TQDM_MININTERVAL": "10"}


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def content_hash(data_dir: Path) -> str | None:
    return (read_json(data_dir / "meta.json") or {}).get("content_hash")


def split_names(values: list[str] | None) -> list[str] | None:
    return None if values is None else [x for v in values for x in v.split(",") if x]


class Recipe:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.source = Path(args.source).resolve()
        self.work = Path(args.work).expanduser().resolve()
        self.available = find_domains(self.source)
        chosen = split_names(args.domains) or self.available
        excluded = split_names(args.exclude) or []
        unknown = [d for d in chosen + excluded if d not in self.available]
        if unknown:
            sys.exit(f"seqrecbench: unknown domain {unknown[0]!r} (domains in {self.source}: {', '.join(self.available)})")
        self.domains = [d for d in self.available if d in chosen and d not in excluded]
        if not self.domains:
            sys.exit("seqrecbench: no domain left to work on")
        self.tag = variant_tag(self.available, self.domains)
        self.emb = args.emb_name or ("minilm" if args.encoder == "minilm" else re.sub(r"[^A-Za-z0-9]+", "-", args.encoder).strip("-")) + "-mean"
        self.codes = f"{self.emb}-opq{args.codebooks}x{args.codebook_size}-joint" + (f"-{self.tag}" if self.tag else "")
        self.child: subprocess.Popen | None = None
        self.section = "seqrecbench" + (f"_u{args.max_users}" if args.max_users else "")

    # ---- running commands --------------------------------------------------------------------------
    def data_dir(self, domain: str) -> Path:
        return self.work / "data" / domain

    def marker(self, name: str) -> Path:
        return self.work / "done" / f"{name}.json"

    def textrec(self, log: str, args: list, json_out: bool = True, nproc: int = 1) -> dict | None:
        """Run ``textrec ARGS`` with its output appended to WORK/logs/LOG.{stdout,stderr}; None on --dry-run.
        ``nproc`` > 1: under ``torchrun --standalone --nproc-per-node NPROC`` (data-parallel, one process per core)."""
        args = [str(a) for a in args] + (["--json"] if json_out else [])
        launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
        line = ("torchrun --standalone --nproc-per-node {} -m ".format(nproc) if nproc > 1 else "") + "textrec " + " ".join(
            shlex.quote(a) for a in args)
        if self.args.dry_run:
            print(f"would run: {line}")
            return None
        logs = self.work / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        stamp = f"=== {dt.datetime.now().isoformat(timespec='seconds')} {line}\n"
        print(f"running: {line}  (log: {logs / log}.stderr)", flush=True)
        t0 = time.perf_counter()
        with open(logs / f"{log}.stdout", "a") as out, open(logs / f"{log}.stderr", "a") as err:
            out.write(stamp), err.write(stamp)
            out.flush(), err.flush()
            start = out.tell()
            self.child = subprocess.Popen([sys.executable, *launcher, "-m", "textrec.cli", *args], stdout=out, stderr=err,
                                          env={**os.environ, **thread_env(self.args.threads)})
            _, status, usage = os.wait4(self.child.pid, 0)  # this child's own rusage: its peak memory
            self.child.returncode = rc = os.waitstatus_to_exitcode(status)
            self.child = None
        seconds = time.perf_counter() - t0
        stderr_tail = (logs / f"{log}.stderr").read_text(errors="replace").replace("\r", "\n").rstrip().splitlines()[-3:]
        if rc != 0:
            raise StepFailed(f"{line} exited with status {rc} after {seconds:.0f}s; end of {logs / log}.stderr:\n  " + "\n  ".join(stderr_tail))
        with open(logs / f"{log}.stdout") as f:
            f.seek(start)
            printed = f.read().strip()
        record = {"command": line, "seconds": round(seconds, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
                  "finished": dt.datetime.now().isoformat(timespec="seconds")}
        if json_out:
            record["summary"] = json.loads(printed[printed.rfind("\n{") + 1:] if not printed.startswith("{") else printed)
        else:
            record["summary"] = stderr_tail[-1] if stderr_tail else ""
        return record

    def interrupt(self, signum, frame) -> None:
        if self.child is not None and self.child.returncode is None:
            self.child.terminate()  # the step reruns next time; its done-marker was not written
        sys.exit(128 + signum)

    # ---- steps -------------------------------------------------------------------------------------
    def prepare(self, domain: str) -> None:
        src, out = self.source / domain, self.data_dir(domain)
        files = {f.name: [f.stat().st_size, f.stat().st_mtime_ns] for f in (src / "interactions.tsv.gz", src / "items.tsv.gz")}
        done = read_json(self.marker(f"prepare-{domain}"))
        if done and done["source_files"] == files and done["content_hash"] == content_hash(out) and "prepare" not in self.args.redo:
            print(f"prepare {domain}: done earlier (took {done['seconds']:.0f}s)")
            return
        sample = ["--max-users", self.args.max_users] if self.args.max_users else []
        rec = self.textrec(f"prepare-{domain}", ["prepare", src, *CSV_FLAGS, *sample, "--name", domain, "--out", out, "--overwrite"])
        if rec is None:
            return
        info = self.textrec(f"info-{domain}", ["info", out])["summary"]
        expected = read_json(src / "counts.json")
        rec.update(domain=domain, content_hash=content_hash(out), source_files=files, expected=expected,
                   info={k: info[k] for k in ("users", "items", "interactions", "avg_seq_len", "max_seq_len", "avg_text_words")})
        write_json(self.marker(f"prepare-{domain}"), rec)
        if expected and not self.args.max_users and any(info[k] != expected.get(k) for k in ("users", "items", "interactions")):
            print(f"prepare {domain}: counts differ from {src / 'counts.json'}: {rec['info']} vs {expected}")

    def encode(self, domain: str) -> None:
        out = self.data_dir(domain)
        prepared = read_json(self.marker(f"prepare-{domain}"))
        if not prepared or prepared["content_hash"] != content_hash(out):
            self.missing(f"encode {domain}: the dataset is not prepared (run --steps prepare first)")
        done = read_json(self.marker(f"encode-{domain}-{self.emb}"))
        emb_info = read_json(out / "embeddings" / f"{self.emb}.json") or {}
        if done and done["content_hash"] == emb_info.get("dataset_content_hash") == content_hash(out) and "encode" not in self.args.redo:
            print(f"encode {domain}: done earlier (took {done['seconds']:.0f}s)")
            return
        args = ["encode", out, "--encoder", self.args.encoder, "--name", self.emb]
        rec = self.textrec(f"encode-{domain}", args + (["--batch-size", self.args.batch_size] if self.args.batch_size else []), json_out=False)
        if rec is None:
            return
        emb_info = read_json(out / "embeddings" / f"{self.emb}.json")
        rec.update(domain=domain, embeddings=self.emb, content_hash=emb_info["dataset_content_hash"],
                   encoded={k: emb_info[k] for k in ("n_items", "dim", "distinct_texts", "n_encoded", "n_cached", "seconds")})
        write_json(self.marker(f"encode-{domain}-{self.emb}"), rec)

    def missing(self, problem: str) -> None:
        """A missing input stops the recipe; a dry run notes it and goes on listing commands."""
        if not self.args.dry_run:
            raise StepFailed(problem)
        print(f"(dry run, not ready) {problem}")

    def inputs(self, step: str) -> dict[str, str]:
        """Content hash of each included domain, after checking that it is encoded."""
        hashes = {d: (read_json(self.marker(f"encode-{d}-{self.emb}")) or {}).get("content_hash") for d in self.domains}
        todo = [d for d, h in hashes.items() if h is None or h != content_hash(self.data_dir(d))]
        if todo:
            self.missing(f"{step}: no {self.emb!r} embeddings yet for {', '.join(todo)} (run --steps prepare,encode first)")
        return hashes

    def quantize(self) -> None:
        hashes = self.inputs("quantize")
        index = self.work / "quant" / f"{self.codes}.index"
        done = read_json(self.marker(f"quantize-{self.codes}"))
        present = index.exists() and all((self.data_dir(d) / "codes" / f"{self.codes}.npy").exists() for d in self.domains)
        if done and done["inputs"] == hashes and present and "quantize" not in self.args.redo:
            print(f"quantize {self.codes}: done earlier (took {done['seconds']:.0f}s)")
            return
        index.parent.mkdir(parents=True, exist_ok=True)
        rec = self.textrec(f"quantize-{self.codes}", ["quantize", *map(self.data_dir, self.domains), "--embeddings", self.emb,
                                                      "--codebooks", self.args.codebooks, "--codebook-size", self.args.codebook_size,
                                                      "--name", self.codes, "--out-index", index])
        if rec is not None:
            write_json(self.marker(f"quantize-{self.codes}"), {**rec, "inputs": hashes, "index": str(index)})

    def pretrain(self, model: str) -> None:
        overrides = [f"train.epochs={self.args.pt_epochs}", f"train.num_threads={self.args.threads}"]
        if model == "recformer":  # reads the item attributes' tokens: prepared is enough
            hashes = {d: content_hash(self.data_dir(d)) for d in self.domains}
            if None in hashes.values():
                self.missing("pretrain-recformer: not prepared yet: " + ", ".join(d for d, h in hashes.items() if h is None))
        else:
            hashes = self.inputs(f"pretrain-{model}")
            overrides.append(f"data.embeddings={self.emb}")
        if model == "vqrec":
            quant = read_json(self.marker(f"quantize-{self.codes}"))
            if not quant or quant["inputs"] != hashes:
                self.missing(f"pretrain-vqrec: no joint codes {self.codes!r} for these domains (run --steps quantize first)")
            overrides.append(f"data.codes={self.codes}")
        name = f"{model}-pt" + (f"-{self.tag}" if self.tag else "")
        run = self.work / "runs" / name
        done = read_json(self.marker(f"pretrain-{name}"))
        if done and (run / "metrics.json").exists() and "pretrain-" + model not in self.args.redo:
            print(f"pretrain {name}: done earlier (took {done['seconds']:.0f}s)")
            return
        if "pretrain-" + model in self.args.redo:
            again = ["--overwrite"]
        else:
            again = ["--resume"] if run.is_dir() and any(run.iterdir()) else []
        rec = self.textrec(f"pretrain-{name}", ["pretrain", *map(self.data_dir, self.domains), "--model", model, "--out", run,
                                                *again, *PRETRAIN_CPU, *PRETRAIN_MODEL.get(model, []), *overrides,
                                                *self.args.pt_set], nproc=self.args.nproc)
        if rec is not None:
            write_json(self.marker(f"pretrain-{name}"), {**rec, "inputs": hashes, "run": str(run)})

    # ---- summary -----------------------------------------------------------------------------------
    def summary(self) -> dict:
        """Every domain's prepare/encode markers and every other marker under WORK/done, as WORK/summary.json."""
        domains = {}
        for d in self.available:
            prep, enc = read_json(self.marker(f"prepare-{d}")), read_json(self.marker(f"encode-{d}-{self.emb}"))
            domains[d] = {"prepared": prep and prep["info"], "expected": prep and prep["expected"],
                          "prepare_seconds": prep and prep["seconds"], "prepare_peak_rss_mb": prep and prep["peak_rss_mb"],
                          "encode": enc and {**enc["encoded"], "wall_seconds": enc["seconds"], "peak_rss_mb": enc["peak_rss_mb"]},
                          "dir": str(self.data_dir(d))}
        others = sorted(p for p in (self.work / "done").glob("*.json") if not p.name.startswith(("prepare-", "encode-")))
        result = {"work": str(self.work), "source": str(self.source), "embeddings": self.emb, "domains": domains,
                  "steps": {p.stem: read_json(p) for p in others}, "argv": sys.argv,
                  "updated": dt.datetime.now().isoformat(timespec="seconds")}
        if not self.args.dry_run:
            write_json(self.work / "summary.json", result)
        return result

    def print_table(self, result: dict) -> None:
        rows = ["| domain | users | items | interactions | = counts.json | prepare s | encode s | encoded / cached |",
                "|---|---:|---:|---:|---|---:|---:|---|"]
        total = [0, 0, 0]
        for d, r in result["domains"].items():
            p, e = r["prepared"], r["encode"]
            if not p:
                rows.append(f"| {d} | - | - | - | - | - | - | - |")
                continue
            total = [t + p[k] for t, k in zip(total, ("users", "items", "interactions"))]
            same = "-" if not r["expected"] else "yes" if all(p[k] == r["expected"].get(k) for k in ("users", "items", "interactions")) else "no"
            enc = f"{e['wall_seconds']:.0f} | {e['n_encoded']:,} / {e['n_cached']:,}" if e else "- | -"
            rows.append(f"| {d} | {p['users']:,} | {p['items']:,} | {p['interactions']:,} | {same} | {r['prepare_seconds']:.0f} | {enc} |")
        rows.append(f"| **total** | {total[0]:,} | {total[1]:,} | {total[2]:,} | | | | |")
        print("\n".join(rows))
        print(f"work folder: {self.work} (summary.json)")


def shorten(text: str, recipe: Recipe) -> str:
    """No machine paths in committed files: the work folder as $PT_WORK, the corpus relative to the repository."""
    source = os.path.relpath(recipe.source, ROOT)
    return text.replace(str(recipe.work), "$PT_WORK").replace(str(recipe.source), source)


def _last_command(log: Path) -> str:
    """The command line of the latest start stamped in a step's log (``=== TIME COMMAND``)."""
    stamps = [x for x in log.read_text(errors="replace").splitlines() if x.startswith("=== ")] if log.is_file() else []
    return stamps[-1].split(" ", 2)[2] if stamps else "?"


def record(recipe: Recipe) -> dict:
    """What the work folder holds, for benchmarks/results: counts, step costs, pre-training curves, commands."""
    summary = recipe.summary()
    domains = {d: {k: r[k] for k in ("prepared", "prepare_seconds", "prepare_peak_rss_mb", "encode")} for d, r in summary["domains"].items()}
    steps = {}
    for name, rec in sorted(summary["steps"].items(), key=lambda kv: (kv[1] or {}).get("finished") or ""):  # as they ran
        if not rec:
            continue
        entry = {"command": shorten(rec["command"], recipe), "seconds": rec["seconds"], "peak_rss_mb": rec["peak_rss_mb"],
                 "finished": rec.get("finished")}
        run = Path(rec["run"]) if rec.get("run") else None
        if run is not None and (run / "metrics.json").exists():
            m = json.loads((run / "metrics.json").read_text())
            log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
            entry.update(epochs_run=m.get("epochs_run"), best_epoch=m.get("best_epoch"), seconds_per_epoch=m.get("seconds_per_epoch"),
                         valid=m.get("valid"), curve=[{"epoch": r["epoch"], "loss": r.get("loss"),
                                                       "valid_ndcg@10": (r.get("valid") or {}).get("ndcg@10")} for r in log])
        if name.startswith("quantize-"):
            entry["collisions"] = sum(x.get("collisions", 0) for x in rec["summary"].get("results", []))
        steps[name] = entry
    finished_runs = {Path(rec["run"]).name for rec in summary["steps"].values() if rec and rec.get("run")}
    for run in sorted((recipe.work / "runs").glob("*")) if (recipe.work / "runs").is_dir() else []:
        if run.name in finished_runs or not (run / "log.jsonl").is_file():
            continue
        # a pre-training still running (or stopped before its end): its epochs so far, from its log
        log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
        if not log:
            continue
        seconds = sum(r.get("train_seconds", 0) + r.get("eval_seconds", 0) for r in log)
        peaks = [r["peak_memory_mb"] for r in log if r.get("peak_memory_mb")]
        steps[f"pretrain-{run.name} (running)"] = {
            "command": shorten(_last_command(recipe.work / "logs" / f"pretrain-{run.name}.stderr"), recipe),
            "seconds": seconds, "peak_rss_mb": max(peaks) if peaks else None, "running": True,
            "epochs_run": len(log), "best_epoch": max(log, key=lambda r: (r.get("valid") or {}).get("ndcg@10", -1))["epoch"],
            "seconds_per_epoch": seconds / len(log),
            "train_seconds_per_epoch": sum(r.get("train_seconds", 0) for r in log) / len(log),
            "curve": [{"epoch": r["epoch"], "loss": r.get("loss"), "valid_ndcg@10": (r.get("valid") or {}).get("ndcg@10")}
                      for r in log]}
    return {"section": recipe.section, "machine": machine(), "work": recipe.work.name, "max_users": recipe.args.max_users,
            "domains": domains, "steps": steps, "runs": {}, "commands": [], "argv": [Path(sys.argv[0]).name] + [shorten(a, recipe) for a in sys.argv[1:]]}


def render(r: dict) -> str:
    n = r.get("max_users")
    title = f"## The SeqRecBench pre-training corpus{f' (a sample of {n:,} users per domain)' if n else ''}: recipe costs and curves"
    lines = [title, "", (f"Machine: {machine_line(r['machine'])}. Script: `python benchmarks/{shlex.join(r['argv'])}` "
                         f"(work folder `{r['work']}`, written `$PT_WORK` below)."), "",
             "| domain | users | items | interactions | mean length | encode s | titles encoded / from the cache |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    total = [0, 0, 0, 0.0]
    for d, x in r["domains"].items():
        p, e = x["prepared"], x["encode"]
        if not p:
            lines.append(f"| {d} | - | - | - | - | - | - |")
            continue
        enc = f"{e['wall_seconds']:.0f} | {e['n_encoded']:,} / {e['n_cached']:,}" if e else "- | -"
        total = [total[0] + p["users"], total[1] + p["items"], total[2] + p["interactions"], total[3] + (e["wall_seconds"] if e else 0)]
        lines.append(f"| {d} | {p['users']:,} | {p['items']:,} | {p['interactions']:,} | {p['avg_seq_len']:.1f} | {enc} |")
    lines += [f"| **total** | {total[0]:,} | {total[1]:,} | {total[2]:,} | | {total[3]:.0f} | |", "",
              "| step | seconds | peak memory (MB) | epochs (best) | s / epoch | merged-validation N@10 by epoch |",
              "|---|---:|---:|---|---:|---|"]
    for name, x in r["steps"].items():
        curve = " ".join(f"{c['valid_ndcg@10']:.4f}" for c in x.get("curve", []) if c.get("valid_ndcg@10") is not None)
        epochs = f"{x['epochs_run']} ({x['best_epoch']})" if x.get("epochs_run") else "-"
        spe = f"{x['seconds_per_epoch']:.0f}" if x.get("seconds_per_epoch") else "-"
        peak = f"{x['peak_rss_mb']:,.0f}" if x.get("peak_rss_mb") else "-"
        lines.append(f"| {name} | {x['seconds']:.0f} | {peak} | {epochs} | {spe} | {curve or '-'} |")
    if total[1]:
        lines += ["", f"Merged validation ranks each user's validation item among all {total[1]:,} items of the corpus "
                      f"(chance R@10 {10 / total[1]:.5f}); a variant's, among the items of its domains."]
    losses = {name: " ".join(f"{c['loss']:.3f}" for c in x["curve"]) for name, x in r["steps"].items() if x.get("curve")}
    if losses:
        lines += ["", "Training loss by epoch: " + "; ".join(f"{k}: {v}" for k, v in losses.items()) + "."]
    if any(x.get("running") for x in r["steps"].values()):
        lines += ["", "A step marked (running) has not finished: its seconds are its epochs so far (training and validation), "
                      "its peak memory that of the run's rank-0 process as its log records it."]
    lines += ["", "Commands (`textrec prepare` and `encode` are run once per domain, as for the first):", "", "```",
              *[x["command"] for x in r["steps"].values()], "```"]
    return "\n".join(lines)


def write_results(recipe: Recipe, folder: str) -> None:
    """benchmarks/results/SECTION.json and its docs/RESULTS.md section, or FOLDER/SECTION.json and FOLDER/RESULTS.md."""
    path = (Path(folder) if folder else ROOT / "benchmarks" / "results") / f"{recipe.section}.json"
    rec = record(recipe)
    per_domain = {}  # prepare and encode run once per domain: their first command, total seconds, largest peak
    for step, suffix in (("prepare", ""), ("encode", f"-{recipe.emb}")):
        markers = [m for m in (read_json(recipe.marker(f"{step}-{d}{suffix}")) for d in recipe.available) if m]
        if markers:
            per_domain[f"{step} (all domains)"] = {"command": shorten(markers[0]["command"], recipe),
                                                   "seconds": sum(m["seconds"] for m in markers),
                                                   "peak_rss_mb": max(m["peak_rss_mb"] for m in markers)}
    rec["steps"] = {**per_domain, **rec["steps"]}
    md = render(save_result(path, rec))
    update_results(recipe.section, md, **({"path": Path(folder) / "RESULTS.md"} if folder else {}))
    print(md)


def run_step(recipe: Recipe, step: str) -> None:
    if step in ("prepare", "encode"):
        for d in recipe.domains:
            getattr(recipe, step)(d)
            recipe.summary()  # after every domain, so an interrupted run leaves its finished rows
    elif step == "quantize":
        recipe.quantize()
    else:
        recipe.pretrain(step.removeprefix("pretrain-"))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--work", help="work folder (default: $TEXTREC_WORK/seqrecbench or ~/.cache/textrec-work/seqrecbench; "
                                  "with --max-users N, seqrecbench-uN)")
    p.add_argument("--max-users", type=int, metavar="N", help="a CPU-sized corpus: a seeded sample of N users per domain "
                   "(textrec prepare --max-users), in its own work folder")
    p.add_argument("--source", default=str(SHARED_DATA / "seqrecbench"), help="folder of domains, each with interactions.tsv.gz and items.tsv.gz")
    p.add_argument("--steps", default=",".join(DEFAULT_STEPS), help=f"comma-separated, run in this order: {','.join(STEPS)}")
    p.add_argument("--domains", nargs="+", help="only these domains (comma- or space-separated; default: all in --source)")
    p.add_argument("--exclude", nargs="+", help="leave these domains out (a variant: own quantiser and run names)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads of every command")
    p.add_argument("--encoder", default="minilm", help="textrec encode --encoder (default: the embedded MiniLM)")
    p.add_argument("--emb-name", help="embedding name (default: <encoder>-mean)")
    p.add_argument("--batch-size", type=int, help="textrec encode --batch-size")
    p.add_argument("--codebooks", type=int, default=32)
    p.add_argument("--codebook-size", type=int, default=256)
    p.add_argument("--pt-epochs", type=int, default=10, help="pre-training epoch budget (train.epochs)")
    p.add_argument("--nproc", type=int, default=1, help="pre-training processes (torchrun, data-parallel; --threads each)")
    p.add_argument("--pt-set", nargs="*", default=[], metavar="KEY=VALUE", help="extra config overrides for pretrain")
    p.add_argument("--redo", default="", help="comma-separated steps to rerun although done (pretrain: --overwrite)")
    p.add_argument("--dry-run", action="store_true", help="print the commands still to run; run nothing")
    p.add_argument("--results", nargs="?", const="", metavar="DIR", help="at the end, write the work folder's record to "
                   "benchmarks/results and docs/RESULTS.md (section seqrecbench[_uN]), or to DIR")
    args = p.parse_args()
    if args.work is None:
        args.work = str(default_work()) + (f"-u{args.max_users}" if args.max_users else "")
    steps = [s for s in args.steps.split(",") if s]
    args.redo = [s for s in args.redo.split(",") if s]
    bad = [s for s in steps + args.redo if s not in STEPS]
    if bad:
        sys.exit(f"seqrecbench: unknown step {bad[0]!r} (steps: {', '.join(STEPS)})")
    recipe = Recipe(args)
    signal.signal(signal.SIGTERM, recipe.interrupt)
    print(f"seqrecbench: {len(recipe.domains)} domain(s), steps {','.join(steps)}, work {recipe.work}"
          + (f", variant {recipe.tag}" if recipe.tag else ""), flush=True)
    t0 = time.perf_counter()
    try:
        for step in STEPS:  # always in pipeline order
            if step not in steps:
                continue
            s0 = time.perf_counter()
            try:
                run_step(recipe, step)
            except StepFailed as e:
                if not args.dry_run:
                    raise
                print(f"(dry run) {e}")
            print(f"step {step}: {time.perf_counter() - s0:.0f}s", flush=True)
    except StepFailed as e:
        recipe.print_table(recipe.summary())
        sys.exit(f"seqrecbench: {e}")
    recipe.print_table(recipe.summary())
    if args.results is not None and not args.dry_run:
        write_results(recipe, args.results)
    print(f"seqrecbench: finished in {time.perf_counter() - t0:.0f}s")


if __name__ == "__main__":
    main()
