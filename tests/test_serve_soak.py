"""A soak of a real ``textrec serve`` process on loopback (``benchmarks/serve_soak.py``): 16 clients of mixed
recommend / search / add / delete traffic with zero errors, then a restart that keeps every added item (present,
with its last text, recommendable) and none of the deleted ones. 5 s in the default run, 30 s under ``-m slow``;
the benchmark runs the same harness for 10 minutes."""

from __future__ import annotations

import itertools
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from serve_runs import shared_run

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("uvicorn")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from serve_soak import held, soak


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return shared_run(tmp_path_factory, "vqrec", epochs=2)  # the serving fuzz tests' run (tests/serve_runs.py)


def _check(result: dict) -> None:
    assert result["errors"] == 0, result["first_errors"]
    by_kind = result["by_kind"]
    assert set(by_kind) == {"recommend", "search", "add", "delete"}, by_kind  # every kind of traffic was sent
    k = result["restart"]
    assert k["added_kept"] > 0 and k["deleted"] > 0, k
    assert k["present"] == k["text_matches"] == k["recommendable"] == k["added_kept"], k
    assert k["deleted_absent"] == k["deleted"] and k["items_before"] == k["items_after"], k
    assert result["server_exit_code"] == 0 and result["memory"]["samples"] > 0
    assert held(result)


def test_a_short_soak_loses_nothing(run, tmp_path):
    _check(soak(run, tmp_path / "soak", seconds=5, clients=16))


@pytest.mark.slow
def test_a_30_second_soak_with_64_clients_loses_nothing(run, tmp_path):
    _check(soak(run, tmp_path / "soak", seconds=30, clients=64))


def test_a_long_journal_replays_in_one_growth_to_the_same_catalogue(run, tmp_path, monkeypatch):
    """Adds, updates and deletes interleaved: the restart encodes once (not once per delete), serves the same items
    under the same serve ids and texts, and ranks them with the same scores."""
    from textrec.serve import catalogue
    from textrec.serve.service import Service

    live = Service(run, journal=tmp_path / "journal.jsonl")
    for i in range(6):
        live.add_items([{"key": f"S{i}", "text": f"Soak item {i} bamboo rake, vintage style. Garden."}])
        if i % 2:
            live.delete_item(f"S{i - 1}")
    live.add_items([{"key": "S3", "text": "Soak item 3 again, a blue glass planter. Garden."}])
    live.delete_item("garden-00002")
    grown = []
    real = catalogue.grow_catalogue
    monkeypatch.setattr(catalogue, "grow_catalogue", lambda *a, **kw: grown.append(1) or real(*a, **kw))
    again = Service(run, journal=tmp_path / "journal.jsonl")
    assert len(grown) == 1
    assert again.live == live.live and again.added == live.added
    assert [again.item(k) for k in sorted(live.live)] == [live.item(k) for k in sorted(live.live)]
    history = ["garden-00001", "S5"]
    assert again.recommend(history, k=len(live.live)) == live.recommend(history, k=len(live.live))


def test_adding_items_one_by_one_grows_the_id_columns_by_doubling(run, tmp_path):
    """Each add appends to the service's per-item id columns in spare capacity: 60 adds reallocate them a few
    times (doubling), never once per add (a whole-column copy per add: the memory growth of the soak)."""
    from textrec.serve.service import Service

    live = Service(run, journal=tmp_path / "journal.jsonl")
    n0 = len(live.keys)
    columns = {"model_ids": [live.model_ids], "serve_ids": [live.serve_ids]}
    for i in range(60):
        live.add_items([{"key": f"G{i}", "text": f"Grown item {i}, a copper watering can. Garden."}])
        for name, seen in columns.items():
            seen.append(getattr(live, name))  # kept alive, so a freed buffer's address cannot come back
    for name, seen in columns.items():
        copies = sum(not np.shares_memory(a, b) for a, b in itertools.pairwise(seen))
        assert copies <= 3, f"{name}: {copies} whole-column copies for 60 adds"
    assert live.model_ids.tolist() == list(range(1, n0 + 61))
    assert live.serve_ids.tolist() == list(range(n0 + 61))
    assert live.recommend(["G59"], k=3)["recommendations"]


def test_every_catalogue_growth_runs_on_one_writer_thread(run, tmp_path, monkeypatch):
    """Adds from 8 request threads at once grow the catalogue on the service's one writer thread (the tables a
    growth allocates and frees stay in one allocator arena, reused by the next add), and every item is served."""
    from concurrent.futures import ThreadPoolExecutor

    from textrec.serve import catalogue
    from textrec.serve.service import Service

    live = Service(run, journal=tmp_path / "journal.jsonl")
    threads = []
    real = catalogue.grow_catalogue
    monkeypatch.setattr(catalogue, "grow_catalogue", lambda *a, **kw: threads.append(threading.get_ident()) or real(*a, **kw))

    def add(i: int) -> None:
        live.add_items([{"key": f"T{i}", "text": f"Threaded item {i}, a willow basket. Garden."}])

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(add, range(24)))
    assert len(threads) == 24 and len(set(threads)) == 1, f"grown on {len(set(threads))} threads"
    assert threads[0] != threading.get_ident()
    assert all(live.item(f"T{i}")["added"] for i in range(24))
