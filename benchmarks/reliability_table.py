"""The reliability table of docs/RESULTS.md: each class of bad input or fault, how many cases were tried, how many held.

Runs the three reliability test files at full size in subprocesses and counts their outcomes:

* ``tests/test_reliability.py``: one test per escape found by hand (a re-prepared dataset under a run,
  ``--overwrite`` onto a user's folder, Latin-1 and UTF-16 input, two writers, SIGTERM, a full or read-only
  disk, paths of the wrong kind, non-finite settings, ...): held = passed;
* ``tests/test_fuzz_readers.py`` (hypothesis, fixed seeds): per reader, damaged sources tried, read to a valid
  dataset, refused with a one-line error naming the file; held = either of the two;
* ``tests/test_reliability_crash.py``: per command, its file-system steps, the crashes tried (every step, and
  real SIGKILLs of ``prepare``) and the reruns that gave identical results with nothing left behind;
* ``tests/test_serve_fuzz.py`` (schemathesis against the server's own OpenAPI schema, fixed seeds): per route,
  the requests tried and those that held (no 5xx, the answer in the schema, a valid request accepted, an invalid
  one refused with a 4xx);
* ``benchmarks/results/serve_soak.json`` (written by ``benchmarks/serve_soak.py``, not rerun here): the soak's
  requests and errors, and the items kept across the restart.

    python benchmarks/reliability_table.py                 # full size (several minutes on 2 CPU cores)
    python benchmarks/reliability_table.py --examples 40 --no-write   # the default test run's size
    python benchmarks/reliability_table.py --serve-only    # rerun only the server's fuzzing, keep the rest
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
SOAK = ROOT / "benchmarks" / "results" / "serve_soak.json"


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


def measure_serve(examples: int) -> dict:
    """The server's schemathesis run at ``examples`` requests per route and generation mode (the slow variants)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {"TEXTREC_SERVE_FUZZ_EXAMPLES_SLOW": str(examples), "TEXTREC_SERVE_FUZZ_REPORT": str(tmp / "serve.json")}
        _pytest("tests/test_serve_fuzz.py", env, tmp / "serve.xml")
        return {"serve_examples": examples, "serve_fuzz": json.loads((tmp / "serve.json").read_text()),
                "serve_fuzz_tests": _junit_counts(tmp / "serve.xml")}


def render_serve(r: dict, soak: dict | None) -> list[str]:
    """The server's rows: schemathesis per route, the soak, the restart."""
    rows = []
    for route, c in sorted(r.get("serve_fuzz", {}).items()):
        rows.append(f"| server: schemathesis, `{route}` | {c['tried']:,} | {c['held']:,} | - | - | {c['tried'] - c['held']:,} | nothing |")
    if soak is not None:
        k = soak["restart"]
        minutes = f"{soak['seconds'] / 60:.1f} min"
        rows.append(f"| server soak: {soak['clients']} clients, {minutes}, recommend / search / add / delete (requests) | "
                    f"{soak['requests']:,} | {soak['requests'] - soak['errors']:,} | - | - | {soak['errors']:,} | nothing |")
        kept = min(k["present"], k["text_matches"], k["recommendable"])
        lost = "nothing" if kept == k["added_kept"] else f"{k['added_kept'] - kept} items"
        rows.append(f"| server restart after the soak: added items served with their last text and recommendable | "
                    f"{k['added_kept']:,} | {kept:,} | - | - | {k['added_kept'] - kept:,} | "
                    f"{lost} |")
        rows.append(f"| server restart after the soak: deleted items gone | {k['deleted']:,} | {k['deleted_absent']:,} | - | - | "
                    f"{k['deleted'] - k['deleted_absent']:,} | nothing |")
    return rows


def _serve_note(r: dict, soak: dict | None) -> list[str]:
    out = []
    if "serve_fuzz" in r:
        t = r["serve_fuzz_tests"]
        out.append(f"Server: schemathesis sent up to {r['serve_examples']} schema-valid and {r['serve_examples']} schema-violating "
                   "requests per route (one to a route without parameters; a path parameter has no schema-violating string) to each of a writable VQ-Rec server, a SASRec server and a read-only one behind an API "
                   f"key (plus the default run's cases); a request holds when the answer is no 5xx, is in the schema (status, "
                   f"body), and a valid request is accepted, an invalid one refused with a 4xx. {t['held']} of {t['tried']} "
                   "tests passed (`python -m pytest tests/test_serve_fuzz.py -m ''`).")
    if soak is not None:
        m = soak["memory"]
        out.append(f"The soak (`python benchmarks/serve_soak.py --seconds {soak['requested_s']:.0f} --clients {soak['clients']}`, "
                   f"{soak['req_per_s']} requests/s, {(soak['machine'].get('note') or '2 CPU cores')}): server memory "
                   f"{m['first_mb']} MB at the start, {m['last_mb']} MB at the end, {m['max_mb']} MB at most, "
                   f"{m['slope_mb_per_min']} MB/min (least squares). "
                   f"{soak['by_kind']['add']['requests']:,} adds, about "
                   f"{(m['last_mb'] - m['first_mb']) * 1024 / soak['by_kind']['add']['requests']:.0f} KB per add; "
                   f"{soak['restart']['items_before']:,} items were served at the end (measured {soak['machine']['date']}"
                   f"{', revision ' + soak['revision'] if soak.get('revision') else ''}).")
    if soak is not None and "add_memory" in soak:
        out.append(_add_memory_note(soak["add_memory"]))
    return out


