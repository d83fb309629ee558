"""``textrec serve``: the HTTP API and the web page over a ``Service`` (FastAPI + uvicorn, the ``serve`` extra).

Routes (the OpenAPI schema at ``/openapi.json``, browsable at ``/docs``):

* ``POST /recommend`` ``{items: [keys] | user: key, k, exclude_history, filter: {items: [keys]}?}`` -> ranked items
  with scores and texts, and the history keys the catalogue does not know (``unknown``); a filter ranks only
  the given items (scored exactly); ``POST /recommend/batch`` ``{requests: [...]}``;
* ``GET /items/{key}``; ``GET /items?q=&limit=`` (the page's search);
* ``POST /items`` ``{items: [{key, text?, attributes?, features?}, ...]}`` adds or updates items; ``DELETE /items/{key}``;
  both refused with ``--read-only``, and guarded by ``X-API-Key`` when an API key file is given;
* ``GET /healthz``, ``GET /metrics`` (Prometheus text), ``GET /stats``; the page at ``/``.

``/docs`` (Swagger UI) loads its script and style from this server, never from a CDN, so it works offline: the
files come from the ``fastapi-offline`` package (in the ``serve`` extra); without it, ``/docs`` is a plain page
listing the routes. There is no ``/redoc``: ReDoc draws its logo from its maker's CDN.

Every error is JSON ``{"error": "...", "field": "..."}`` with a 4xx status (a 500 says only "internal error" and
is logged), never a stack trace. Request bodies are bounded (``MAX_BODY_BYTES``), as are histories, k, batches
and texts (``textrec.serve.service``).
"""

import hmac
import json
import logging
import time
from pathlib import Path
from typing import Annotated

from textrec.errors import DataError, NotFoundError, TextrecError
from textrec.serve.service import CannotAddError, FieldError, ReadOnlyError, Service

log = logging.getLogger("textrec.serve.app")

MAX_BODY_BYTES = 1_000_000
STATIC = Path(__file__).parent / "static"


def _fastapi():
    try:
        import fastapi  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise TextrecError(f"textrec serve needs the serve extra ({e.name} is missing): pip install 'textrec[serve]'") from None


def _field(loc) -> str:
    """'items[3]' from pydantic's ('body', 'items', 3)."""
    parts = [p for p in loc if p not in ("body", "query", "path")]
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


