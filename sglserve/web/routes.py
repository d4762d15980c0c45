"""The web UI's two routes: `GET /` (the playground and dashboard page) and `GET /web/stats`
(the dashboard's one stats feed, polled as JSON). `--disable-web-ui` creates neither, nor the
sampler behind the stats.

Polling JSON rather than SSE: a browser's EventSource cannot send an Authorization header, and
with --api-key the stats route, like every route, answers 401 without one. With --api-key,
`GET /` without the key answers 401 as well; to a browser (Accept: text/html) that 401 carries
the page itself (ApiKeyMiddleware), which holds no data and no secret and asks for the key;
every call it then makes sends `Authorization: Bearer <key>`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Optional

from fastapi import FastAPI, Response

from sglserve.entrypoints.openai.serving_utils import error_response, json_response
from sglserve.server_args import ServerArgs
from sglserve.web.page import WebPage
from sglserve.web.stats import StatsSampler


@dataclass
class WebUI:
    page: WebPage
    sampler: StatsSampler
    flags: dict  # ServerArgs.public_dict(): the API key redacted
    started: float = 0.0  # unix time the server started serving

    @classmethod
    def create(cls, server_args: ServerArgs, tokenizer_manager) -> Optional["WebUI"]:
        if server_args.disable_web_ui:
            return None
        tm = tokenizer_manager
        sampler = StatsSampler(tm.get_load, lambda: tm.num_inflight)
        return cls(WebPage.build(auth_required=bool(server_args.api_key)), sampler, server_args.public_dict())

    def install(self, app: FastAPI, tokenizer_manager, model_name: str) -> None:
        tm = tokenizer_manager

        @app.get("/", response_class=Response, summary="The playground and dashboard page (--disable-web-ui: none)")
        async def web_page() -> Response:
            return Response(self.page.html, media_type="text/html; charset=utf-8", headers=self.page.headers)

        @app.get("/web/stats", summary="The dashboard's stats: load, throughput, history, flags (docs/web_ui.md)")
        async def web_stats(since: Optional[float] = None) -> Response:
            if since is not None and not math.isfinite(since):
                return error_response(f"since={since} must be a finite unix time in seconds.", 400, "since")
            if tm.dead_reason:
                return error_response(tm.dead_reason, 503)
            body = self.sampler.snapshot(since)
            if body["load"] is None:  # the first sample is not in yet (the server just started)
                await self.sampler.sample_once()
                body = self.sampler.snapshot(since)
            body.update(model=model_name, version=app.version, uptime_s=round(time.time() - self.started, 1),
                        flags=self.flags)
            return json_response(body)

    async def start(self) -> None:
        self.started = time.time()
        self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()
