"""The web UI without a browser or a model: the page's size, how it is assembled (inlined code,
its Content-Security-Policy, nothing fetched from elsewhere), the stats sampler's arithmetic,
the routes through the real app on the fake scheduler (tests/unit/fake_scheduler.py), and the
package data that ships the page in a wheel."""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sglserve.entrypoints.http_server import create_app
from sglserve.io_struct import GetLoadReqOutput
from sglserve.server_args import ServerArgs
from sglserve.web.page import STATIC_DIR, WebPage
from sglserve.web.stats import StatsSampler
from tests.unit.test_protocol import Stack

REPO = Path(__file__).resolve().parents[2]
PAGE_BUDGET = 60 * 1024  # the page's own JS + CSS (a vendored chart library would not count)


def test_page_js_and_css_stay_under_60_kb():
    files = sorted(STATIC_DIR.glob("*.js")) + sorted(STATIC_DIR.glob("*.css"))
    assert len(files) >= 3
    total = sum(f.stat().st_size for f in files)
    assert total < PAGE_BUDGET, f"{total} bytes of JS+CSS: over the {PAGE_BUDGET} budget"


def test_page_is_one_document_its_csp_allows_exactly_its_code():
    page = WebPage.build(auth_required=False)
    html = page.html.decode()
    assert "<script src" not in html and "<link rel=\"stylesheet\"" not in html
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    index = (STATIC_DIR / "index.html").read_text()
    assert len(scripts) == index.count("<script src=") >= 4 and len(styles) == 1
    csp = dict(part.split(" ", 1) for part in page.headers["content-security-policy"].split("; "))
    digest = lambda s: "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"  # noqa: E731
    assert csp["script-src"].split() == [digest(s) for s in scripts]
    assert csp["style-src"].split() == [digest(s) for s in styles]
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    # Offline: nothing fetched from elsewhere (no CDN, no web fonts); output written as text only
    assert not re.search(r"(https?:)?//[\w.-]+\.\w", html.replace("http://www.w3.org", ""))
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html and "document.write" not in html
    assert '<meta name="sglserve-auth" content="none">' in html


def test_page_with_api_key_asks_for_it_and_holds_no_secret():
    html = WebPage.build(auth_required=True).html.decode()
    assert '<meta name="sglserve-auth" content="bearer">' in html


def test_page_refuses_code_that_cannot_be_inlined(tmp_path):
    (tmp_path / "index.html").write_text('<meta name="sglserve-auth" content="none"><script src="a.js"></script>')
    (tmp_path / "a.js").write_text('const s = "</script><b>";')
    with pytest.raises(ValueError, match="cannot be inlined"):
        WebPage.build(False, tmp_path)


def load(generated: int, prefill: int, running: int = 1, used: int = 100) -> GetLoadReqOutput:
    return GetLoadReqOutput(max_total_num_tokens=1000, available_tokens=900 - used, evictable_tokens=100,
                            used_tokens=used, num_running_reqs=running, num_waiting_reqs=2, cache_hit_rate=0.5,
                            cache_tokens=150, prefill_tokens=prefill, generated_tokens=generated)


def test_sampler_rates_window_and_since():
    sampler = StatsSampler(None, lambda: 3, interval_s=1.0, window_s=5.0)
    assert sampler.snapshot()["load"] is None and sampler.snapshot()["throughput"] == {"prefill": 0.0, "decode": 0.0}
    first = sampler.add(load(10, 500), now=100.0)
    assert (first.prefill_tps, first.decode_tps) == (0.0, 0.0)
    second = sampler.add(load(50, 700), now=102.0)
    assert (second.prefill_tps, second.decode_tps) == (100.0, 20.0)
    restarted = sampler.add(load(0, 0), now=103.0)  # totals went down: no negative rate
    assert (restarted.prefill_tps, restarted.decode_tps) == (0.0, 0.0)
    for t in range(104, 110):
        sampler.add(load(t, 0, running=0, used=0), now=float(t))
    snap = sampler.snapshot()
    rows = snap["history"]["rows"]
    assert len(rows) == 5 and rows[0][0] == 105.0  # the window: 5 samples of 1 s
    assert snap["history"]["columns"] == ["time", "running", "queued", "token_usage", "prefill_tps", "decode_tps"]
    assert rows[-1] == [109.0, 0, 2, 0.0, 0.0, 1.0]
    assert [r[0] for r in sampler.snapshot(since=107.0)["history"]["rows"]] == [108.0, 109.0]
    assert snap["load"]["num_inflight_reqs"] == 3 and snap["load"]["cache_tokens"] == 150
    assert snap["throughput"] == {"prefill": 0.0, "decode": 1.0}


@pytest.fixture
def stack(tokenizer):
    """A fresh TokenizerManager per app: its receive loop lives on the TestClient's event loop."""
    s = Stack(tokenizer, ServerArgs(device="cpu", served_model_name="smollm-test"))
    yield s
    s.close()


def test_routes_on_the_real_app(stack):
    args = ServerArgs(device="cpu", served_model_name="smollm-test")
    with TestClient(create_app(args, stack.tm)) as c:
        page = c.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert page.headers["content-security-policy"].startswith("default-src 'none'")
        stats = c.get("/web/stats").json()
        assert stats["model"] == "smollm-test" and stats["flags"]["served_model_name"] == "smollm-test"
        assert stats["load"]["max_total_num_tokens"] == 1000 and stats["history"]["rows"]
        later = c.get("/web/stats", params={"since": stats["history"]["rows"][-1][0]}).json()
        assert all(r[0] > stats["history"]["rows"][-1][0] for r in later["history"]["rows"])
        for bad in ("nan", "inf", "soon"):
            r = c.get("/web/stats", params={"since": bad})
            assert r.status_code == 400 and r.json()["object"] == "error", (bad, r.text)


def test_api_key_401_is_the_page_for_a_browser_and_json_for_clients(stack):
    args = ServerArgs(device="cpu", api_key="sk-web-secret")
    with TestClient(create_app(args, stack.tm)) as c:
        html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
        r = c.get("/", headers=html)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert 'content="bearer"' in r.text and "sk-web-secret" not in r.text
        assert r.headers["content-security-policy"] == WebPage.build(True).headers["content-security-policy"]
        for path, headers in (("/", {}), ("/web/stats", html), ("/web/stats", {})):
            r = c.get(path, headers=headers)
            assert r.status_code == 401 and r.json()["code"] == 401
        assert c.post("/", headers=html).status_code == 401
        auth = {"Authorization": "Bearer sk-web-secret"}
        assert c.get("/", headers={**html, **auth}).status_code == 200
        stats = c.get("/web/stats", headers=auth)
        assert stats.status_code == 200 and "sk-web-secret" not in stats.text and stats.json()["load"]
        assert stats.json()["flags"]["api_key"] == "<redacted>"


def test_disable_web_ui_removes_page_and_stats(stack):
    args = ServerArgs(device="cpu", disable_web_ui=True)
    with TestClient(create_app(args, stack.tm)) as c:
        assert c.get("/").status_code == 404 and c.get("/web/stats").status_code == 404
        assert c.get("/v1/models").status_code == 200


def test_a_wheel_ships_the_page(tmp_path):
    """Non-editable installs get the static files (pyproject's package-data)."""
    # Without build isolation when setuptools is here (fast, offline); else pip fetches the backend
    isolation = [] if importlib.util.find_spec("setuptools") is None else ["--no-build-isolation"]
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", str(tmp_path), str(REPO)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("sglserve-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in STATIC_DIR.iterdir():
        assert f"sglserve/web/static/{f.name}" in names
