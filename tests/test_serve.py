"""``textrec serve``: the HTTP API over a trained run, items added live and kept across restarts, and 4xx errors."""

from __future__ import annotations

import numpy as np
import pytest
from serve_runs import make_world, train, train_missrec_on_features

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
from fastapi.testclient import TestClient

from textrec.serve.app import MAX_BODY_BYTES, create_app
from textrec.serve.service import MAX_HISTORY, Service

NEW_TEXT = "Zorblat orange bamboo birdhouse, vintage style. Garden Outdoor Living. Zorblat."


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    world = make_world(root)
    return {m: train(world, root / m, m, epochs=3) for m in ("vqrec", "unisrec", "sasrec")}


def client(run, tmp_path, **kw) -> TestClient:
    api_key = kw.pop("api_key", None)
    return TestClient(create_app(Service(run, journal=tmp_path / "journal.jsonl", **kw), api_key=api_key))


@pytest.mark.parametrize("model", ["vqrec", "sasrec"])
def test_recommendations_are_the_library_ones(runs, tmp_path, model):
    from textrec.serve.recommend import item_ids, recommend
    from textrec.serve.service import load_run_for_serving

    c = client(runs[model], tmp_path)
    history = ["garden-00001", "garden-00005", "garden-00009"]
    got = c.post("/recommend", json={"items": history, "k": 15})
    assert got.status_code == 200
    run = load_run_for_serving(runs[model])
    want = recommend(run.model, run.dataset, item_ids(run.dataset, history), k=15, max_seq_len=run.cfg.data.max_seq_len)
    assert [r["item"] for r in got.json()["recommendations"]] == [r.item_key for r in want]
    assert [r["score"] for r in got.json()["recommendations"]] == pytest.approx([r.score for r in want], abs=1e-5)
    assert not set(history) & {r["item"] for r in got.json()["recommendations"]}
    user = run.dataset.user_keys[3]
    assert c.post("/recommend", json={"user": user, "k": 5}).status_code == 200
    batch = c.post("/recommend/batch", json={"requests": [{"items": history, "k": 15}, {"items": ["nope"]}]}).json()["results"]
    assert batch[0]["recommendations"] == got.json()["recommendations"] and "nope" in batch[1]["error"]


