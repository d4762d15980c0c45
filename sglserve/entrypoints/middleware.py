"""Pure ASGI middlewares of the HTTP server (streaming responses pass through untouched).

- `RequestContextMiddleware`: a request id per HTTP request for the logs (`[rid=...]`) and the
  `X-Request-Id` response header; the TokenizerManager runs the request under the same id.
- `ApiKeyMiddleware`: `--api-key`: `Authorization: Bearer <key>` on every route but `/health`,
  compared in constant time; a missing or wrong key is a 401 in OpenAI's error shape (to a
  browser asking for the web UI's page, a 401 whose body is that page: it asks for the key).
- `MaxPayloadMiddleware`: `--max-payload-size`: 413 for a larger body.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import TYPE_CHECKING, Any, Callable, Optional

import orjson
from starlette.exceptions import HTTPException as StarletteHTTPException

from sglserve.entrypoints.openai.serving_utils import error_payload
from sglserve.utils.logging_utils import RequestContext, request_context

if TYPE_CHECKING:
    from sglserve.web.page import WebPage


async def send_error(send: Callable, message: str, status_code: int, headers: list = ()) -> None:
    body = orjson.dumps(error_payload(message, status_code))
    await send({"type": "http.response.start", "status": status_code,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *headers]})
    await send({"type": "http.response.body", "body": body})


class RequestContextMiddleware:
    """Outermost: every log line about the request (the access log's too) names its id."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        ctx = RequestContext(uuid.uuid4().hex)
        token = request_context.set(ctx)

        async def send_with_id(msg: dict) -> None:
            if msg["type"] == "http.response.start":
                rid = "".join(c if " " <= c <= "~" else "?" for c in ctx.rid[:256])  # a client-given rid: no CR/LF
                msg = {**msg, "headers": [*msg.get("headers", []), (b"x-request-id", rid.encode())]}
            await send(msg)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            request_context.reset(token)


class ApiKeyMiddleware:
    """--api-key: require `Authorization: Bearer <key>`; only /health (a liveness probe) stays open."""

    EXEMPT_PATHS = frozenset({"/health"})

    def __init__(self, app: Any, api_key: str, login_page: Optional["WebPage"] = None) -> None:
        # Compare digests: constant time whatever the length of what the client sent
        self.app, self.expected = app, hashlib.sha256(f"Bearer {api_key}".encode()).digest()
        self.login_page = login_page  # the web UI's page (sglserve/web/), or None: no web UI

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or scope["path"] in self.EXEMPT_PATHS:
            return await self.app(scope, receive, send)
        auth = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                auth = value
        if not hmac.compare_digest(hashlib.sha256(auth).digest(), self.expected):
            if self.login_page is not None and scope["path"] == "/" and _wants_html(scope):
                await send({"type": "http.response.start", "status": 401,
                            "headers": [*self.login_page.raw_headers(), (b"www-authenticate", b"Bearer")]})
                return await send({"type": "http.response.body", "body": self.login_page.html})
            return await send_error(send, "Unauthorized: missing or invalid API key (send 'Authorization: Bearer <key>').",
                                    401, [(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


def _wants_html(scope: dict) -> bool:
    """A browser's navigation (GET with Accept: text/html), not an API client."""
    accept = b"".join(v for k, v in scope["headers"] if k == b"accept")
    return scope["method"] == "GET" and b"text/html" in accept


class _PayloadTooLarge(StarletteHTTPException):
    """An HTTPException so FastAPI's body parsing re-raises it (and the handler answers 413)."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message)


class MaxPayloadMiddleware:
    """--max-payload-size: 413 for a larger body (by Content-Length, or counted as it arrives)."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"Request body is too large; the limit is {self.max_bytes} bytes (--max-payload-size)."
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await send_error(send, message, 413)
        seen = 0
        started = False

        async def counting_receive() -> dict:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _PayloadTooLarge(message)
            return msg

        async def tracking_send(msg: dict) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except _PayloadTooLarge:
            if not started:
                await send_error(send, message, 413)
