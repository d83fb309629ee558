"""Helpers shared by the benchmark scripts: machine description and docs/RESULTS.md sections."""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
RESULTS_MD = ROOT / "docs" / "RESULTS.md"


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "date": dt.date.today().isoformat(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        # how the machine was shared during the run, e.g. "two benchmarks side by side, one thread each"
        "note": os.environ.get("TEXTREC_BENCH_NOTE"),
    }
    return info


def machine_line(m: dict) -> str:
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ", no GPU"
    note = f" ({m['note']})" if m.get("note") else ""
    return (f"{m['date']}, {m['cpu']} ({m['cores']} cores){gpu}, Python {m['python']}, torch {m['torch']}, "
            f"{m.get('torch_threads', '?')} torch thread(s){note}")


def run_json(cmd: list[str], env: dict | None = None) -> dict:
    """Run a command whose stdout's last line is a JSON object; stream its stderr."""
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    out = proc.stdout.strip()
    start = out.rfind("\n{") + 1 if not out.startswith("{") else 0
    return json.loads(out[start:])


def update_results(section: str, markdown: str, path: Path = RESULTS_MD) -> None:
    """Replace (or append) the block between ``<!-- section:start -->`` and ``<!-- section:end -->``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".md.lock"), "w") as lock:  # benchmarks may run side by side
        fcntl.flock(lock, fcntl.LOCK_EX)
        _replace_section(section, markdown, path)


def _replace_section(section: str, markdown: str, path: Path) -> None:
    text = path.read_text() if path.exists() else "# textrec results\n\nEvery table below is written by a script in `benchmarks/`; rerun it to refresh.\n"
    block = f"<!-- {section}:start -->\n{markdown.rstrip()}\n<!-- {section}:end -->"
    pattern = re.compile(rf"<!-- {re.escape(section)}:start -->.*?<!-- {re.escape(section)}:end -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def add_result_args(p, section: str, smoke: list[str]) -> None:
    """The options every resumable results benchmark takes: where it writes, resuming, rendering, a smoke run."""
    p.add_argument("--no-write", action="store_true", help="do not update docs/RESULTS.md (the JSON is still written)")
    p.add_argument("--section", default=section, help="docs/RESULTS.md section and benchmarks/results/SECTION.json")
    p.add_argument("--resume", action="store_true", help="keep the finished runs of an interrupted invocation")
    p.add_argument("--render-only", action="store_true", help="rewrite the RESULTS.md section from the saved JSON")
    p.add_argument("--smoke", action="store_true", help=f"check the script: first seed only, {' '.join(smoke)}")


def render_saved(path: Path, section: str, render, no_write: bool) -> None:
    """``--render-only``: print (and unless ``no_write``, write into RESULTS.md) the section rendered from its JSON."""
    if not path.exists():
        sys.exit(f"--render-only: no saved results at {path} (run the benchmark first)")
    md = render(json.loads(path.read_text()))
    print(md)
    if not no_write:
        update_results(section, md)


def previous_runs(path: Path, resume: bool) -> tuple[dict, list, list | None]:
    """(runs, commands, argv) of an earlier invocation whose JSON is at ``path`` when resuming, else empty."""
    if not resume or not path.exists():
        return {}, [], None
    r = json.loads(path.read_text())
    return r["runs"], r["commands"], r["argv"]


def finished(runs: dict, key: str, seed: int) -> bool:
    """Whether ``runs[key]`` already holds the run of this seed (its run folder is named ``KEY-SEED``)."""
    return any(Path(x["run"]).name == f"{key}-{seed}" for x in runs.get(key, []))


def fmt(x: float | None, digits: int = 4) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


WORK = ROOT / "benchmarks" / ".work"  # prepared datasets and runs, reused between benchmark runs (git-ignored)


def textrec(*args: str, log: list | None = None) -> dict:
    """Run ``textrec ARGS --json`` in a subprocess (clean timings and memory) and return its JSON."""
    args = [str(a) for a in args]
    if log is not None:
        log.append(command_line(*args))
    res = run_json([sys.executable, "-m", "textrec.cli", *args, "--json"])
    for key in ("run", "data"):  # no machine paths in the committed result files
        if isinstance(res.get(key), str):
            res[key] = _shorten_path(res[key])
    return res


def command_line(*args) -> str:
    """``textrec ARGS`` as listed under a table, with the work and data folders shortened."""
    return "textrec " + " ".join(_shorten_path(str(a)) for a in args)


def run_dir(res: dict) -> Path:
    """The run folder of a result row (stored as ``$WORK/...``: no machine paths in committed files)."""
    import tempfile

    run = res["run"]
    for name, base in (("$WORK", str(WORK)), ("$TMPDIR", tempfile.gettempdir()), ("~", str(Path.home()))):
        if run.startswith(name):
            return Path(base + run[len(name):])
    return Path(run)


def _shorten_path(arg: str) -> str:
    import tempfile

    for base, name in ((str(WORK), "$WORK"), (str(SHARED_DATA), "../shared/data"), (tempfile.gettempdir(), "$TMPDIR"),
                       (str(Path.home()), "~")):
        arg = arg.replace(base, name)
    return arg


def prepare(name: str, source: Path, fmt: str, encode: bool = True, word_drop: bool = False) -> Path:
    """A prepared (and MiniLM-encoded) dataset under WORK, made once and reused."""
    out = WORK / "data" / name
    if not (out / "meta.json").exists():
        textrec("prepare", source, "--format", fmt, "--out", out, "--overwrite")
    if encode and not (out / "embeddings" / "minilm-mean.npy").exists():
        textrec("encode", out)
    if word_drop and not (out / "embeddings" / "minilm-mean-wd15.npy").exists():
        textrec("encode", out, "--word-drop", "0.15")
    return out


def mean_metrics(runs: list[dict], split: str = "test") -> dict:
    keys = runs[0][split].keys()
    return {k: sum(r[split][k] for r in runs) / len(runs) for k in keys}


def metric_row(label: str, m: dict, extra: str = "") -> str:
    return f"| {label} | {fmt(m['recall@10'])} | {fmt(m['ndcg@10'])} | {fmt(m['recall@50'])} | {fmt(m['ndcg@50'])} |{extra}"


def save_result(path: Path, result: dict) -> dict:
    """Write a benchmark's JSON atomically, merging the runs another process of the same section wrote meanwhile.

    Two processes may fill one section side by side (e.g. ``--pt-modes inductive`` and ``--pt-modes transductive``
    with ``--resume``): each keeps its own rows and adds the other's, keyed by run folder, so neither overwrites the
    other. The merged result is returned (render it, not the argument).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".json.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            old = json.loads(path.read_text())
            if old.get("section") == result.get("section"):
                for key, rows in old.get("runs", {}).items():
                    mine = result["runs"].setdefault(key, [])
                    names = {Path(x["run"]).name for x in mine}
                    mine.extend(x for x in rows if Path(x["run"]).name not in names)
                result["commands"] += [c for c in old.get("commands", []) if c not in result["commands"]]
                facts = result.setdefault("facts", {})
                for key, value in (old.get("facts") or {}).items():  # e.g. each process's pre-training record
                    if key not in facts:
                        facts[key] = value
                    elif isinstance(value, dict) and isinstance(facts[key], dict):
                        facts[key] = {**value, **facts[key]}
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, path)
    return result


def pretrained(runs: dict, key: str, out: Path) -> bool:
    """Whether pre-training ``key`` is recorded and its checkpoint is still on disk to fine-tune from.

    A fresh checkout keeps the JSON but not ``$WORK``: the pre-training is then run again (it is deterministic
    for a seed, so its record is replaced by an identical one; a difference is printed).
    """
    if key not in runs:
        return False
    if (out / "model.safetensors").exists():
        return True
    print(f"{key}: recorded, but {out} is gone: pre-training again", file=sys.stderr)
    return False


def report_rerun(runs: dict, key: str, res: dict) -> None:
    """Record pre-training ``key``; when it replaces an earlier record, say whether the result is the same."""
    old = runs.get(key, [None])[0]
    if old is not None:
        same = old.get("valid") == res.get("valid") and old.get("epochs_run") == res.get("epochs_run")
        print(f"{key}: re-run {'reproduces' if same else 'DIFFERS FROM'} the recorded result "
              f"(valid {old.get('valid')} -> {res.get('valid')})", file=sys.stderr)
        if not same:
            sys.exit(f"{key}: the re-run pre-training differs from the recorded one; rerun without --resume")
    runs[key] = [res]