def _add_memory_command(a: dict) -> str:
    adds = next(r["adds"] for r in a.values() if isinstance(r, dict) and "adds" in r)
    base = a["baseline"].get("revision") if "baseline" in a else None
    return f"python benchmarks/serve_soak.py --add-memory {adds}" + (f" --baseline {base}" if base else "")


def _add_memory_note(a: dict) -> str:
    """The server's memory per added item, a revision and this checkout (``serve_soak.py --add-memory``)."""
    trees = [(name, r) for name, r in a.items() if isinstance(r, dict) and "kb_per_add" in r]
    first = trees[-1][1]
    parts = [f"{r['kb_per_add']} KB per added item and {r['ms_per_add']} ms per add under "
             + (f"revision {r['revision']}" if "revision" in r else "the checkout") + (" (before)" if name == "baseline" else " (after)")
             for name, r in trees]
    return (f"Server memory while items are added (`{_add_memory_command(a)}`: {first['adds']:,} `POST /items` of one new item each from "
            f"{first['clients']} clients to a fresh server, resident memory after 20 warm-up adds and at the end; "
            f"{a['run']}, {first['items_at_end']:,} items at the end; {a['machine'].get('note') or '2 CPU cores'}): "
            + "; ".join(parts) + ". Growing the catalogue allocates and frees tables the size of the whole catalogue; "
            "run on whichever worker thread took the request, each thread's glibc arena kept what it freed, so "
            "memory grew by tens of KB per item. The catalogue now grows on one writer thread and the service's id "
            "columns by doubling. What remains grows with the catalogue: every add still rebuilds the model and "
            "re-embeds every item (a transient the size of the catalogue), not only the new one.")


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
    soak = json.loads(SOAK.read_text()) if SOAK.exists() else None
    lines += render_serve(r, soak)
    lines += ["", f"Test outcomes: fuzzing {r['fuzz_tests']['held']} of {r['fuzz_tests']['tried']} tests passed, crash points "
              f"{r['crash_tests']['held']} of {r['crash_tests']['tried']}. A fuzzed case holds when it reads to a dataset that "
              "saves and loads back or is refused on one line naming the file, with no partial or temporary folder; "
              "a crash holds when the plain rerun (`prepare --overwrite`, `encode`, `quantize`, `train`, `pretrain` or `finetune --resume`) gives "
              "byte-identical datasets, embeddings and codes, or the same final metrics, with no temporary, old or lock "
              "file left.", "", *[x for note in _serve_note(r, soak) for x in (note, "")],
              "```", f"python benchmarks/reliability_table.py --examples {r['examples']}"
              + (f" --serve-examples {r['serve_examples']}" if "serve_examples" in r else ""),
              *(["python benchmarks/serve_soak.py" + (f" --seconds {soak['requested_s']:.0f}" if soak["requested_s"] != 600 else "")
                 + (f" --clients {soak['clients']}" if soak["clients"] != 16 else "")] if soak is not None else []),
              *([_add_memory_command(soak["add_memory"])] if soak is not None and "add_memory" in soak else []), "```"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--examples", type=int, default=400, help="hypothesis cases per reader per test (default 400)")
    p.add_argument("--serve-examples", type=int, default=200, help="schemathesis requests per server route and mode (default 200)")
    p.add_argument("--serve-only", action="store_true", help="rerun only the server's fuzzing; keep the saved rest")
    p.add_argument("--no-write", action="store_true", help="print the table; do not update docs/RESULTS.md")
    p.add_argument("--render-only", action="store_true", help="rewrite the section from benchmarks/results/reliability.json")
    args = p.parse_args()
    if args.render_only:
        result = json.loads(SAVED.read_text())
    elif args.serve_only:
        result = {**json.loads(SAVED.read_text()), **measure_serve(args.serve_examples)}
    else:
        result = {**measure(args.examples), **measure_serve(args.serve_examples)}
    if not args.no_write and not args.render_only:
        SAVED.parent.mkdir(parents=True, exist_ok=True)
        SAVED.write_text(json.dumps(result, indent=2) + "\n")
    markdown = render(result)
    print(markdown)
    if not args.no_write:
        update_results("reliability", markdown)


if __name__ == "__main__":
    main()
