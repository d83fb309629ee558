"""benchmarks/seqrecbench.py: prepare + encode on two tiny synthetic domains, then a rerun that skips both."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from doubles import benchmark_script

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seqrecbench.py"


def _write_domain(folder: Path, n_users: int, n_items: int, seed: int) -> dict:
    """interactions.tsv.gz / items.tsv.gz as in ../shared/data/seqrecbench: ids from 100, 8 items per user."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = []
    for u in range(n_users):
        for k, i in enumerate(rng.choice(n_items, size=8, replace=False)):
            rows.append(f"{100 + u}\t{100 + i}\t{1_600_000_000 + 86_400 * k}")
    with gzip.open(folder / "interactions.tsv.gz", "wt") as f:
        f.write("user\titem\ttimestamp\n" + "\n".join(rows) + "\n")
    with gzip.open(folder / "items.tsv.gz", "wt") as f:
        f.write("item\ttitle\n" + "".join(f"{100 + i}\t{folder.name} thing number {i} in blue\n" for i in range(n_items)))
    return {"users": n_users, "items": n_items, "interactions": len(rows)}


def _run(*args: str, env: dict) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_prepare_encode_then_rerun_skips(tmp_path):
    source, work = tmp_path / "source", tmp_path / "work"
    counts = {"alpha": _write_domain(source / "alpha", 30, 20, 0), "beta": _write_domain(source / "beta", 25, 15, 1)}
    env = {**os.environ, "TEXTREC_CACHE_DIR": str(tmp_path / "cache")}
    args = ["--source", str(source), "--work", str(work), "--steps", "prepare,encode", "--encoder", "hashing", "--threads", "1"]
    first = _run(*args, env=env)
    assert first.stdout.count("running: textrec encode") == 2, first.stdout

    summary = json.loads((work / "summary.json").read_text())
    for name, expected in counts.items():
        row = summary["domains"][name]
        assert {k: row["prepared"][k] for k in expected} == expected
        assert row["encode"]["n_items"] == expected["items"] and row["encode"]["n_encoded"] == expected["items"]
        marker = json.loads((work / "done" / f"encode-{name}-hashing-mean.json").read_text())
        assert marker["command"].startswith("textrec encode") and marker["seconds"] > 0 and marker["peak_rss_mb"] > 0
    embeddings = work / "data" / "alpha" / "embeddings" / "hashing-mean.npy"
    assert np.load(embeddings).shape == (21, 32)
    written = embeddings.stat().st_mtime_ns

    t0 = time.perf_counter()
    second = _run(*args, env=env)
    assert time.perf_counter() - t0 < 10
    assert "running:" not in second.stdout, second.stdout
    assert second.stdout.count(": done earlier") == 4
    assert embeddings.stat().st_mtime_ns == written

    # a left-out domain is a variant with its own codes and run names; --dry-run runs nothing
    dry = _run("--source", str(source), "--work", str(work), "--encoder", "hashing", "--exclude", "beta", "--dry-run", env=env)
    assert "variant no-beta" in dry.stdout and "would run: textrec quantize" in dry.stdout
    assert "runs/unisrec-pt-no-beta" in dry.stdout and "data/beta" not in dry.stdout.split("step encode")[1]
    assert "recformer" not in dry.stdout  # Recformer's pre-training is asked for by name, never by default
    # Recformer reads tokens: its pre-training needs the domains prepared, not encoded or quantised
    rec = _run("--source", str(source), "--work", str(work), "--steps", "pretrain-recformer", "--encoder", "nothing-encoded",
               "--dry-run", env=env)
    line = next(x for x in rec.stdout.splitlines() if "would run: textrec pretrain" in x)
    assert "--model recformer" in line and "model.max_token_num=128" in line and "data.embeddings" not in line
    assert "not ready" not in rec.stdout, rec.stdout

    # --results: the record of what is done, without the machine's work folder
    res = tmp_path / "results"
    _run("--source", str(source), "--work", str(work), "--encoder", "hashing", "--steps", "", "--results", str(res), env=env)
    md = (res / "RESULTS.md").read_text()
    assert "<!-- seqrecbench:start -->" in md and str(work) not in md and "$PT_WORK/data/alpha" in md
    assert "| alpha | 30 | 20 | 240 | 8.0 |" in md and "| **total** | 55 | 35 | 440 |" in md
    saved = json.loads((res / "seqrecbench.json").read_text())
    assert set(saved["steps"]) == {"prepare (all domains)", "encode (all domains)"}
    assert str(work) not in json.dumps(saved)


def test_variant_names():
    recipe = benchmark_script("seqrecbench")
    domains = ["amazon2014-beauty", "amazon2014-book_1000000", "amazon2018-electronic_1000000", "amazon2018-game",
               "food", "movielens-1m", "steam_100000"]
    keep = lambda *out: [d for d in domains if d not in out]
    assert recipe.variant_tag(domains, domains) == ""
    assert recipe.variant_tag(domains, keep("amazon2018-electronic_1000000", "amazon2018-game")) == "no-amazon2018"
    assert recipe.variant_tag(domains, keep("food", "steam_100000", "movielens-1m")) == "no-food-movielens-steam"
    assert recipe.variant_tag(domains, keep("amazon2014-book_1000000")) == "no-amazon2014-book"
    assert recipe.variant_tag(domains, ["steam_100000"]) == "only-steam"


def test_max_users_prepares_a_sample_in_its_own_work_folder(tmp_path):
    source = tmp_path / "source"
    _write_domain(source / "alpha", 30, 20, 0)
    env = {**os.environ, "TEXTREC_CACHE_DIR": str(tmp_path / "cache"), "TEXTREC_WORK": str(tmp_path / "w")}
    out = _run("--source", str(source), "--steps", "prepare", "--max-users", "12", "--threads", "1", env=env)
    assert "--max-users 12" in out.stdout and str(tmp_path / "w" / "seqrecbench-u12") in out.stdout
    summary = json.loads((tmp_path / "w" / "seqrecbench-u12" / "summary.json").read_text())
    assert summary["domains"]["alpha"]["prepared"]["users"] == 12
