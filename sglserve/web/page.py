"""The page at `/`: `static/index.html` with its stylesheets and scripts inlined into one
document, built once at start-up, and the Content-Security-Policy that allows exactly those.

One document, because with --api-key a browser cannot send a Bearer header for `<script src>`
or `<link href>`: the shell must arrive whole in the response to the navigation (see
routes.py for how it is served with and without the key). The files stay separate in the
package and the page also works opened from disk, with no build step. The policy allows the
inline code by hash only, so markup that slipped into the page (model output is written with
textContent, never as HTML) could run no script anyway.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Tuple

STATIC_DIR = Path(__file__).with_name("static")
SCRIPT_TAG = re.compile(r'<script src="([\w.-]+\.js)"></script>')
STYLE_TAG = re.compile(r'<link rel="stylesheet" href="([\w.-]+\.css)">')
AUTH_META = '<meta name="sglserve-auth" content="none">'


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


@dataclass(frozen=True)
class WebPage:
    html: bytes
    headers: Dict[str, str]

    @classmethod
    def build(cls, auth_required: bool, static_dir: Path = STATIC_DIR) -> "WebPage":
        """Inline every `<script src>` and stylesheet of index.html; `auth_required` tells the
        script to ask for the API key before its first call (not a secret: every route says it)."""
        index = (static_dir / "index.html").read_text(encoding="utf-8")
        scripts: List[str] = []
        styles: List[str] = []

        def inline(match: "re.Match[str]", into: List[str], tag: str) -> str:
            code = (static_dir / match.group(1)).read_text(encoding="utf-8")
            if f"</{tag}" in code.lower():
                raise ValueError(f"{match.group(1)} contains '</{tag}': it cannot be inlined")
            into.append(code)
            return f"<{tag}>{code}</{tag}>"

        html = SCRIPT_TAG.sub(lambda m: inline(m, scripts, "script"), index)
        html = STYLE_TAG.sub(lambda m: inline(m, styles, "style"), html)
        if AUTH_META not in html or not scripts:
            raise ValueError(f"{static_dir / 'index.html'} lacks {AUTH_META!r} or its scripts")
        if auth_required:
            html = html.replace(AUTH_META, AUTH_META.replace('"none"', '"bearer"'))
        csp = "; ".join([
            "default-src 'none'",
            "script-src " + " ".join(_sha256(s) for s in scripts),
            "style-src " + " ".join(_sha256(s) for s in styles),
            "connect-src 'self'",
            "img-src 'self' data:",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        ])
        headers = {"content-security-policy": csp, "x-content-type-options": "nosniff",
                   "referrer-policy": "no-referrer", "cache-control": "no-store"}
        return cls(html.encode("utf-8"), headers)

    def raw_headers(self) -> List[Tuple[bytes, bytes]]:
        """The headers as an ASGI response start wants them (the 401 answer of middleware.py)."""
        return [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(self.html)).encode()),
                *((k.encode(), v.encode()) for k, v in self.headers.items())]
