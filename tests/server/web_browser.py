"""Chromium driven by Playwright for the web UI's tests (tests/server/test_web_ui.py) and the
docs' screenshots (docs/web_ui_screenshots.py): Debian's `chromium` package (`.ci/run` installs
it), never Playwright's own browser download."""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List, Optional

CHROMIUM = os.environ.get("SGLSERVE_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def chromium_missing() -> Optional[str]:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed (pip install -e '.[test]')"
    if not os.path.exists(CHROMIUM):
        return f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium; .ci/run does)"
    return None


def expect(locator: Any) -> Any:
    """Playwright's assertions (imported late: this module loads without Playwright)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def launch(playwright: Any) -> Any:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])


class PageWatch:
    """What a page did that a test checks: console errors, uncaught exceptions, dialogs, requests."""

    def __init__(self, page: Any) -> None:
        self.console_errors: List[str] = []
        self.page_errors: List[str] = []
        self.dialogs: List[str] = []
        self.requests: List[str] = []
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(m.text))
        page.on("pageerror", lambda e: self.page_errors.append(str(e)))
        page.on("request", lambda r: self.requests.append(r.url))

        def on_dialog(dialog: Any) -> None:
            self.dialogs.append(f"{dialog.type}: {dialog.message}")
            dialog.dismiss()

        page.on("dialog", on_dialog)


def sse_payloads(body: str) -> List[Dict[str, Any]]:
    """The JSON payloads of an SSE body (the [DONE] line left out)."""
    out = []
    for line in body.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            out.append(json.loads(line[len("data: "):]))
    return out


def chat(page: Any, prompt: str, **settings: Any) -> None:
    """Fill the playground's settings (element id -> value) and the prompt, and send."""
    for element_id, value in settings.items():
        page.fill(f"#{element_id}", str(value))
    page.fill("#prompt", prompt)
    page.click("#send")
