"""Take the screenshots of docs/web_ui.md: a server on the default model, the playground after
a chat, and the dashboard while a few requests run.

    python docs/web_ui_screenshots.py            # writes docs/web-playground.png, docs/web-dashboard.png

Needs what the browser tests need: Playwright's Python package and Debian's chromium.
"""

from __future__ import annotations

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.helpers import ServerProcess
from tests.server.web_browser import chat, chromium_missing, launch

DOCS = Path(__file__).resolve().parent


def load(base_url: str, stop: threading.Event) -> None:
    """Keep 8 requests running so the dashboard has something to show."""
    body = {"text": "Tell me about the history of Paris.",
            "sampling_params": {"max_new_tokens": 32, "ignore_eos": True, "temperature": 0.7}}

    def one() -> None:
        try:
            requests.post(base_url + "/generate", json=body, timeout=600)
        except requests.RequestException:  # the server stopped under it: the screenshot is taken
            pass

    while not stop.is_set():
        threads = [threading.Thread(target=one) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


def main() -> None:
    reason = chromium_missing()
    if reason:
        sys.exit(reason)
    from playwright.sync_api import sync_playwright

    server = ServerProcess([], str(Path(tempfile.mkdtemp()) / "server.log"))
    server.wait_ready()
    stop = threading.Event()
    try:
        with sync_playwright() as p:
            browser = launch(p)
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(120_000)
            page.goto(server.base_url + "/#playground")
            page.wait_for_selector("#model:not(:empty)")
            page.fill("#system", "You are a helpful assistant.")
            chat(page, "What is the capital of France?", temperature=0, **{"max-tokens": 256})
            page.wait_for_selector("#status[data-state=done]")
            page.check("#json-mode")
            page.fill("#json-schema", json.dumps({"type": "object", "properties": {"capital": {"type": "string"}},
                                                  "required": ["capital"]}, indent=2))
            chat(page, "What is the capital of Italy? Answer in JSON.")
            page.wait_for_selector("#status[data-state=done]")
            page.screenshot(path=str(DOCS / "web-playground.png"))

            worker = threading.Thread(target=load, args=(server.base_url, stop), daemon=True)
            worker.start()
            page.click("#tab-dashboard")
            time.sleep(40)
            while page.text_content("#running") in ("0", "–"):  # a moment with requests running
                page.wait_for_timeout(200)
            page.screenshot(path=str(DOCS / "web-dashboard.png"))
            browser.close()
    finally:
        stop.set()
        server.stop()
    print("wrote", DOCS / "web-playground.png", DOCS / "web-dashboard.png")


if __name__ == "__main__":
    main()
