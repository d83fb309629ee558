"""Load and latency of ``textrec serve`` over HTTP on loopback: p50/p99 and requests/s.

Scenarios (each against a fresh server process, each bounded by ``--requests`` and ``--seconds``):

* Amazon Scientific: a UniSRec trained for 2 epochs on ``../shared/data/amazon-scientific-unisrec`` (prepared and
  MiniLM-encoded under ``benchmarks/.work`` as the other benchmarks do, trained once and reused; about 4 minutes
  the first time), 1 and 16 clients (``--no-scientific`` leaves it out);
* a trained run (default: a UniSRec trained here on the synthetic garden world, hidden size ``--hidden``; or
  ``--run RUN``): single recommendations with 1 and 16 concurrent clients, then 16 clients while a 17th adds an
  item every ``--add-every`` seconds (``POST /items``: encoded, inserted, journaled);
* synthetic catalogues of ``--sizes`` items (default 100k and 1M): the run's items plus vectors drawn around
  them (each a random item's vector plus Gaussian noise of ``--noise`` times its norm, rescaled to its norm), so
  that thousands of synthetic items compete with every real one for the top 10; searched exactly and
  through a faiss IVF index whose recall@10 against exact search (on 200 users' sequence vectors) the server
  reports at build; 1 and 16 clients each.

Each request is ``POST /recommend`` with a real user's history (k=10). Latency is measured by the client
(request sent -> response read), so it includes HTTP and JSON; ``server_p50_ms`` / ``server_p99_ms`` are the
server's own time (its ``Server-Timing`` header: from the request reaching the app to the answer being ready).
The server runs one uvicorn worker with torch and faiss at one thread, on httptools and uvloop when they are
installed (the ``serve`` extra; recorded as ``server_stack``). Each row records the machine's 1-minute load average
when it started and ended (``load_avg_1m``): on a shared machine, latency is mostly waiting for a CPU. Results go
to ``benchmarks/results/serve_load.json`` and, rendered from it, to the ``serve_load`` section of docs/RESULTS.md.

    python benchmarks/serve_load.py                       # the whole benchmark (about 6 minutes on 2 busy cores)
    python benchmarks/serve_load.py --sizes 100000 --requests 200 --seconds 10 --no-write   # a short one
    python benchmarks/serve_load.py --render-only         # the RESULTS.md section again from the JSON
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, _shorten_path, machine, machine_line, render_saved, update_results

SECTION = "serve_load"
RESULTS = ROOT / "benchmarks" / "results" / f"{SECTION}.json"


# ---- the server side (run in a subprocess: --serve) -------------------------------------------------

def serve(args) -> None:
    """Start the app over ``args.serve`` with ``args.pad`` synthetic items, on ``args.port``."""
    import faiss
    import torch
    import uvicorn

    from textrec.serve.app import create_app
    from textrec.serve.service import Service, item_table

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    started = time.perf_counter()
    service = Service(args.serve, index_kind="exact" if args.pad else args.index, journal=args.journal)
    if args.pad:
        items = item_table(service.model)[1:]
        rng = np.random.default_rng(0)
        base = items[rng.integers(0, len(items), args.pad)]
        noise = rng.normal(size=base.shape).astype(np.float32) / np.sqrt(base.shape[1])  # norm about 1
        v = base + args.noise * np.linalg.norm(base, axis=1, keepdims=True) * noise
        v *= (np.linalg.norm(base, axis=1, keepdims=True) / np.linalg.norm(v, axis=1, keepdims=True))  # the items' norms
        service.index_kind = args.index
        service.pad_catalogue(v.astype(np.float32))
    build_s = time.perf_counter() - started
    print(json.dumps({"ready": True, "build_s": round(build_s, 1), "index": service.stats_dict()["index"]}), flush=True)
    uvicorn.run(create_app(service), host="127.0.0.1", port=args.port, log_level="warning")


# ---- the load side -------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, run: Path, index: str, pad: int, journal: Path, noise: float) -> None:
        self.port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, __file__, "--serve", str(run), "--index", index, "--pad", str(pad), "--port", str(self.port),
               "--journal", str(journal), "--noise", str(noise)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"the server did not start: {' '.join(cmd)}")
        self.info = json.loads(line)
        self.url = f"http://127.0.0.1:{self.port}"
        import httpx

        for _ in range(200):
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit("the server did not answer /healthz")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


def floor(url: str, n: int = 200) -> dict:
    """Latency of ``GET /healthz`` from one client: the HTTP round trip with no work, for comparison."""
    import httpx

    lat = []
    with httpx.Client(timeout=30) as c:
        for _ in range(n):
            t = time.perf_counter()
            c.get(url + "/healthz")
            lat.append(time.perf_counter() - t)
    ms = np.array(lat) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2)}


def load(url: str, histories: list[list[str]], clients: int, max_requests: int, seconds: float,
         add_every: float | None = None) -> dict:
    """``clients`` threads send recommendations until ``max_requests`` are answered or ``seconds`` pass."""
    import httpx

    lat, server, errors, lock = [], [], [], threading.Lock()
    count = iter(range(max_requests))
    deadline = time.perf_counter() + seconds
    stop = threading.Event()

    def worker(seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(timeout=30) as c:
            while time.perf_counter() < deadline:
                with lock:
                    if next(count, None) is None:
                        return
                body = {"items": histories[rng.integers(len(histories))], "k": 10}
                t = time.perf_counter()
                try:
                    r = c.post(url + "/recommend", json=body)
                    ok = r.status_code == 200 and len(r.json()["recommendations"]) == 10
                except httpx.HTTPError as e:
                    ok, r = False, e
                took = time.perf_counter() - t
                with lock:
                    if ok:
                        lat.append(took)
                        server.append(float(r.headers["server-timing"].split("dur=")[1]))
                    else:
                        errors.append(str(r))

    add_lat, add_errors = [], []

    def adder() -> None:
        with httpx.Client(timeout=60) as c:
            n = 0
            while not stop.is_set() and time.perf_counter() < deadline:
                n += 1
                body = {"items": [{"key": f"LOAD-{n}", "text": f"Zorblat orange bamboo birdhouse number {n}, vintage style. Garden."}]}
                t = time.perf_counter()
                r = c.post(url + "/items", json=body)
                (add_lat if r.status_code == 200 else add_errors).append(time.perf_counter() - t if r.status_code == 200 else r.text)
                stop.wait(add_every)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    extra = threading.Thread(target=adder) if add_every else None
    t0 = time.perf_counter()
    for t in threads + ([extra] if extra else []):
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    if extra:
        extra.join()
    ms = np.array(lat) * 1000
    out = {"clients": clients, "requests": len(lat), "errors": len(errors), "seconds": round(wall, 2),
           "req_per_s": round(len(lat) / wall, 1),
           "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
           "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
           "mean_ms": round(float(ms.mean()), 2) if len(ms) else None,
           # inside the server (Server-Timing): from the request's arrival at the app to its answer being ready
           "server_p50_ms": round(float(np.percentile(server, 50)), 2) if server else None,
           "server_p99_ms": round(float(np.percentile(server, 99)), 2) if server else None}
    if errors:
        out["first_error"] = errors[0][:200]
    if add_every:
        a = np.array(add_lat) * 1000
        out["adds"] = {"added": len(add_lat), "errors": len(add_errors),
                       "p50_ms": round(float(np.percentile(a, 50)), 1) if len(a) else None,
                       "max_ms": round(float(a.max()), 1) if len(a) else None}
    return out


def bench_run(work: Path, hidden: int) -> Path:
    """A UniSRec trained on the synthetic garden world (hashing-64 text), in ``work``."""
    from textrec.cli import main
    from textrec.data.synthetic import WorldSpec, make_domain

    data, run = work / "garden", work / f"unisrec-h{hidden}"
    if (run / "model.safetensors").exists():
        return run
    make_domain("garden", WorldSpec(n_items=1000, n_users=3000, noise=0.05), seed=4).save(data)
    assert main(["encode", str(data), "--encoder", "hashing-64", "--json"]) == 0
    assert main(["train", str(data), "--model", "unisrec", "--out", str(run), "--quiet", f"model.hidden_size={hidden}",
                 f"model.inner_size={hidden}", "train.epochs=3", "train.device=cpu", "train.num_threads=1"]) == 0
    return run


def scientific_run() -> Path:
    """A short UniSRec run on Amazon Scientific (MiniLM text), made once under ``benchmarks/.work`` and reused."""
    from _common import SHARED_DATA, WORK, prepare, textrec

    data = prepare("scientific", SHARED_DATA / "amazon-scientific-unisrec", "unisrec")
    run = WORK / "runs" / "serve-unisrec-scientific"
    if not (run / "model.safetensors").exists():
        textrec("train", data, "--model", "unisrec", "--out", run, "--quiet", "--overwrite", "train.epochs=2",
                "train.device=cpu", "train.num_threads=1")
    return run


def scientific_facts(run: Path) -> dict:
    """What the Scientific rows serve: the command that trained it, its size and its test accuracy."""
    from textrec.serve.service import load_run_for_serving

    metrics = json.loads((run / "metrics.json").read_text())
    ds = load_run_for_serving(run).dataset
    return {"command": "textrec train $WORK/data/scientific --model unisrec train.epochs=2 train.device=cpu train.num_threads=1",
            "items": ds.n_items, "users": ds.n_users, "epochs": metrics["epochs_run"],
            "test_recall@10": metrics["test"]["recall@10"], "test_ndcg@10": metrics["test"]["ndcg@10"]}


def command_line() -> str:
    """This script's command line as run (for the results), without machine paths."""
    return " ".join(["python benchmarks/serve_load.py", *(_shorten_path(a).replace(str(ROOT) + "/", "") for a in sys.argv[1:])])


