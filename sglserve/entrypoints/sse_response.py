"""The streaming response of every SSE route: Starlette's StreamingResponse without its
per-request anyio task group.

Why: under the ASGI spec uvicorn speaks (2.3), StreamingResponse runs the stream and a
disconnect listener as two tasks of an anyio task group with cancel scopes; creating and
cancelling them was ~15 % of the HTTP process's CPU per request in a 2000-request burst
(py-spy, benchmarks/RESULTS.md H7), work that delays every request's arrival at the scheduler.
Here the stream runs in the request's own task and one plain asyncio task waits for
`http.disconnect`; a client that leaves cancels the stream, as the task group did, so the
route's generator closes and its request is aborted.
"""

from __future__ import annotations

import asyncio

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class SSEResponse(StreamingResponse):
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        task = asyncio.current_task()
        state = {"done": False, "gone": False}

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not state["done"]:  # the stream still runs: stop it (its generator's finally aborts)
                state["gone"] = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await self.stream_response(send)
        except asyncio.CancelledError:
            # our own cancel (the client left) ends the response quietly; any other propagates
            if not state["gone"] or task.uncancel() > 0:
                raise
        finally:
            state["done"] = True
            watcher.cancel()
        if self.background is not None:
            await self.background()
