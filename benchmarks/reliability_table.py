"""The reliability table of docs/RESULTS.md: each class of bad input or fault, how many cases were tried, how many held.

Runs the three reliability test files at full size in subprocesses and counts their outcomes:

* ``tests/test_reliability.py``: one test per escape found by hand (a re-prepared dataset under a run,
  ``--overwrite`` onto a user's folder, Latin-1 and UTF-16 input, two writers, SIGTERM, a full or read-only
  disk, paths of the wrong kind, non-finite settings, ...): held = passed;
* ``tests/test_fuzz_readers.py`` (hypothesis, fixed seeds): per reader, damaged sources tried, read to a valid
  dataset, refused with a one-line error naming the file; held = either of the two;
* ``tests/test_reliability_crash.py``: per command, its file-system steps, the crashes tried (every step, and
  real SIGKILLs of ``prepare``) and the reruns that gave identical results with nothing left behind.

    python benchmarks/reliability_table.py                 # full size (several minutes on 2 CPU cores)
    python benchmarks/reliability_table.py --examples 40 --no-write   # the default test run's size
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from _common import update_results

ROOT = Path(__file__).resolve().parent.parent
SAVED = ROOT / "benchmarks" / "results" / "reliability.json"


def _pytest(test_file: str, env: dict, junit: Path) -> None:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "", f"--junitxml={junit}", test_file]
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, check=False)


def _junit_counts(junit: Path) -> dict:
    suite = ET.parse(junit).getroot().find("testsuite")
    failed = int(suite.get("failures", 0)) + int(suite.get("errors", 0))
    ran = int(suite.get("tests", 0)) - int(suite.get("skipped", 0))
    return {"tried": ran, "held": ran - failed}


def measure(examples: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        _pytest("tests/test_reliability.py", {}, tmp / "escapes.xml")
        fuzz_env = {"TEXTREC_FUZZ_EXAMPLES": str(examples), "TEXTREC_FUZZ_EXAMPLES_SLOW": str(examples),
                    "TEXTREC_FUZZ_REPORT": str(tmp / "fuzz.json")}
        _pytest("tests/test_fuzz_readers.py", fuzz_env, tmp / "fuzz.xml")
        _pytest("tests/test_reliability_crash.py", {"TEXTREC_CRASH_REPORT": str(tmp / "crash.json")}, tmp / "crash.xml")
        return {
            "examples": examples,
            "seconds": round(time.perf_counter() - t0),
            "escapes": _junit_counts(tmp / "escapes.xml"),
            "fuzz": json.loads((tmp / "fuzz.json").read_text()),
            "fuzz_tests": _junit_counts(tmp / "fuzz.xml"),
            "crash": json.loads((tmp / "crash.json").read_text()),
            "crash_tests": _junit_counts(tmp / "crash.xml"),
        }


def render(r: dict) -> str:
    lines = ["## Reliability", "",
             "Bad input and faults, tried on purpose: every case either succeeded with a valid result or ended with "
             "`textrec: error: <file or key>: <problem>` (exit 2), and nothing a user made was lost. "
             f"Hypothesis runs {r['examples']} damaged cases per reader per test (fixed seeds); "
             f"the whole table took {r['seconds']} s on 2 CPU cores.", "",
             "| class of case | tried | held | valid result | one-line error | failed (traceback or wrong result) | lost |",
             "|---|---:|---:|---:|---:|---:|---|"]
    e = r["escapes"]
    lines.append(f"| escapes found by hand (`tests/test_reliability.py`, one test each) | {e['tried']} | {e['held']} | - | - | "
                 f"{e['tried'] - e['held']} | nothing |")
    for name, c in r["fuzz"].items():
        held = c.get("valid", 0) + c.get("error", 0)
        label = "config: TOML file + key=value overrides" if name == "config" else f"reader: {name}"
        lines.append(f"| fuzzed {label} | {c['tried']:,} | {held:,} | {c.get('valid', 0):,} | {c.get('error', 0):,} | "
                     f"{c['tried'] - held:,} | nothing |")
    for name, c in r["crash"].items():
        where = f", {c['points']} file-system steps" if "points" in c else ""
        lines.append(f"| killed and rerun: {name}{where} | {c['tried']} | {c.get('held', 0)} | - | - | "
                     f"{c['tried'] - c.get('held', 0)} | nothing |")
    lines += ["", f"Test outcomes: fuzzing {r['fuzz_tests']['held']} of {r['fuzz_tests']['tried']} tests passed, crash points "
              f"{r['crash_tests']['held']} of {r['crash_tests']['tried']}. A fuzzed case holds when it reads to a dataset that "
              "saves and loads back or is refused on one line naming the file, with no partial or temporary folder; "
              "a crash holds when the plain rerun (`prepare --overwrite`, `encode`, `quantize`, `train`, `pretrain` or `finetune --resume`) gives "
              "byte-identical datasets, embeddings and codes, or the same final metrics, with no temporary, old or lock "
              "file left.", "",
              "```", f"python benchmarks/reliability_table.py --examples {r['examples']}", "```"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=400, help="hypothesis cases per reader per test (default 400)")
    p.add_argument("--no-write", action="store_true", help="print the table; do not update docs/RESULTS.md")
    p.add_argument("--render-only", action="store_true", help="rewrite the section from benchmarks/results/reliability.json")
    args = p.parse_args()
    if args.render_only:
        result = json.loads(SAVED.read_text())
    else:
        result = measure(args.examples)
        if not args.no_write:
            SAVED.parent.mkdir(parents=True, exist_ok=True)
            SAVED.write_text(json.dumps(result, indent=2) + "\n")
    markdown = render(result)
    print(markdown)
    if not args.no_write:
        update_results("reliability", markdown)


if __name__ == "__main__":
    main()
