"""The web UI (GET /, GET /web/stats) in a real browser: Debian's chromium driven by Playwright,
against the real server on the default model. Reuses the session's `server` (playground and
dashboard) and `guarded` (--api-key) fixtures; only --disable-web-ui starts a server of its own."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.helpers import start_server
from tests.server.reliability_helpers import AUTH, KEY, server_info, wait_kv_clean
from tests.server.web_browser import PageWatch, chat, chromium_missing, expect, launch, sse_payloads


XSS = "<img src=x onerror=alert(1)>"
LONG_PROMPT = "Write a very long story about a dragon."  # SmolLM2 greedy: 2000 tokens without an EOS


@pytest.fixture(scope="module")
def browser():
    """Every test that drives a page skips here, saying why, without chromium or Playwright."""
    reason = chromium_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.watch = PageWatch(pg)
    yield pg
    context.close()


def open_page(page, server, view: str = "playground"):
    resp = page.goto(f"{server.base_url}/#{view}")
    if view == "playground":
        page.wait_for_selector("#model:not(:empty)")
    return resp


def wait_state(page, state: str, timeout_ms: int = 120_000) -> None:
    page.wait_for_selector(f"#status[data-state={state}]", timeout=timeout_ms)


def poll(page, pred, timeout_s: float = 60.0) -> None:
    """Wait for a condition read through Playwright (the page's CSP forbids wait_for_function's eval)."""
    deadline = time.time() + timeout_s
    while not pred():
        assert time.time() < deadline, "condition not met in time"
        page.wait_for_timeout(100)


# ---- the playground -------------------------------------------------------------------------


def test_page_loads_without_console_errors(server, page):
    resp = open_page(page, server)
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/html")
    assert "script-src 'sha256-" in resp.headers["content-security-policy"]
    assert page.text_content("#model") == server_info(server.base_url)["served_model_name"]
    page.click("#tab-dashboard")
    page.wait_for_selector("#flags tbody tr:nth-child(11)")
    page.click("#tab-playground")
    page.reload()
    page.wait_for_selector("#model:not(:empty)")
    w = page.watch
    assert w.console_errors == [] and w.page_errors == [] and w.dialogs == []
    # Offline: every request the page made went to this server (no CDN, no fonts, no favicon fetch)
    assert w.requests and all(u.startswith(server.base_url) for u in w.requests), w.requests


def test_chat_streams_paris_and_readout_matches_usage(server, page):
    open_page(page, server)
    # Count the renders of the answer: a streamed answer is drawn more than once
    page.evaluate("""() => { window.renders = 0; new MutationObserver(() => window.renders++)
        .observe(document.getElementById('messages'), {subtree: true, childList: true, characterData: true}); }""")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as info:
        chat(page, "What is the capital of France?", temperature=0)
    wait_state(page, "done")
    payloads = sse_payloads(info.value.text())
    usage = [p["usage"] for p in payloads if p.get("usage")][-1]
    text = "".join(c["delta"].get("content") or "" for p in payloads for c in p["choices"])
    answer = page.text_content(".msg.assistant .content")
    assert "Paris" in answer and answer == text
    assert sum(1 for p in payloads for c in p["choices"] if c["delta"].get("content")) > 1
    assert page.evaluate("window.renders") > 2
    assert page.text_content("#completion-tokens") == str(usage["completion_tokens"])
    assert page.text_content("#prompt-tokens") == str(usage["prompt_tokens"])
    assert page.text_content("#total-tokens") == str(usage["total_tokens"])
    assert page.text_content("#ttft").endswith(" ms") and float(page.text_content("#tps")) > 0
    sent = json.loads(info.value.request.post_data)
    assert sent["temperature"] == 0 and sent["stream"] and sent["stream_options"] == {"include_usage": True}
    assert page.watch.console_errors == [] and page.watch.page_errors == []


def test_settings_reach_the_request(server, page):
    open_page(page, server)
    page.fill("#system", "You are terse.")
    page.fill("#stop", "Paris\n\\n")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as info:
        chat(page, "What is the capital of France?", temperature=0, **{"top-p": 0.5, "max-tokens": 40})
    wait_state(page, "done")
    sent = json.loads(info.value.post_data)
    assert sent["messages"] == [{"role": "system", "content": "You are terse."},
                                {"role": "user", "content": "What is the capital of France?"}]
    assert (sent["top_p"], sent["max_tokens"], sent["stop"]) == (0.5, 40, ["Paris", "\n"])
    without_stop = {k: v for k, v in sent.items() if k not in ("stop", "stream", "stream_options")}
    full = requests.post(server.base_url + "/v1/chat/completions", json=without_stop, timeout=120).json()
    shown = page.text_content(".msg.assistant .content")
    assert "Paris" in full["choices"][0]["message"]["content"]
    assert "Paris" not in shown and full["choices"][0]["message"]["content"].startswith(shown)  # the stop cut it
    # A bad setting is refused in the page, before any request; one the server refuses shows its 400
    page.fill("#max-tokens", "1.5")
    page.fill("#prompt", "Hi")
    page.click("#send")
    wait_state(page, "error")
    assert "max_tokens" in page.text_content("#status") and page.locator(".msg").count() == 2
    page.fill("#max-tokens", "0")
    page.click("#send")
    wait_state(page, "error")
    assert page.text_content("#status").startswith("HTTP 400: ") and "max_tokens" in page.text_content("#status")
    assert "HTTP 400" in page.text_content(".msg.assistant .error")


def test_model_output_is_text_never_html(server, page):
    """JSON-schema mode forces the model to write the markup; the page shows it literally."""
    open_page(page, server)
    page.check("#json-mode")
    schema = {"type": "object", "properties": {"html": {"enum": [XSS]}}, "required": ["html"]}
    page.fill("#json-schema", json.dumps(schema))
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as info:
        chat(page, "Answer with a JSON object.", temperature=0, **{"max-tokens": 60})
    wait_state(page, "done")
    assert json.loads(info.value.post_data)["response_format"]["json_schema"]["schema"] == schema
    shown = page.text_content(".msg.assistant .content")
    assert json.loads(shown) == {"html": XSS}
    assert page.locator("#messages img").count() == 0 and page.locator("img").count() == 0
    page.wait_for_timeout(500)  # an onerror would have fired by now
    assert page.watch.dialogs == [] and page.watch.page_errors == []


def test_stop_button_aborts_and_server_running_count_returns_to_0(server, page):
    open_page(page, server)
    chat(page, LONG_PROMPT, temperature=0, **{"max-tokens": 2000})
    poll(page, lambda: len(page.text_content(".msg.assistant .content")) > 20)
    assert server_info(server.base_url)["num_running_reqs"] == 1
    page.click("#abort")
    wait_state(page, "stopped", 10_000)
    stopped_at = page.text_content(".msg.assistant .content")
    info = wait_kv_clean(server.base_url, timeout=20)  # running 0, KV freed: the server saw the disconnect
    assert info["num_running_reqs"] == 0
    page.wait_for_timeout(1000)
    assert page.text_content(".msg.assistant .content") == stopped_at
    assert page.is_enabled("#send") and not page.is_enabled("#abort")


# ---- the dashboard --------------------------------------------------------------------------


def test_dashboard_moves_while_8_requests_run_and_falls_back(server, page):
    """8 long requests run until the dashboard has shown them (however slow the machine), then
    are aborted by rid; the numbers fall back to 0."""
    wait_kv_clean(server.base_url)
    open_page(page, server, "dashboard")
    expect(page.locator("#running")).to_have_text("0")
    numbers = " ".join(str(i) for i in range(1, 40))  # ~100 prompt tokens: KV use and prefill show
    sampling = {"max_new_tokens": 2000, "ignore_eos": True, "temperature": 0}
    statuses = []

    def run(i: int) -> None:
        body = {"text": f"Continue the list: {numbers}", "rid": f"web-dash-{i}", "sampling_params": sampling}
        statuses.append(requests.post(server.base_url + "/generate", json=body, timeout=300).status_code)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    try:
        expect(page.locator("#running")).to_have_text("8", timeout=120_000)
        used = page.text_content("#kv-use").split("(")[1].split(" / ")[0]  # "p % (used / total tokens)"
        assert int(used.replace(",", "")) > 70  # the same poll's numbers: the (shared) prompt is in the pool
        poll(page, lambda: float(page.text_content("#decode-tps")) > 0)
        assert int(page.text_content("#inflight")) == 8
    finally:
        for i in range(8):
            requests.post(server.base_url + "/abort_request", json={"rid": f"web-dash-{i}"}, timeout=30)
        for t in threads:
            t.join(60)
    assert len(statuses) == 8
    for element_id in ("running", "queued", "inflight", "decode-tps", "prefill-tps"):
        expect(page.locator(f"#{element_id}")).to_have_text("0", timeout=15_000)
    rows = page.evaluate("dashboard.rows")  # the charts' data: running and decode rose, then fell
    assert max(r[1] for r in rows) == 8 and max(r[5] for r in rows) > 0 and max(r[4] for r in rows) > 0
    assert rows[-1][1] == 0 and rows[-1][5] == 0
    assert float(page.text_content("#hit-rate").split(" %")[0]) > 0  # 7 of 8 prompts hit the cache
    assert int(page.text_content("#cache-size").split(" ")[0].replace(",", "")) > 0
    assert page.watch.console_errors == [] and page.watch.page_errors == []


# ---- security -------------------------------------------------------------------------------


def test_api_key_page_asks_for_the_key_then_works(guarded, page):
    resp = page.goto(guarded.base_url + "/")
    assert resp.status == 401 and KEY not in page.content()
    page.wait_for_selector("#key-panel:not([hidden])")
    page.fill("#key-input", "sk-wrong")
    page.click("#key-submit")
    expect(page.locator("#key-error")).to_contain_text("refused")
    page.fill("#key-input", KEY)
    page.click("#key-submit")
    page.wait_for_selector("#model:not(:empty)")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as info:
        chat(page, "What is the capital of France?", temperature=0, **{"max-tokens": 12})
    wait_state(page, "done")
    assert info.value.headers["authorization"] == f"Bearer {KEY}"
    assert page.text_content(".msg.assistant .content")
    page.click("#tab-dashboard")
    page.wait_for_selector("#flags tbody tr:nth-child(11)")
    assert "<redacted>" in page.text_content("#flags") and KEY not in page.content()
    assert page.watch.page_errors == []


def test_every_route_answers_401_without_the_key(guarded):
    spec = requests.get(guarded.base_url + "/openapi.json", headers=AUTH).json()
    routes = [(m.upper(), p.replace("{model}", "x")) for p, ops in spec["paths"].items() for m in ops]
    assert ("GET", "/") in routes and ("GET", "/web/stats") in routes
    for method, path in routes + [("GET", "/web/stats?since=0")]:
        if path == "/health":
            continue
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Accept": "text/html"}):
            r = requests.request(method, guarded.base_url + path, headers=headers, timeout=30)
            assert r.status_code == 401, (method, path, headers, r.status_code)
            assert KEY not in r.text
    # A browser's navigation gets the page (which asks for the key) in its 401; an API client JSON
    r = requests.get(guarded.base_url + "/", headers={"Accept": "text/html"})
    assert r.headers["content-type"].startswith("text/html") and 'id="key-form"' in r.text
    assert requests.get(guarded.base_url + "/").json()["code"] == 401
    stats = requests.get(guarded.base_url + "/web/stats", headers=AUTH)
    assert stats.status_code == 200 and KEY not in stats.text and stats.json()["flags"]["api_key"] == "<redacted>"


def test_disable_web_ui_answers_404(tmp_path_factory, page):
    s = start_server(tmp_path_factory, ["--disable-web-ui"], name="no-web-ui")
    try:
        assert page.goto(s.base_url + "/").status == 404
        assert page.goto(s.base_url + "/web/stats").status == 404
        assert requests.get(s.base_url + "/v1/models").status_code == 200
        paths = requests.get(s.base_url + "/openapi.json").json()["paths"]
        assert "/" not in paths and "/web/stats" not in paths
    finally:
        s.stop()
