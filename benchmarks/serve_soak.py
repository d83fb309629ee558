"""A soak of ``textrec serve`` on loopback: a real server process under mixed traffic, its memory sampled, then a
restart that must keep every item added during the soak.

The server is ``textrec serve RUN`` (the CLI's ``main`` in a fresh interpreter) (uvicorn, one worker, torch at one thread) on 127.0.0.1 with its
own journal. ``--clients`` threads (default 16) send, until ``--seconds`` pass, a mix of

* ``POST /recommend`` (a user's last 1-20 items, k=10; one in ten with a filter of 50 items, one in ten as
  ``/recommend/batch`` of 4),
* ``GET /items?q=`` (one or two words of an item's text),
* ``POST /items`` (a new item with a key of the client's own, or a new text for one it added),
* ``DELETE /items/{key}`` (one of the client's own added items),

in the ratio ``--mix`` (default 70:15:10:5). Every answer must be a 200 of the right shape; anything else, or a
transport error, is an error. The server's resident memory (``/proc/PID/status`` VmRSS) is sampled every
second: first, last, max and the least-squares slope in MB per minute. Then the server is stopped (SIGTERM) and
started again on the same journal, and every item the clients added and did not delete must be served with its
last text, must rank when a recommendation is filtered to the added items, and every deleted one must be gone.

``--add-memory N`` measures instead the server's memory per added item, under ``--baseline REV`` (the source
tree of a git revision, exported with ``git archive``) and under this checkout in one run: a fresh server on a
fresh journal, 20 warm-up adds, then N ``POST /items`` of one new item each from ``--clients`` threads and
nothing else; the resident memory after the warm-up and after the N adds gives KB per added item. It goes into
the same results file under ``add_memory`` (the soak's own figures are kept).

Results go to ``benchmarks/results/serve_soak.json`` (``benchmarks/reliability_table.py`` reads it).

    python benchmarks/serve_soak.py                    # 10 minutes, 16 clients, a UniSRec trained here
    python benchmarks/serve_soak.py --seconds 60 --clients 32 --run RUN --no-write
    python benchmarks/serve_soak.py --add-memory 2000 --baseline REV
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine

RESULTS = ROOT / "benchmarks" / "results" / "serve_soak.json"


class ServeProcess:
    """``textrec serve RUN`` on a free loopback port, ready once ``/healthz`` answers."""

    def __init__(self, run: Path, journal: Path, log: Path, src: Path = ROOT / "src") -> None:
        from serve_load import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(src) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, "-c", "import sys; from textrec.cli import main; sys.exit(main(sys.argv[1:]))", "serve", str(run), "--host", "127.0.0.1", "--port", str(self.port),
               "--journal", str(journal)]
        self.log = open(log, "ab")  # noqa: SIM115 (the server's output, open for its life; closed in stop)
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        self._wait_ready(cmd)
        self.start_s = time.perf_counter() - started

    def _wait_ready(self, cmd: list[str]) -> None:
        import httpx

        deadline = time.perf_counter() + 300
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}: {' '.join(cmd)} (see {self.log.name})")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not answer /healthz in 300 s: {' '.join(cmd)}")

    def rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.log.close()
        return code


def _catalogue(run: Path) -> tuple[list[list[str]], list[str]]:
    """(histories: each user's last 20 item keys, words of item texts for search)."""
    from textrec.serve.service import load_run_for_serving

    ds = load_run_for_serving(run).dataset
    histories = [[ds.item_keys[i - 1] for i in ds.sequence(u)[-20:]] for u in range(min(ds.n_users, 2000))]
    words = sorted({w for t in ds.item_texts for w in t.lower().split() if w.isalpha() and len(w) > 3})
    return [h for h in histories if h], words


class Client:
    """One soak client: its own connection, random stream, added keys (key -> last text) and deleted keys."""

    def __init__(self, n: int, url: str, histories: list, words: list, mix: np.ndarray, seed: int) -> None:
        self.n, self.url, self.histories, self.words, self.mix = n, url, histories, words, mix
        self.rng = np.random.default_rng([seed, n])
        self.added: dict[str, str] = {}
        self.deleted: set[str] = set()
        self.made = 0
        self.counts: Counter = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.errors: list[str] = []

    def run(self, deadline: float) -> None:
        import httpx

        with httpx.Client(base_url=self.url, timeout=60) as c:
            while time.perf_counter() < deadline:
                kind = ("recommend", "search", "add", "delete")[self.rng.choice(4, p=self.mix)]
                if kind == "delete" and not self.added:
                    kind = "add"
                t = time.perf_counter()
                try:
                    problem = getattr(self, kind)(c)
                except httpx.HTTPError as e:
                    problem = f"{type(e).__name__}: {e}"
                self.latency[kind].append(time.perf_counter() - t)
                self.counts[kind] += 1
                if problem:
                    self.errors.append(f"{kind}: {problem}"[:300])

    def recommend(self, c) -> str | None:
        history = self.histories[self.rng.integers(len(self.histories))]
        body = {"items": history[-int(self.rng.integers(1, len(history) + 1)):], "k": 10}
        if self.added and self.rng.random() < 0.3:  # its own items are clickable too
            body["items"] = body["items"] + [list(self.added)[self.rng.integers(len(self.added))]]
        roll = self.rng.random()
        if roll < 0.1:
            pool = [k for h in self.histories[:200] for k in h]
            body["filter"] = {"items": [pool[i] for i in self.rng.integers(len(pool), size=50)]}
        if roll > 0.9:
            r = c.post("/recommend/batch", json={"requests": [body] * 4})
            ok = r.status_code == 200 and len(r.json()["results"]) == 4 and all("recommendations" in x for x in r.json()["results"])
        else:
            r = c.post("/recommend", json=body)
            ok = r.status_code == 200 and 0 < len(r.json()["recommendations"]) <= 10
        return None if ok else f"{r.status_code} {r.text[:200]}"

    def search(self, c) -> str | None:
        q = " ".join(self.words[i] for i in self.rng.integers(len(self.words), size=int(self.rng.integers(1, 3))))
        r = c.get("/items", params={"q": q, "limit": 20})
        return None if r.status_code == 200 and isinstance(r.json()["items"], list) else f"{r.status_code} {r.text[:200]}"

    def add(self, c) -> str | None:
        if self.added and self.rng.random() < 0.2:  # a new version of one of its own
            key = list(self.added)[self.rng.integers(len(self.added))]
        else:
            self.made += 1
            key = f"SOAK-{self.n:02d}-{self.made:05d}"
        words = " ".join(self.words[i] for i in self.rng.integers(len(self.words), size=6))
        text = f"{key} {words}. Garden."
        r = c.post("/items", json={"items": [{"key": key, "text": text}]})
        if r.status_code != 200 or [a["item"] for a in r.json()["added"]] != [key]:
            return f"{r.status_code} {r.text[:200]}"
        self.added[key] = text
        self.deleted.discard(key)
        return None

    def delete(self, c) -> str | None:
        key = list(self.added)[self.rng.integers(len(self.added))]
        r = c.delete(f"/items/{key}")
        if r.status_code != 200 or r.json()["deleted"] != key:
            return f"{r.status_code} {r.text[:200]}"
        del self.added[key]
        self.deleted.add(key)
        return None


def _sample_rss(server: ServeProcess, stop: threading.Event, t0: float, out: list) -> None:
    while not stop.wait(1.0):
        rss = server.rss_mb()
        if rss is not None:
            out.append((time.perf_counter() - t0, rss))


def _memory(samples: list[tuple[float, float]]) -> dict:
    t, mb = np.array([s[0] for s in samples]), np.array([s[1] for s in samples])
    slope = float(np.polyfit(t / 60, mb, 1)[0]) if len(t) > 2 else None
    return {"samples": len(mb), "first_mb": round(float(mb[0]), 1), "last_mb": round(float(mb[-1]), 1),
            "max_mb": round(float(mb.max()), 1), "slope_mb_per_min": round(slope, 2) if slope is not None else None,
            "series": [[round(float(a), 1), round(float(b), 1)] for a, b in samples[:: max(1, len(samples) // 120)]]}


def _after_restart(url: str, clients: list[Client], probe: list[str]) -> dict:
    """Every kept item served with its last text and ranked when a recommendation is filtered to them; every
    deleted one gone."""
    import httpx

    kept = {k: v for cl in clients for k, v in cl.added.items()}
    deleted = {k for cl in clients for k in cl.deleted} - set(kept)
    out = {"added_kept": len(kept), "present": 0, "text_matches": 0, "recommendable": 0, "deleted": len(deleted), "deleted_absent": 0}
    with httpx.Client(base_url=url, timeout=120) as c:
        for key, text in kept.items():
            r = c.get(f"/items/{key}")
            if r.status_code == 200:
                out["present"] += 1
                out["text_matches"] += r.json()["text"] == text
        out["deleted_absent"] = sum(c.get(f"/items/{key}").status_code == 404 for key in deleted)
        keys = list(kept)
        for i in range(0, len(keys), 1000):
            chunk = keys[i:i + 1000]
            r = c.post("/recommend", json={"items": probe, "k": len(chunk), "filter": {"items": chunk}})
            if r.status_code == 200:
                out["recommendable"] += len({x["item"] for x in r.json()["recommendations"]} & set(chunk))
    return out


def soak(run: Path, work: Path, seconds: float, clients: int = 16, mix=(70, 15, 10, 5), seed: int = 0) -> dict:
    """Serve ``run`` from a fresh journal in ``work``, soak it for ``seconds`` with ``clients`` clients, restart it,
    and check what it kept. Returns the measurements (no exception for a failed check: the counts say)."""
    work.mkdir(parents=True, exist_ok=True)
    journal, log = work / "journal.jsonl", work / "server.log"
    journal.unlink(missing_ok=True)
    histories, words = _catalogue(run)
    server = ServeProcess(run, journal, log)
    p = np.array(mix, dtype=float) / sum(mix)
    team = [Client(i, server.url, histories, words, p, seed) for i in range(clients)]
    samples: list = []
    stop = threading.Event()
    t0 = time.perf_counter()
    sampler = threading.Thread(target=_sample_rss, args=(server, stop, t0, samples), daemon=True)
    sampler.start()
    threads = [threading.Thread(target=cl.run, args=(t0 + seconds,)) for cl in team]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    stop.set()
    sampler.join()
    items_before = server_items(server.url)
    exit_code = server.stop()
    restarted = ServeProcess(run, journal, log)
    try:
        kept = _after_restart(restarted.url, team, histories[0])
        kept["items_before"], kept["items_after"] = items_before, server_items(restarted.url)
        kept["restart_s"] = round(restarted.start_s, 1)
    finally:
        restarted.stop()
    counts = sum((cl.counts for cl in team), Counter())
    errors = [e for cl in team for e in cl.errors]
    latency = {kind: np.array([x for cl in team for x in cl.latency[kind]]) * 1000 for kind in counts}
    return {
        "requested_s": seconds, "seconds": round(wall, 1), "clients": clients, "mix": dict(zip(("recommend", "search", "add", "delete"), mix)),
        "requests": int(sum(counts.values())), "errors": len(errors), "first_errors": errors[:5],
        "req_per_s": round(sum(counts.values()) / wall, 1),
        "by_kind": {k: {"requests": int(counts[k]), "p50_ms": round(float(np.percentile(latency[k], 50)), 1),
                        "p99_ms": round(float(np.percentile(latency[k], 99)), 1)} for k in sorted(counts)},
        "memory": _memory(samples), "server_exit_code": exit_code, "start_s": round(server.start_s, 1), "restart": kept,
    }


def add_memory(run: Path, work: Path, adds: int, clients: int = 16, src: Path = ROOT / "src") -> dict:
    """The server (of the source tree ``src``) on a fresh journal: its resident memory after 20 warm-up adds and
    after ``adds`` more, one new item per ``POST /items``, sent from ``clients`` threads."""
    import httpx

    work.mkdir(parents=True, exist_ok=True)
    journal = work / "journal.jsonl"
    journal.unlink(missing_ok=True)
    _, words = _catalogue(run)
    server = ServeProcess(run, journal, work / "server.log", src)
    errors: list[str] = []

    def post(c, n: int) -> None:
        rng = np.random.default_rng(n)
        key = f"MEM-{n:06d}"
        r = c.post("/items", json={"items": [{"key": key, "text": f"{key} {' '.join(words[i] for i in rng.integers(len(words), size=6))}. Garden."}]})
        if r.status_code != 200:
            errors.append(f"{r.status_code} {r.text[:200]}")

    def send(numbers) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            for n in numbers:
                post(c, n)

    try:
        send(range(20))
        first = server.rss_mb()
        t0 = time.perf_counter()
        threads = [threading.Thread(target=send, args=(range(20 + i, 20 + adds, clients),)) for i in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
        last, items = server.rss_mb(), server_items(server.url)
    finally:
        server.stop()
    return {"adds": adds, "clients": clients, "errors": len(errors), "items_at_end": items, "first_mb": round(first, 1),
            "last_mb": round(last, 1), "kb_per_add": round((last - first) * 1024 / adds, 1), "ms_per_add": round(seconds * 1000 / adds, 1)}


def server_items(url: str) -> int:
    import httpx

    return httpx.get(url + "/healthz", timeout=30).json()["items"]


def held(result: dict) -> bool:
    """Zero errors, and every kept item present, with its last text, recommendable; every deleted one gone."""
    k = result["restart"]
    return (result["errors"] == 0 and k["present"] == k["text_matches"] == k["recommendable"] == k["added_kept"]
            and k["deleted_absent"] == k["deleted"] and k["items_before"] == k["items_after"])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=float, default=600, help="soak duration (default 600: 10 minutes)")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--mix", default="70:15:10:5", help="recommend:search:add:delete ratio")
    p.add_argument("--run", help="a trained text run (default: a UniSRec trained here on the synthetic garden world)")
    p.add_argument("--work", help="scratch folder (default a temporary one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--add-memory", type=int, metavar="N", help="measure memory per added item over N adds instead of soaking")
    p.add_argument("--baseline", help="with --add-memory: a git revision measured too, before this checkout")
    p.add_argument("--no-write", action="store_true", help=f"print; do not write {RESULTS.relative_to(ROOT)}")
    args = p.parse_args()
    mix = tuple(int(x) for x in args.mix.split(":"))
    if args.add_memory:
        return main_add_memory(args)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        run = _bench_run(args, work)
        result = {"machine": machine(), "revision": _revision("HEAD"), "run": run.name, **soak(run, work / "soak", args.seconds, args.clients, mix, args.seed)}
    result["held"] = held(result)
    print(json.dumps({k: v for k, v in result.items() if k != "memory"} | {"memory": {k: v for k, v in result["memory"].items() if k != "series"}}, indent=1))
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        kept = {k: v for k, v in json.loads(RESULTS.read_text()).items() if k == "add_memory"} if RESULTS.exists() else {}
        RESULTS.write_text(json.dumps({**result, **kept}, indent=1) + "\n")
        print(f"wrote {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    if not result["held"]:
        sys.exit(1)


def _bench_run(args, work: Path) -> Path:
    """The run to serve: ``--run``, else serve_load.py's small UniSRec trained in ``work``."""
    if args.run:
        return Path(args.run)
    from serve_load import bench_run

    return bench_run(work, 64)


def _revision(rev: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", rev], capture_output=True, text=True, check=True).stdout.strip()


def main_add_memory(args) -> None:
    from pretrain_throughput import export_revision

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        run = _bench_run(args, work)
        trees = {}
        if args.baseline:
            rev = _revision(args.baseline)
            (Path(tmp) / "baseline").mkdir()
            trees["baseline"] = (export_revision(args.baseline, Path(tmp) / "baseline"), rev)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "src"], capture_output=True, text=True,
                               check=False).stdout.strip()
        trees["this checkout"] = (ROOT / "src", _revision("HEAD") + (" with uncommitted changes" if dirty else ""))
        measured = {}
        for name, (src, rev) in trees.items():
            measured[name] = {**({"revision": rev} if rev else {}), **add_memory(run, work / f"add-memory-{len(measured)}", args.add_memory, args.clients, src)}
            print(name, json.dumps(measured[name]), file=sys.stderr)
    result = {"machine": machine(), "run": run.name, **measured}
    print(json.dumps(result, indent=1))
    if not args.no_write:
        saved = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        RESULTS.write_text(json.dumps({**saved, "add_memory": result}, indent=1) + "\n")
        print(f"wrote add_memory into {RESULTS.relative_to(ROOT)}", file=sys.stderr)
    if any(m["errors"] for m in measured.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()