def histories_of(run: Path, n: int = 500) -> list[list[str]]:
    from textrec.serve.service import load_run_for_serving

    ds = load_run_for_serving(run).dataset
    rng = np.random.default_rng(0)
    users = rng.choice(ds.n_users, size=min(n, ds.n_users), replace=False)
    return [[ds.item_keys[i - 1] for i in ds.sequence(int(u))[-20:]] for u in users]


def scenario_rows(name: str, run: Path, kind: str, pad: int, args, work: Path, adds: bool) -> list[dict]:
    """One fresh server over ``run`` (``pad`` synthetic items, index ``kind``): a row per client count, then (``adds``)
    16 clients while items are added. Each row has the machine's 1-minute load average when it started and ended."""
    histories = histories_of(run)
    journal = Path(tempfile.mkdtemp(dir=work)) / "journal.jsonl"
    server = Server(run, kind, pad, journal, args.noise)
    rows = []
    try:
        plan = [(clients, None) for clients in args.clients] + ([(max(args.clients), args.add_every)] if adds else [])
        for clients, add_every in plan:
            load_start = round(os.getloadavg()[0], 2)
            r = load(server.url, histories, clients, args.requests, args.seconds, add_every=add_every)
            row = {"scenario": name if add_every is None else f"{name}, adding items under load", "run": run.name,
                   "catalogue": server.info["index"]["items"], "index": server.info["index"], "build_s": server.info["build_s"],
                   **r, "load_avg_1m": [load_start, round(os.getloadavg()[0], 2)]}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
            if adds and add_every is None and clients == args.clients[-1]:
                rows[-1]["healthz_floor"] = floor(server.url)
    finally:
        server.stop()
    return rows


