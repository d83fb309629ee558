"""``textrec serve`` against its own OpenAPI schema (schemathesis, in-process ASGI): no 5xx, no response outside the
schema, every schema-valid request accepted and every schema-violating one refused with a 4xx; and every request
size bounded.

Each route gets ``TEXTREC_SERVE_FUZZ_EXAMPLES`` generated requests (default 25) that follow the schema and as many
that break it (fixed seeds; the default run skips the schema-violating mode of a route that takes only path and
header strings, which has no such request); under ``-m slow`` ``TEXTREC_SERVE_FUZZ_EXAMPLES_SLOW`` (default 300) against a writable
VQ-Rec server, a SASRec server (which cannot add items: 409) and a read-only one behind an API key. A MISSRec server
on a feature table checks the ``features`` of new items, whose schema names this run's table and width.
``TEXTREC_SERVE_FUZZ_REPORT`` names a JSON file that gets the cases tried and held per route
(``benchmarks/reliability_table.py``).
"""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import pytest
from serve_runs import shared_run, train_missrec_on_features

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
schemathesis = pytest.importorskip("schemathesis", reason="the server's schema fuzzing needs schemathesis (the test extra)")
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import negative_data_rejection

from textrec.serve.app import MAX_BODY_BYTES, create_app
from textrec.serve.service import MAX_BATCH, MAX_CANDIDATES, MAX_HISTORY, MAX_K, MAX_NEW_ITEMS, MAX_TEXT, Service

EXAMPLES = int(os.environ.get("TEXTREC_SERVE_FUZZ_EXAMPLES", "25"))
EXAMPLES_SLOW = int(os.environ.get("TEXTREC_SERVE_FUZZ_EXAMPLES_SLOW", "300"))


class _Runs(dict):
    """Model name -> a trained run (``serve_runs.shared_run``), trained when a test first asks: the default run
    reads only the VQ-Rec one."""

    def __init__(self, tmp_path_factory) -> None:
        super().__init__()
        self.factory = tmp_path_factory

    def __missing__(self, model: str) -> Path:
        self[model] = shared_run(self.factory, model, epochs=2)
        return self[model]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _Runs(tmp_path_factory)


def _only_path_and_headers(op) -> bool:
    """Whether ``op`` takes nothing but path and header strings: schemathesis then has no schema-violating request
    for it (hypothesis spends a second or two finding that out: the default run skips it, ``-m slow`` tries)."""
    params = op.definition.raw.get("parameters", [])
    return "requestBody" not in op.definition.raw and all(p.get("in") in ("path", "header") for p in params)


