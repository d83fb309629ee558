"""benchmarks/gpu_check.py: its CPU fallback runs every step on a tiny world and writes the JSON and the table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # 20-45 s on a busy 2-core machine, most of it process starts
def test_cpu_fallback_measures_every_step(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--smoke", "--work", str(tmp_path / "work"),
                           "--out", str(out), "--epochs", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    assert r["smoke"] and r["vqrec_run"]["epochs_run"] == 3 and 0 <= r["vqrec_run"]["test"]["ndcg@10"] <= 1
    assert set(r["throughput"]) == {"sasrec", "unisrec", "vqrec"}
    for x in r["throughput"].values():
        assert x["textrec"]["train_targets_per_s"] > 0 and x["plain"]["eval_users_per_s"] > 0
        assert x["train_fraction_of_ceiling"] == x["textrec"]["train_targets_per_s"] / x["plain"]["train_targets_per_s"]
    assert "skipped" in r["ddp"]
    table = out.with_suffix(".md").read_text()
    assert "| VQ-Rec whole run, 1 process |" in table and "| unisrec |" in table