def render(results: dict) -> str:
    """The docs/RESULTS.md section: one row per scenario and client count, with the load average beside it."""
    m = results["machine"]
    stack = " and ".join(k for k, v in results.get("server_stack", {}).items() if v) or "h11 and asyncio"
    lines = ["## Serving: load and latency (`textrec serve`)", "",
             f"Machine: {machine_line(m)}; uvicorn on {stack}, one worker, torch and faiss at one thread. "
             f"Command: `{results['command']}`. Each row is a fresh server on 127.0.0.1 answering `POST /recommend` "
             f"(k=10, a real user's last 20 items) until {results['settings']['requests']} requests are answered or "
             f"{results['settings']['seconds']:g} s pass. Client latency includes HTTP and JSON; server latency is the app's "
             "own time (its `Server-Timing` header). Load average: the machine's 1-minute load average when the row "
             f"started and ended ({m['cores']} cores).", "",
             "| scenario | catalogue | index | recall@10 vs exact | clients | client p50 ms | client p99 ms | server p50 ms | "
             "server p99 ms | req/s | errors | load avg |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["scenarios"]:
        ix = r["index"]
        kind = {"exact": "exact", "ivf": f"faiss IVF ({ix.get('nlist')} cells, nprobe {ix.get('nprobe')})",
                "hnsw": "faiss HNSW", "pq": "PQ codes"}.get(ix["kind"], ix["kind"])
        recall = "exact" if ix.get("recall_at_10") is None else f"{ix['recall_at_10']:.3f}"
        load = r.get("load_avg_1m") or ["-", "-"]
        lines.append(f"| {r['scenario']} | {r['catalogue']:,} | {kind} | {recall} | {r['clients']} | {r['p50_ms']} | {r['p99_ms']} | "
                     f"{r['server_p50_ms']} | {r['server_p99_ms']} | {r['req_per_s']} | {r['errors']} | {load[0]} → {load[1]} |")
    notes = [target_line(results)]
    for r in results["scenarios"]:
        if "adds" in r:
            a = r["adds"]
            notes.append(f"{r['scenario']}: a 17th client added {a['added']} items ({a['errors']} errors), "
                         f"{a['p50_ms']} ms p50 and {a['max_ms']} ms at most per add.")
        if "healthz_floor" in r:
            f = r["healthz_floor"]
            notes.append(f"An empty `GET /healthz` from one client ({r['scenario']}): {f['p50_ms']} ms p50, {f['p99_ms']} ms p99.")
    sci = results.get("scientific")
    if sci:
        notes.append(f"Scientific: `{sci['command']}` ({sci['items']:,} items, {sci['users']:,} users; test recall@10 "
                     f"{sci['test_recall@10']:.4f}, NDCG@10 {sci['test_ndcg@10']:.4f} after {sci['epochs']} epochs: a short run, "
                     "served for its latency, not its accuracy).")
    synth = "The synthetic rows serve a UniSRec (hidden size {hidden}) trained on a 1,000-item synthetic world, with {sizes} vectors " \
            "added around its items (each a random item's vector plus noise of {noise:g} of its norm)."
    notes.append(synth.format(hidden=results["settings"]["hidden"], noise=results["settings"]["noise"],
                              sizes=" / ".join(f"{n:,}" for n in results["settings"]["sizes"])))
    lines += [""] + [f"- {n}" for n in notes if n]
    if results.get("earlier_1m"):
        lines += ["", "Earlier runs of this script at 1M items (faiss IVF), for comparison under their own load:", "",
                  "| date | load | clients | requests | client p50 ms | client p99 ms | server p99 ms | recall@10 |",
                  "|---|---|---|---|---|---|---|---|"]
        for e in results["earlier_1m"]:
            for r in e["rows"]:
                lines.append(f"| {e['date']} | {e['load']} | {r['clients']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | "
                             f"{r['server_p99_ms']} | {r['index']['recall_at_10']:.3f} |")
    return "\n".join(lines)


def target_line(results: dict) -> str:
    """The issue's target, read off the largest faiss catalogue: p99 < 20 ms (one client) at recall@10 >= 0.95, and
    16 clients without errors."""
    faiss = [r for r in results["scenarios"] if r["index"]["kind"] in ("ivf", "hnsw")]
    if not faiss:
        return "No faiss rows in this run."
    n = max(r["catalogue"] for r in faiss)
    rows = [r for r in faiss if r["catalogue"] == n]
    one = next((r for r in rows if r["clients"] == 1), None)
    many = [r for r in rows if r["clients"] > 1]
    if one is None:
        return ""
    met = one["p99_ms"] < 20 and one["index"]["recall_at_10"] >= 0.95
    return (f"**Target at {n:,} items** (top-10 p99 under 20 ms through faiss at recall@10 >= 0.95, 16 clients without errors): "
            f"{'met' if met else 'not met'} in this run: one client's p99 {one['p99_ms']} ms as the client saw it "
            f"({one['server_p99_ms']} ms inside the server) at recall@10 {one['index']['recall_at_10']:.3f}, at load average "
            f"{one['load_avg_1m'][0]}-{one['load_avg_1m'][1]} on {results['machine']['cores']} cores"
            + "".join(f"; {r['clients']} clients: {r['errors']} errors" for r in many) + ".")


def earlier_1m(path: Path) -> list[dict]:
    """The 1M faiss rows of the results file about to be replaced, kept beside the new ones (and those it kept)."""
    if not path.exists():
        return []
    old = json.loads(path.read_text())
    rows = [r for r in old["scenarios"] if r.get("catalogue", 0) >= 1_000_000 and r["index"]["kind"] in ("ivf", "hnsw")
            and "adds" not in r]
    if not rows:
        return old.get("earlier_1m", [])
    load = (f"{rows[0]['load_avg_1m'][0]}-{rows[0]['load_avg_1m'][1]}" if "load_avg_1m" in rows[0]
            else old["machine"].get("note") or "not recorded")
    return old.get("earlier_1m", []) + [{"date": old["machine"]["date"], "load": load, "rows": rows}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", help="a trained run to serve (default: train a small UniSRec on the synthetic world)")
    p.add_argument("--hidden", type=int, default=64, help="hidden size of the default run")
    p.add_argument("--sizes", type=int, nargs="*", default=[100_000, 1_000_000])
    p.add_argument("--clients", type=int, nargs="*", default=[1, 16])
    p.add_argument("--requests", type=int, default=600, help="at most this many requests per scenario")
    p.add_argument("--seconds", type=float, default=30, help="at most this long per scenario")
    p.add_argument("--add-every", type=float, default=0.25, help="seconds between adds in the adding-under-load scenario")
    p.add_argument("--noise", type=float, default=0.5, help="spread of the synthetic items around the run's items (relative)")
    p.add_argument("--no-scientific", action="store_true", help="leave out the Amazon Scientific run")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--no-write", action="store_true", help="do not update docs/RESULTS.md (the JSON is still written)")
    p.add_argument("--render-only", action="store_true", help="rewrite the RESULTS.md section from the saved JSON")
    # server mode (internal)
    p.add_argument("--serve", help=argparse.SUPPRESS)
    p.add_argument("--index", default="auto", help=argparse.SUPPRESS)
    p.add_argument("--pad", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--journal", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(args)
        return
    if args.render_only:
        render_saved(Path(args.out), SECTION, render, args.no_write)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    work = Path(os.environ.get("TEXTREC_BENCH_WORK", Path.home() / ".cache" / "textrec-work" / "serve-bench"))
    work.mkdir(parents=True, exist_ok=True)
    run = Path(args.run) if args.run else bench_run(work, args.hidden)
    import importlib.util

    # uvicorn uses these when they are installed (the serve extra has them): its fast HTTP parser and event loop
    stack = {name: importlib.util.find_spec(name) is not None for name in ("httptools", "uvloop")}
    results = {"machine": machine(), "command": command_line(), "run": run.name, "server_stack": stack,
               "settings": {k: getattr(args, k) for k in ("sizes", "clients", "requests", "seconds", "add_every", "noise", "hidden")},
               "scenarios": []}
    if not args.no_scientific:
        sci = scientific_run()
        results["scientific"] = scientific_facts(sci)
        results["scenarios"] += scenario_rows("Amazon Scientific (UniSRec)", sci, "auto", 0, args, work, adds=False)
    results["scenarios"] += scenario_rows("synthetic, trained items", run, "exact", 0, args, work, adds=True)
    for n in args.sizes:
        for kind in ("exact", "ivf"):
            results["scenarios"] += scenario_rows(f"synthetic, {n:,} added", run, kind, n, args, work, adds=False)
    results["earlier_1m"] = earlier_1m(Path(args.out))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    md = render(results)
    print(md)
    if not args.no_write:
        update_results(SECTION, md)


if __name__ == "__main__":
    main()