def fuzz(app, examples: int, every_mode: bool = True, only: tuple[str, ...] = ()) -> tuple[dict, list[str]]:
    """Run schemathesis's checks on every operation of ``app``'s schema (``only`` these, when given), positive and
    negative cases: ({route: {tried, held}}, one line per distinct failure). ``every_mode`` false: no negative cases
    for an operation that takes only path and header strings (``_only_path_and_headers``)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    counts: dict[str, Counter] = {}
    failures: dict[tuple, str] = {}
    for result in schema.get_all_operations():
        op = result.ok()
        if only and op.label not in only:
            continue
        for mode in schemathesis.GenerationMode:
            if mode == schemathesis.GenerationMode.NEGATIVE and not every_mode and _only_path_and_headers(op):
                counts.setdefault(op.label, Counter())
                continue
            try:
                _given(op, mode, examples, counts.setdefault(op.label, Counter()), failures)()
            except Unsatisfiable:  # a route with no parameters has no schema-violating request
                pass
    report = {label: {"tried": c["tried"], "held": c["held"]} for label, c in counts.items()}
    return report, [f"{' | '.join(key)}\n{text}" for key, text in failures.items()]


def _given(op, mode, examples: int, c: Counter, failures: dict):
    """The hypothesis test of one operation in one generation mode, counting into ``c`` and ``failures``."""

    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=op.as_strategy(mode))
    def run(case):
        c["tried"] += 1
        try:
            # schemathesis's "schema-violating request rejected" check does not count 413 (a body over the bound) as a refusal
            response = case.call_and_validate(excluded_checks=[negative_data_rejection])
            if response.status_code != 413:
                case.validate_response(response, checks=[negative_data_rejection])
        except BaseException as e:  # schemathesis's FailureGroup is a BaseExceptionGroup
            if isinstance(e, KeyboardInterrupt):
                raise
            codes = sorted(set(re.findall(r"- (ST\d+ [^\n]*)", str(e)))) or [f"{type(e).__name__}: {str(e)[:200]}"]
            failures.setdefault((op.label, mode.value, *codes), str(e)[:2000])
        else:
            c["held"] += 1

    return run


def _report(name: str, report: dict) -> None:
    path = os.environ.get("TEXTREC_SERVE_FUZZ_REPORT")
    if not path:
        return
    saved = json.loads(Path(path).read_text()) if os.path.exists(path) else {}
    for route, c in report.items():
        into = saved.setdefault(route, {"tried": 0, "held": 0})
        into["tried"] += c["tried"]
        into["held"] += c["held"]
    Path(path).write_text(json.dumps(saved, indent=2))


def _check(name: str, app, examples: int, every_mode: bool = True, only: tuple[str, ...] = ()) -> dict:
    report, failures = fuzz(app, examples, every_mode, only)
    _report(name, report)
    assert not failures, f"{len(failures)} distinct schemathesis failure(s):\n\n" + "\n\n".join(failures)
    return report


def test_the_server_keeps_to_its_schema(runs, tmp_path):
    report = _check("vqrec", create_app(Service(runs["vqrec"], journal=tmp_path / "journal.jsonl")), EXAMPLES, every_mode=False)
    for route in ("POST /recommend", "POST /recommend/batch", "POST /items", "GET /items", "DELETE /items/{key}"):
        assert report[route]["tried"] >= EXAMPLES, (route, report[route])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["vqrec", "sasrec", "vqrec-read-only-key"])
def test_the_server_keeps_to_its_schema_at_full_size(runs, tmp_path, variant):
    model = variant.split("-")[0]
    service = Service(runs[model], journal=tmp_path / "journal.jsonl", read_only=variant.endswith("key"))
    _check(variant, create_app(service, api_key="secret-key" if variant.endswith("key") else None), EXAMPLES_SLOW)


def test_the_schema_documents_every_error_as_the_error_body(runs, tmp_path):
    spec = create_app(Service(runs["vqrec"], journal=tmp_path / "journal.jsonl")).openapi()
    post = spec["paths"]["/items"]["post"]["responses"]
    assert {"200", "400", "401", "403", "409", "411", "413", "422"} <= set(post)
    assert post["422"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/Error"}
    body = spec["components"]["schemas"]["RecommendRequest"]
    assert body["oneOf"] == [{"required": ["items"]}, {"required": ["user"]}]
    assert "null" not in json.dumps(body["properties"]["items"])  # a null is refused, so the schema offers none


def test_every_request_size_is_bounded(runs, tmp_path):
    """Each bound of the API, one over it: a 4xx naming the field, before any work is done."""
    c = TestClient(create_app(Service(runs["vqrec"], journal=tmp_path / "journal.jsonl")))
    known = "garden-00001"
    recommend = [
        ({"items": [known] * (MAX_HISTORY + 1)}, "items"),
        ({"items": [known], "k": MAX_K + 1}, "k"),
        ({"items": ["x" * 201]}, "items[0]"),
        ({"items": [known], "filter": {"items": [known] * (MAX_CANDIDATES + 1)}}, "filter.items"),
        ({"items": [known], "k": 2.5}, "k"),
        ({"items": None, "user": "u"}, "items"),
    ]
    for body, field in recommend:
        r = c.post("/recommend", json=body)
        assert r.status_code == 422 and r.json()["field"] == field, (field, r.text[:300])
    r = c.post("/recommend/batch", json={"requests": [{"items": [known]}] * (MAX_BATCH + 1)})
    assert r.status_code == 422 and r.json()["field"] == "requests"
    adds = [
        ({"items": [{"key": f"n{i}", "text": "t"} for i in range(MAX_NEW_ITEMS + 1)]}, "items"),
        ({"items": [{"key": "n", "text": "t" * (MAX_TEXT + 1)}]}, "items[0].text"),
        ({"items": [{"key": "n", "attributes": {f"a{i}": "v" for i in range(51)}}]}, "items[0].attributes"),
        ({"items": [{"key": "n", "text": None}]}, "items[0].text"),
    ]
    for body, field in adds:
        r = c.post("/items", json=body)
        assert r.status_code == 422 and r.json()["field"] == field, (field, r.text[:300])
    assert c.get("/items", params={"q": "x" * 201}).status_code == 422
    assert c.get("/items", params={"limit": 101}).status_code == 422
    r = c.post("/items", content=b"{" + b" " * MAX_BODY_BYTES + b"}", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["field"] == "body"

    def chunks():
        yield b'{"items": ["garden-00001"]}'

    r = c.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 411
    assert c.post("/recommend", json={"items": [known], "k": 3.0}).status_code == 200  # JSON Schema's integer 3.0


def test_framework_errors_use_the_error_body(runs, tmp_path):
    c = TestClient(create_app(Service(runs["vqrec"], journal=tmp_path / "journal.jsonl")))
    r = c.post("/recommend", content=b"\xff\xfe{", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()) <= {"error", "field"} and r.json()["error"]
    r = c.get("/no-such-route")
    assert r.status_code == 404 and set(r.json()) == {"error"}
    r = c.put("/recommend", json={})
    assert r.status_code == 405 and set(r.json()) == {"error"}


def test_a_key_given_twice_is_added_once_as_its_last_version(runs, tmp_path):
    c = TestClient(create_app(Service(runs["vqrec"], journal=tmp_path / "journal.jsonl")))
    r = c.post("/items", json={"items": [{"key": "twice", "text": "first version"}, {"key": "twice", "text": "second version"}]})
    assert r.status_code == 200 and [it["text"] for it in r.json()["added"]] == ["second version"]
    assert c.get("/items/twice").json()["text"] == "second version"


def test_a_feature_table_model_keeps_to_its_schema(tmp_path):
    """MISSRec takes new items by their feature vectors: the schema names its table and width, and holds to them."""
    run, _, _ = train_missrec_on_features(tmp_path)
    report = _check("missrec", create_app(Service(run, journal=tmp_path / "journal.jsonl")), EXAMPLES, only=("POST /items",))
    assert report["POST /items"]["tried"] >= EXAMPLES