class Metrics:
    """The Prometheus metrics of one app (its own registry, so several apps in one process do not clash)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("textrec_requests", "HTTP requests by route and status", ["route", "status"], registry=r)
        self.latency = Histogram("textrec_request_seconds", "request latency by route", ["route"], registry=r,
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5))
        self.items = Gauge("textrec_catalogue_items", "items served", registry=r)
        self.added = Gauge("textrec_catalogue_added_items", "items added while serving (journal)", registry=r)
        self.recall = Gauge("textrec_index_recall_at_10", "the item index's recall@10 against exact search (1 for exact)",
                            ["kind"], registry=r)

    def text(self, service: Service) -> bytes:
        from prometheus_client import generate_latest

        self.items.set(len(service.live))
        self.added.set(len(service.added))
        if service.index is not None:
            recall = service.index.recall_at_10
            self.recall.labels(service.index.kind).set(1.0 if recall is None else recall)
        return generate_latest(self.registry)


async def _send_error(send, status: int, message: str, field: str | None = None) -> None:
    body = json.dumps({"error": message, **({"field": field} if field else {})}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


class BoundedAndMeasured:
    """Pure ASGI middleware: refuses oversized bodies before they are read; counts and times every request, and
    says how long the server took in a ``Server-Timing: app;dur=<ms>`` header."""

    def __init__(self, inner, metrics: Metrics) -> None:
        self.inner, self.metrics = inner, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.inner(scope, receive, send)
        started, status = time.perf_counter(), [500]
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")

        async def sending(message):
            if message["type"] == "http.response.start":  # the answer is ready: its time so far goes in Server-Timing
                status[0] = message["status"]
                took = f"app;dur={(time.perf_counter() - started) * 1000:.3f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", took)]}
            await send(message)

        try:
            if scope["method"] in ("POST", "PUT", "PATCH") and length is None and b"transfer-encoding" in headers:
                await _send_error(sending, 411, "send a Content-Length header (chunked bodies are not accepted)")
            elif length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
                await _send_error(sending, 413, f"request body over {MAX_BODY_BYTES} bytes", "body")
            else:
                await self.inner(scope, receive, sending)
        finally:
            route = scope.get("route")
            name = route.path if route is not None else "other"
            self.metrics.requests.labels(name, str(status[0])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - started)


ERRORS = {400: "the body is not valid JSON", 401: "a write without the right X-API-Key",
          403: "a write to a server started --read-only", 404: "an unknown item or user",
          409: "the served model cannot score new items", 411: "a body without Content-Length",
          413: f"a body over {MAX_BODY_BYTES:,} bytes", 422: "a request that breaks the schema; names the field"}


def _errors(*codes: int) -> dict:
    """The ``responses=`` of a route: these error statuses, each an ``Error`` body."""
    from textrec.serve.schema import Error

    return {code: {"model": Error, "description": ERRORS[code]} for code in codes}


BODY, WRITE = (400, 411, 413, 422), (401, 403, 409)


class Unauthorized(Exception):
    """A write without the right API key."""


def _error(status: int, message: str, field: str | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message, **({"field": field} if field else {})}, status_code=status)


def _error_handlers(app) -> None:
    """Every error as ``{"error", "field"?}`` JSON with its status; a 500 says nothing but that it is logged."""
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(Exception)
    async def internal(request, exc: Exception):  # never a stack trace to the client
        log.error("internal error on %s %s", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal error (logged on the server)")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException):  # the framework's own: an unknown route, a body it cannot parse
        return _error(exc.status_code, str(exc.detail), "body" if exc.status_code == 400 else None)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, exc: RequestValidationError):
        first = exc.errors()[0]
        field = _field(first.get("loc", ()))
        msg = first.get("msg", "invalid")
        if first.get("type") == "json_invalid":
            return _error(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', msg)})", "body")
        return _error(422, f"{field}: {msg}", field)

    @app.exception_handler(TextrecError)
    async def textrec_error(request, exc: TextrecError):
        status = 404 if isinstance(exc, NotFoundError) else 403 if isinstance(exc, ReadOnlyError) else \
            409 if isinstance(exc, CannotAddError) else 422
        return _error(status, str(exc), exc.field if isinstance(exc, FieldError) else None)

    @app.exception_handler(Unauthorized)
    async def unauthorized(request, exc: Unauthorized):
        return _error(401, "this write needs the API key in the X-API-Key header", "X-API-Key")


def _page_routes(app, service: Service, metrics: Metrics) -> None:
    """The page, its files, health, stats and metrics."""
    from fastapi.responses import FileResponse, Response
    from fastapi.staticfiles import StaticFiles
    from prometheus_client import CONTENT_TYPE_LATEST

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    from textrec.serve.schema import Health

    @app.get("/healthz", responses={200: {"model": Health}})
    def healthz():
        return {"status": "ok", "items": len(service.live)}

    @app.get("/stats")
    def stats():
        return service.stats_dict()

    @app.get("/metrics", include_in_schema=False)
    def metrics_text():
        return Response(metrics.text(service), media_type=CONTENT_TYPE_LATEST)


def _docs_routes(app) -> None:
    """``/docs`` (Swagger UI) with its files served from here (module doc)."""
    from fastapi import Request
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse
    from fastapi.staticfiles import StaticFiles

    try:
        from importlib.resources import files

        assets = Path(str(files("fastapi_offline") / "static"))
    except ModuleNotFoundError:
        assets = None
    if assets is None or not (assets / "swagger-ui-bundle.js").exists():
        @app.get("/docs", include_in_schema=False)
        def routes_page(request: Request):
            return HTMLResponse(_routes_html(app, request.scope.get("root_path", "")))
        return
    app.mount("/docs-static", StaticFiles(directory=assets), name="docs-static")

    @app.get("/docs", include_in_schema=False)
    def swagger(request: Request):
        at = request.scope.get("root_path", "") + "/docs-static"
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + app.openapi_url, title=f"{app.title} API",
                                   swagger_js_url=f"{at}/swagger-ui-bundle.js", swagger_css_url=f"{at}/swagger-ui.css",
                                   swagger_favicon_url=f"{at}/favicon.png",
                                   swagger_ui_parameters={"validatorUrl": None})  # no badge fetched from swagger.io


def _routes_html(app, root: str) -> str:
    """A plain page of the routes and a link to the schema: ``/docs`` without ``fastapi-offline``."""
    from html import escape

    rows = "".join(f"<li><code>{escape(method.upper())} {escape(path)}</code> {escape(op.get('summary', ''))}</li>"
                   for path, ops in app.openapi()["paths"].items() for method, op in ops.items())
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{escape(app.title)} API</title></head><body>"
            f"<h1>{escape(app.title)} API</h1><p>The OpenAPI schema: <a href='{escape(root)}/openapi.json'>/openapi.json</a>. "
            "For the interactive Swagger UI here, install <code>fastapi-offline</code> (in <code>textrec[serve]</code>).</p>"
            f"<ul>{rows}</ul></body></html>")


def _api_routes(app, service: Service, api_key: str | None) -> None:
    """Recommendations and the catalogue; writes behind the API key when there is one."""
    from fastapi import Depends, Header, Query
    from fastapi.responses import JSONResponse

    from textrec.serve.schema import (AddedOut, BatchOut, BatchRequest, DeletedOut, ItemOut, ItemsIn, ItemsOut, RecommendOut,
                                      RecommendRequest)

    def ok(model) -> dict:
        return {200: {"model": model}}

    def writer(x_api_key: Annotated[str | None, Header()] = None):
        if api_key is not None and (x_api_key is None or not hmac.compare_digest(x_api_key.encode(), api_key.encode())):
            raise Unauthorized()

    # recommendations are a few milliseconds of CPU: answered on the event loop, without a thread hop, as plain
    # JSON (FastAPI's generic encoder would cost more than the search)
    @app.post("/recommend", responses={**ok(RecommendOut), **_errors(*BODY, 404)})
    async def recommend(req: RecommendRequest):
        return JSONResponse(service.recommend(req.items, req.user, req.k, req.exclude_history, req.only()))

    @app.post("/recommend/batch", responses={**ok(BatchOut), **_errors(*BODY)})
    async def recommend_batch(req: BatchRequest):
        out = []
        for r in req.requests:
            try:
                out.append(service.recommend(r.items, r.user, r.k, r.exclude_history, r.only()))
            except NotFoundError as e:
                out.append({"error": str(e)})
        return JSONResponse({"results": out})

    @app.get("/items", responses={**ok(ItemsOut), **_errors(422)})
    def search(q: Annotated[str, Query(max_length=200)] = "", limit: Annotated[int, Query(ge=1, le=100)] = 20):
        return {"items": service.search_items(q, limit)}

    @app.get("/items/{key}", responses={**ok(ItemOut), **_errors(404, 422)})
    def item(key: str):
        return service.item(key)

    @app.post("/items", dependencies=[Depends(writer)], responses={**ok(AddedOut), **_errors(*BODY, *WRITE)})
    def add_items(req: ItemsIn):
        return service.add_items([it.model_dump(exclude_none=True) for it in req.items])

    @app.delete("/items/{key}", dependencies=[Depends(writer)], responses={**ok(DeletedOut), **_errors(404, 422, *WRITE)})
    def delete_item(key: str):
        return service.delete_item(key)


def _features_in_schema(app, service: Service) -> None:
    """The schema's ``features`` of a new item says what this run takes: its feature tables, each at its width, and
    no other; none at all for a model without feature tables (then ``features`` is an unknown field)."""
    from textrec.serve.catalogue import feature_dims

    dims, build = feature_dims(service.run), app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            item = build()["components"]["schemas"]["ItemIn"]  # build() caches the schema it returns
            generic = item["properties"].pop("features")
            if dims:
                vector = generic["additionalProperties"]
                item["properties"]["features"] = {**generic, "additionalProperties": False,
                                                  "properties": {n: {**vector, "minItems": d, "maxItems": d} for n, d in dims.items()}}
            else:
                item["anyOf"] = [rule for rule in item["anyOf"] if rule["required"] != ["features"]]
        return app.openapi_schema

    app.openapi = openapi


def create_app(service: Service, api_key: str | None = None):
    """The FastAPI application over ``service``; writes need ``api_key`` in ``X-API-Key`` when it is given."""
    _fastapi()
    from fastapi import FastAPI

    app = FastAPI(title="textrec", description=f"recommendations from the run {service.run_dir.name} ({service.run.cfg.model})",
                  version="1", docs_url=None, redoc_url=None)  # /docs: _docs_routes, without a CDN
    app.state.service = service
    metrics = Metrics()
    app.add_middleware(BoundedAndMeasured, metrics=metrics)
    _error_handlers(app)
    _page_routes(app, service, metrics)
    _docs_routes(app)
    _api_routes(app, service, api_key)
    _features_in_schema(app, service)
    return app


def read_api_key(path: str | Path | None) -> str | None:
    if path is None:
        return None
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: API key file not found")
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < 8:
        raise DataError(f"{path}: the API key must be at least 8 characters")
    return key


def app_from_env():
    """A read-only app from ``TEXTREC_SERVE_*`` environment variables (one per uvicorn worker)."""
    import os

    service = Service(os.environ["TEXTREC_SERVE_RUN"], index_kind=os.environ.get("TEXTREC_SERVE_INDEX", "auto"), read_only=True,
                      journal=os.environ.get("TEXTREC_SERVE_JOURNAL") or None, device=os.environ.get("TEXTREC_SERVE_DEVICE", "cpu"),
                      data=os.environ.get("TEXTREC_SERVE_DATA") or None)
    return create_app(service)
