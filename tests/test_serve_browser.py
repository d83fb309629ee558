"""The web page in a real headless browser: search -> session -> recommendations -> add a new item -> it is recommended.

Needs Debian's ``chromium`` and the ``playwright`` package (``.ci/run`` installs both); skipped with the reason
otherwise. ``TEXTREC_SERVE_SCREENSHOT=docs/figures/serve.png`` also saves the page as it ends, for the docs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
from serve_runs import make_world, train

CHROMIUM = Path("/usr/bin/chromium")
NEW_TEXT = "Zorblat orange bamboo birdhouse, vintage style. Garden Outdoor Living. Zorblat."


def _browser_or_skip():
    if not CHROMIUM.exists() and not shutil.which("chromium"):
        pytest.skip("no browser: /usr/bin/chromium is not installed (apt-get install -y chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright package is not installed (pip install playwright)")
    return sync_playwright


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def _serving(app):
    """``app`` under uvicorn on a free loopback port, in a thread, for the block; yields the base URL."""
    import uvicorn

    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        assert srv.started, "the server did not start"
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    sync_playwright = _browser_or_skip()
    from textrec.serve.app import create_app
    from textrec.serve.service import Service

    root = tmp_path_factory.mktemp("browser")
    run = train(make_world(root), root / "unisrec", "unisrec", epochs=12)
    with _serving(create_app(Service(run, journal=root / "journal.jsonl"))) as url:
        yield url, sync_playwright


def test_page_search_session_recommendations_and_a_new_item(server, tmp_path):
    url, sync_playwright = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
                                    args=["--no-sandbox", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url)
        page.wait_for_selector("#about:has-text('unisrec')")
        # search: a vintage red item (the world's rule: after red comes orange, and the style stays)
        page.fill("#search", "vintage red")
        page.wait_for_function("document.querySelectorAll('#results li').length > 0 && "
                               "[...document.querySelectorAll('#results li')].every(li => /red/i.test(li.textContent))")
        first = page.locator("#results li").first
        clicked = first.get_attribute("data-key")
        first.click()
        page.wait_for_selector(f"#session li[data-key='{clicked}']")
        page.wait_for_function("document.querySelectorAll('#recs li').length === 20")
        recs = page.locator("#recs li").evaluate_all("els => els.map(e => e.dataset.key)")
        assert clicked not in recs and "NEW-1" not in recs
        # add a brand-new item by its text: it appears in this session's recommendations
        page.fill("#new-key", "NEW-1")
        page.fill("#new-text", NEW_TEXT)
        page.click("#add")
        page.wait_for_selector("#add-status:has-text('added NEW-1')")
        page.wait_for_selector("#recs li[data-key='NEW-1']", timeout=10_000)
        assert "ranks" in page.text_content("#add-status")
        assert page.locator("#recs li[data-key='NEW-1'] .badge").count() == 1
        page.screenshot(path=str(tmp_path / "serve.png"), full_page=True)
        shot = os.environ.get("TEXTREC_SERVE_SCREENSHOT")
        if shot:
            shutil.copy(tmp_path / "serve.png", shot)
        # an empty text is refused with the reason, shown on the page
        page.fill("#new-key", "NEW-2")
        page.fill("#new-text", " ")
        page.evaluate("document.getElementById('new-text').removeAttribute('required')")
        page.click("#add")
        page.wait_for_selector("#add-status.error")
        assert "text" in page.text_content("#add-status")
        assert not errors, errors
        browser.close()


def test_api_docs_render_with_no_internet(server):
    """Swagger UI at /docs draws every route from files this server sends; any other host is refused and noted."""
    url, sync_playwright = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
                                    args=["--no-sandbox", "--disable-background-networking"])
        page = browser.new_page()
        outside, errors = [], []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(url) else
                   (outside.append(route.request.url), route.abort()))
        page.goto(url + "/docs")
        page.wait_for_selector(".opblock-summary-path[data-path='/recommend']", timeout=20_000)
        assert page.locator(".opblock").count() >= 7 and not outside and not errors, (outside, errors)
        browser.close()


def test_page_asks_for_the_api_key_once_for_writes(tmp_path):
    sync_playwright = _browser_or_skip()
    from textrec.serve.app import create_app
    from textrec.serve.service import Service

    run = train(make_world(tmp_path), tmp_path / "unisrec", "unisrec", epochs=1)
    with _serving(create_app(Service(run, journal=tmp_path / "journal.jsonl"), api_key="page-key-123")) as url:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium")),
                                        args=["--no-sandbox", "--disable-background-networking"])
            page = browser.new_page()
            asked = []
            page.on("dialog", lambda d: (asked.append(d.message), d.accept("page-key-123")))
            page.goto(url)
            page.fill("#new-key", "NEW-1")
            page.fill("#new-text", NEW_TEXT)
            page.click("#add")
            page.wait_for_selector("#add-status:has-text('added NEW-1')")
            page.fill("#new-key", "NEW-2")
            page.fill("#new-text", NEW_TEXT)
            page.click("#add")
            page.wait_for_selector("#add-status:has-text('added NEW-2')")
            assert len(asked) == 1 and "API key" in asked[0]
            browser.close()