def test_bad_requests_get_4xx_json_naming_the_field(runs, tmp_path):
    c = client(runs["vqrec"], tmp_path)
    partly = c.post("/recommend", json={"items": ["garden-00001", "no-such-item"], "k": 3})
    assert partly.status_code == 200 and partly.json()["unknown"] == ["no-such-item"]
    cases = [
        ({"items": ["no-such-item"]}, 404, "no-such-item"),
        ({"items": ["garden-00001"], "k": 0}, 422, "k"),
        ({"items": ["garden-00001"], "k": "10"}, 422, "k"),
        ({"items": "garden-00001"}, 422, "items"),
        ({"items": ["garden-00001"] * (MAX_HISTORY + 1)}, 422, "items"),
        ({"items": [3]}, 422, "items[0]"),
        ({"items": ["garden-00001"], "user": "x"}, 422, "exactly one"),
        ({"items": ["garden-00001"], "colour": "red"}, 422, "colour"),
        ({"user": "no-such-user"}, 404, "no-such-user"),
    ]
    for body, status, named in cases:
        r = c.post("/recommend", json=body)
        assert r.status_code == status, (body, r.text)
        assert named in r.json()["error"] and "Traceback" not in r.text
    for body, named in (({"items": [{"key": "A", "text": "   "}]}, "items[0]"), ({"items": []}, "items"),
                        ({"items": [{"text": "no key"}]}, "items[0].key")):
        r = c.post("/items", json=body)
        assert r.status_code == 422 and r.json()["field"] == named, r.text
    r = c.post("/recommend", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = c.post("/items", content=b"x" * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert c.get("/items?limit=0").status_code == 422
    assert c.get("/items/no-such-item").status_code == 404


def test_added_item_is_recommended_and_survives_a_restart(runs, tmp_path):
    c = client(runs["vqrec"], tmp_path)
    history = ["garden-00001", "garden-00002"]
    top = c.post("/recommend", json={"items": history, "k": 3}).json()["recommendations"]
    # the same text as the best catalogue item under a new key scores exactly as that item
    copy = {"key": "COPY-1", "text": top[0]["text"]}
    added = c.post("/items", json={"items": [copy, {"key": "NEW-1", "text": NEW_TEXT}]})
    assert added.status_code == 200 and added.json()["items"] == 122
    recs = c.post("/recommend", json={"items": history, "k": 4}).json()["recommendations"]
    scores = {r["item"]: r["score"] for r in recs}
    assert scores["COPY-1"] == pytest.approx(top[0]["score"], abs=1e-5)
    assert c.get("/items/NEW-1").json()["added"] is True
    assert c.get("/items?q=zorblat").json()["items"][0]["item"] == "NEW-1"
    # a new item can itself be clicked into a session
    assert c.post("/recommend", json={"items": ["NEW-1"], "k": 3}).json()["history"] == ["NEW-1"]
    # an update retires the old version; a delete retires the item
    c.post("/items", json={"items": [{"key": "COPY-1", "text": "Quotal blue glass rake, modern style. Garden."}]})
    assert c.get("/items/COPY-1").json()["text"].startswith("Quotal blue glass rake")
    assert c.delete("/items/NEW-1").status_code == 200
    assert c.get("/items/NEW-1").status_code == 404
    full = c.post("/recommend", json={"items": history, "k": 1000}).json()["recommendations"]
    assert [r["item"] for r in full].count("COPY-1") == 1 and "NEW-1" not in {r["item"] for r in full}
    # a restart replays the journal: the same catalogue and the same scores
    again = client(runs["vqrec"], tmp_path)
    assert again.get("/healthz").json()["items"] == 121
    assert again.post("/recommend", json={"items": history, "k": 1000}).json()["recommendations"] == full


def test_a_torn_last_journal_record_is_dropped(runs, tmp_path):
    c = client(runs["unisrec"], tmp_path)
    assert c.post("/items", json={"items": [{"key": "NEW-1", "text": NEW_TEXT}]}).status_code == 200
    with open(tmp_path / "journal.jsonl", "a") as f:
        f.write('{"op": "add", "items": [{"key": "HALF')  # a crash in the middle of a write
    again = client(runs["unisrec"], tmp_path)
    assert again.get("/items/NEW-1").status_code == 200 and again.get("/healthz").json()["items"] == 121
    assert again.post("/items", json={"items": [{"key": "NEW-2", "text": "Vora red wood rake."}]}).status_code == 200
    third = client(runs["unisrec"], tmp_path)
    assert third.get("/items/NEW-2").status_code == 200


def test_writes_read_only_api_key_and_sasrec(runs, tmp_path):
    body = {"items": [{"key": "NEW-1", "text": NEW_TEXT}]}
    ro = client(runs["vqrec"], tmp_path, read_only=True)
    r = ro.post("/items", json=body)
    assert r.status_code == 403 and "read-only" in r.json()["error"]
    assert ro.delete("/items/garden-00001").status_code == 403
    guarded = client(runs["vqrec"], tmp_path, api_key="s3cret-key")
    assert guarded.post("/items", json=body).status_code == 401
    assert guarded.post("/items", json=body, headers={"X-API-Key": "wrong-key"}).status_code == 401
    assert guarded.post("/items", json=body, headers={"X-API-Key": "s3cret-key"}).status_code == 200
    sasrec = client(runs["sasrec"], tmp_path / "s")
    r = sasrec.post("/items", json=body)
    assert r.status_code == 409 and "cannot score new items" in r.json()["error"]


def test_metrics_and_health(runs, tmp_path):
    c = client(runs["vqrec"], tmp_path)
    c.post("/recommend", json={"items": ["garden-00001"]})
    c.post("/recommend", json={"items": ["garden-00001"], "k": -1})
    text = c.get("/metrics").text
    assert 'textrec_requests_total{route="/recommend",status="200"} 1.0' in text
    assert 'textrec_requests_total{route="/recommend",status="422"} 1.0' in text
    assert "textrec_request_seconds_bucket" in text and "textrec_catalogue_items 120.0" in text
    assert 'textrec_index_recall_at_10{kind="exact"} 1.0' in text
    assert c.get("/healthz").json() == {"status": "ok", "items": 120}
    timing = c.post("/recommend", json={"items": ["garden-00001"]}).headers["server-timing"]
    assert timing.startswith("app;dur=") and 0 < float(timing.split("=")[1]) < 10_000
    assert "<title>textrec</title>" in c.get("/").text and c.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("assets", ["fastapi-offline", "none"])
def test_api_docs_load_only_from_this_server(runs, tmp_path, monkeypatch, assets):
    """/docs references only same-origin URLs, each answered: it works with no internet."""
    import re
    import sys

    if assets == "none":
        monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # not installed: a plain page of the routes
    else:
        pytest.importorskip("fastapi_offline")
    c = client(runs["vqrec"], tmp_path)
    r = c.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "://" not in r.text, r.text  # no absolute URL: no CDN, no font host, no validator badge
    urls = re.findall(r"""(?:src|href)=["']([^"']+)""", r.text) + re.findall(r"url: '([^']+)'", r.text)
    assert "/openapi.json" in urls
    for url in urls:
        assert url.startswith("/") and c.get(url).status_code == 200, url
    if assets != "none":
        assert "/docs-static/swagger-ui-bundle.js" in urls and "/docs-static/swagger-ui.css" in urls
    else:
        assert "POST /recommend" in r.text
    assert c.get("/redoc").status_code == 404  # ReDoc would fetch its logo from its maker's CDN


def test_pq_index_scores_vqrec_from_its_codes(runs, tmp_path):
    exact = client(runs["vqrec"], tmp_path, index_kind="exact")
    pq = client(runs["vqrec"], tmp_path / "pq", index_kind="pq")
    assert pq.get("/stats").json()["index"]["kind"] == "pq"
    body = {"items": ["garden-00011", "garden-00012"], "k": 20}
    a = exact.post("/recommend", json=body).json()["recommendations"]
    b = pq.post("/recommend", json=body).json()["recommendations"]
    assert [r["score"] for r in b] == pytest.approx([r["score"] for r in a], abs=1e-5)
    new = {"items": [{"key": "NEW-1", "text": NEW_TEXT}]}
    exact.post("/items", json=new), pq.post("/items", json=new)
    body = {"items": ["garden-00011"], "k": 121}
    a = {r["item"]: r["score"] for r in exact.post("/recommend", json=body).json()["recommendations"]}
    b = {r["item"]: r["score"] for r in pq.post("/recommend", json=body).json()["recommendations"]}
    assert b["NEW-1"] == pytest.approx(a["NEW-1"], abs=1e-5)
    from textrec.errors import TextrecError

    with pytest.raises(TextrecError, match="VQ-Rec codes"):
        Service(runs["unisrec"], index_kind="pq", journal=tmp_path / "u.jsonl")


def test_serve_command_line_refuses_bad_options(runs, tmp_path, capsys):
    from textrec.cli import main

    assert main(["serve", str(runs["vqrec"]), "--workers", "2"]) == 2
    assert "--read-only" in capsys.readouterr().err
    short = tmp_path / "key"
    short.write_text("abc")
    assert main(["serve", str(runs["vqrec"]), "--api-key-file", str(short)]) == 2
    assert "at least 8" in capsys.readouterr().err


# ---- the item index alone ---------------------------------------------------------------------

def clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(64, dim))
    v = centres[rng.integers(0, 64, n)] + 0.5 * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


def test_exact_index_is_brute_force_with_deletions_and_exclusions():
    from textrec.serve.index import ItemIndex

    v = clustered(500, 16, 0)
    ids = np.arange(1, 501)
    index = ItemIndex.build(ids, v, "exact")
    q = v[10] + 0.1
    brute = np.argsort(-(v @ q), kind="stable")[:10] + 1
    assert index.search(q, 10).ids == brute.tolist()
    index.remove([int(brute[0])])
    got = index.search(q, 10, exclude={int(brute[1])}).ids
    assert got == [i for i in np.argsort(-(v @ q), kind="stable")[:12] + 1 if i not in brute[:2]][:10]
    index.add(np.array([501]), vectors=q[None] * 10)
    assert index.search(q, 1).ids == [501] and len(index) == 500


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_faiss_index_reaches_its_recall_and_honours_changes(kind):
    pytest.importorskip("faiss")
    from textrec.serve.index import ItemIndex

    v = clustered(20_000, 32, 1)
    ids = np.arange(1, 20_001)
    queries = clustered(100, 32, 2)
    index = ItemIndex.build(ids, v, kind, queries=queries)
    assert index.recall_at_10 >= 0.95
    exact = ItemIndex.build(ids, v, "exact")
    test_q = clustered(50, 32, 3)
    recall = np.mean([len(set(index.search(q, 10).ids) & set(exact.search(q, 10).ids)) / 10 for q in test_q])
    assert recall >= 0.9
    q = test_q[0]
    best = index.search(q, 1).ids[0]
    index.remove([best])
    assert best not in index.search(q, 10).ids
    index.add(np.array([20_001]), vectors=q[None])
    assert index.search(q, 1).ids == [20_001]
    assert 20_001 not in index.search(q, 5, exclude={20_001}).ids


def test_an_internal_error_is_json_without_a_stack_trace(runs, tmp_path, monkeypatch):
    service = Service(runs["vqrec"], journal=tmp_path / "journal.jsonl")

    def broken(*args, **kwargs):
        raise RuntimeError("secret detail")

    monkeypatch.setattr(service, "recommend", broken)
    c = TestClient(create_app(service), raise_server_exceptions=False)
    r = c.post("/recommend", json={"items": ["garden-00001"]})
    assert r.status_code == 500 and r.json() == {"error": "internal error (logged on the server)"}
    assert "secret" not in r.text and "Traceback" not in r.text


def test_textrec_serve_starts_on_loopback_and_answers(runs, tmp_path):
    import os
    import socket
    import subprocess
    import sys
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    key = tmp_path / "key"
    key.write_text("a-long-enough-key\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    proc = subprocess.Popen([sys.executable, "-m", "textrec.cli", "serve", str(runs["unisrec"]), "--port", str(port),
                             "--journal", str(tmp_path / "j.jsonl"), "--api-key-file", str(key)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("textrec serve did not answer /healthz")
        r = httpx.post(url + "/recommend", json={"items": ["garden-00001"], "k": 5})
        assert r.status_code == 200 and len(r.json()["recommendations"]) == 5
        assert httpx.post(url + "/items", json={"items": [{"key": "N", "text": NEW_TEXT}]}).status_code == 401
        assert httpx.post(url + "/items", json={"items": [{"key": "N", "text": NEW_TEXT}]},
                          headers={"X-API-Key": "a-long-enough-key"}).status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert f"on http://127.0.0.1:{port}/" in err


@pytest.mark.parametrize("model", ["missrec", "recformer"])
def test_every_text_model_serves_and_takes_new_items(tmp_path, model):
    """MISSRec ranks through the library (its own scorer), Recformer through the index: both as ``recommend()``."""
    from textrec.cli import main
    from textrec.data.synthetic import WorldSpec, make_domain
    from textrec.serve.recommend import item_ids, recommend
    from textrec.serve.service import load_run_for_serving
    from textrec.text.encoders import HashingEncoder

    ds = make_domain("garden", WorldSpec(n_items=40, n_users=120, min_len=5, max_len=10, noise=0.1), seed=3)
    feats = np.zeros((ds.n_items + 1, 16), dtype=np.float32)
    feats[1:] = HashingEncoder(16).encode(ds.item_texts)
    ds.features["feat1CLS"] = feats
    ds.save(tmp_path / "data")
    extra = {"missrec": ['data.features=["feat1CLS"]', 'model.image_feature=""'], "recformer": ["model.backbone=random", "model.n_layers=1",
                                                                                                 # off Recformer's recipe (lr 5e-5, warm-up): one epoch must move the scores apart
                                                                                                 "train.lr=0.001", "train.grad_accum=1", "train.warmup_steps=0"]}[model]
    assert main(["train", str(tmp_path / "data"), "--model", model, "--out", str(tmp_path / "run"), "--quiet", *extra,
                 "model.hidden_size=16", "model.n_heads=2", "model.inner_size=16", "train.epochs=1", "train.batch_size=128",
                 "train.device=cpu", "train.num_threads=1"]) == 0
    c = client(tmp_path / "run", tmp_path)
    history = ds.item_keys[:2]
    got = c.post("/recommend", json={"items": history, "k": 5}).json()["recommendations"]
    run = load_run_for_serving(tmp_path / "run")
    want = recommend(run.model, run.dataset, item_ids(run.dataset, history), k=5, max_seq_len=run.cfg.data.max_seq_len)
    assert [r["item"] for r in got] == [r.item_key for r in want]
    only = c.post("/recommend", json={"items": history, "k": 2, "filter": {"items": [got[2]["item"], got[0]["item"]]}}).json()
    assert [r["item"] for r in only["recommendations"]] == [got[0]["item"], got[2]["item"]]
    assert c.post("/items", json={"items": [{"key": "NEW-1", "text": NEW_TEXT}]}).status_code == 200
    assert c.delete(f"/items/{got[0]['item']}").status_code == 200
    full = [r["item"] for r in c.post("/recommend", json={"items": history, "k": 100}).json()["recommendations"]]
    assert "NEW-1" in full and got[0]["item"] not in full and len(full) == ds.n_items - 2


@pytest.mark.parametrize("index_kind", ["exact", "pq"])
def test_a_filter_ranks_only_the_given_items_exactly(runs, tmp_path, index_kind):
    c = client(runs["vqrec"], tmp_path, index_kind=index_kind)
    history = ["garden-00001", "garden-00002"]
    full = c.post("/recommend", json={"items": history, "k": 1000}).json()["recommendations"]
    chosen = [full[40]["item"], full[5]["item"], full[90]["item"], "garden-00001", "no-such-item"]
    got = c.post("/recommend", json={"items": history, "k": 3, "filter": {"items": chosen}}).json()
    assert [r["item"] for r in got["recommendations"]] == [full[5]["item"], full[40]["item"], full[90]["item"]]
    assert [r["score"] for r in got["recommendations"]] == pytest.approx([full[i]["score"] for i in (5, 40, 90)], abs=1e-5)
    assert got["unknown_candidates"] == ["no-such-item"]  # and the history item is never a candidate
    r = c.post("/recommend", json={"items": history, "filter": {"items": []}})
    assert r.status_code == 422 and r.json()["field"] == "filter.items"


# ---- items given with their feature vectors (a model that reads feature tables) ------------------------------

@pytest.fixture(scope="module")
def missrec_run(tmp_path_factory):
    return train_missrec_on_features(tmp_path_factory.mktemp("missrec"))


def test_new_items_given_by_feature_vectors_score_from_them_and_survive_a_restart(missrec_run, tmp_path):
    run, ds, feats = missrec_run
    c = client(run, tmp_path)
    history = ds.item_keys[:2]
    before = {r["item"]: r["score"] for r in c.post("/recommend", json={"items": history, "k": 100}).json()["recommendations"]}
    twin_of = ds.item_keys[9]  # item id 10: a new item with its vector scores exactly as it (inductive: the row is all it has)
    twin = {"key": "TWIN", "features": {"feat1CLS": feats[10].tolist()}}  # no text: this model reads none
    other = {"key": "OTHER", "text": NEW_TEXT, "features": {"feat1CLS": (-feats[10]).tolist()}}
    r = c.post("/items", json={"items": [twin, other]})
    assert r.status_code == 200, r.text
    full = c.post("/recommend", json={"items": history, "k": 100}).json()["recommendations"]
    scores = {x["item"]: x["score"] for x in full}
    assert scores["TWIN"] == pytest.approx(before[twin_of], abs=1e-5)
    assert scores["OTHER"] != pytest.approx(scores["TWIN"], abs=1e-3)  # the vector, not the text, made the row
    # an update with another vector changes the score; a restart replays the journal with the vectors in it
    c.post("/items", json={"items": [{"key": "OTHER", "features": {"feat1CLS": feats[12].tolist()}}]})
    full = c.post("/recommend", json={"items": history, "k": 100}).json()["recommendations"]
    assert {x["item"]: x["score"] for x in full}["OTHER"] == pytest.approx(before[ds.item_keys[11]], abs=1e-5)
    again = client(run, tmp_path)
    assert again.post("/recommend", json={"items": history, "k": 100}).json()["recommendations"] == full


def test_bad_feature_vectors_get_4xx_naming_the_field(missrec_run, runs, tmp_path):
    run, _, feats = missrec_run
    c = client(run, tmp_path)
    good = {"key": "GOOD", "features": {"feat1CLS": feats[3].tolist()}}
    row = feats[3].tolist()
    cases = [
        ({"nope": row}, "items[1].features.nope", "unknown feature table 'nope'"),
        ({"feat1CLS": row[:15]}, "items[1].features.feat1CLS", "16-d, got 15"),
        ({"feat1CLS": [*row[:15], 1e39]}, "items[1].features.feat1CLS[15]", "less than or equal"),  # float32 would be inf
        ({"feat1CLS": [*row[:15], "0.5"]}, "items[1].features.feat1CLS[15]", "number"),
        ({"feat1CLS": []}, "items[1].features.feat1CLS", "at least 1"),
        ({}, "items[1]", "'features'"),
    ]
    for features, field, why in cases:
        r = c.post("/items", json={"items": [good, {"key": "BAD", "features": features}]})
        assert r.status_code == 422 and r.json()["field"] == field and why in r.json()["error"], (features, r.text)
    nan = '{"items": [{"key": "BAD", "features": {"feat1CLS": [NaN' + ", 0.0" * 15 + ']}}]}'
    r = c.post("/items", content=nan.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422 and r.json()["field"] == "items[0].features.feat1CLS[0]" and "finite" in r.json()["error"]
    assert not (tmp_path / "journal.jsonl").exists() and c.get("/items/GOOD").status_code == 404  # nothing half-added
    # the schema says what this run takes: its one table at its width, nothing else
    features = c.get("/openapi.json").json()["components"]["schemas"]["ItemIn"]["properties"]["features"]
    assert features["additionalProperties"] is False and list(features["properties"]) == ["feat1CLS"]
    assert features["properties"]["feat1CLS"]["minItems"] == features["properties"]["feat1CLS"]["maxItems"] == 16
    # a model without feature tables refuses vectors with the reason (and its schema has no features); SASRec takes no
    # new items at all
    unisrec = client(runs["unisrec"], tmp_path / "u")
    item = unisrec.get("/openapi.json").json()["components"]["schemas"]["ItemIn"]
    assert "features" not in item["properties"] and item["additionalProperties"] is False
    r = unisrec.post("/items", json={"items": [{"key": "N", "text": NEW_TEXT, "features": {"x": [1.0]}}]})
    assert r.status_code == 422 and r.json()["field"] == "items[0].features" and "reads no feature tables" in r.json()["error"]
    r = client(runs["sasrec"], tmp_path / "s").post("/items", json={"items": [{"key": "N", "features": {"x": [1.0]}}]})
    assert r.status_code == 409
