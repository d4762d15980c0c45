"""SSEResponse (sglserve/entrypoints/sse_response.py): the stream runs in the request's task; a
client's http.disconnect stops it and closes its generator; other cancellations propagate."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List

import pytest

from sglserve.entrypoints.sse_response import SSEResponse

SCOPE = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}}


class Client:
    """receive() blocks until disconnect() (as uvicorn's does once the body was read)."""

    def __init__(self) -> None:
        self.gone = asyncio.Event()
        self.sent: List[Dict[str, Any]] = []

    async def receive(self) -> Dict[str, Any]:
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, msg: Dict[str, Any]) -> None:
        self.sent.append(msg)

    def disconnect(self) -> None:
        self.gone.set()

    def bodies(self) -> List[bytes]:
        return [m["body"] for m in self.sent if m["type"] == "http.response.body"]


def test_stream_ends_normally() -> None:
    async def main() -> List[bytes]:
        async def frames():
            for i in range(3):
                yield f"data: {i}\n\n".encode()
        c = Client()
        await SSEResponse(frames(), media_type="text/event-stream")(SCOPE, c.receive, c.send)
        assert c.sent[0]["type"] == "http.response.start" and c.sent[0]["status"] == 200
        assert asyncio.current_task().cancelling() == 0
        await asyncio.sleep(0)  # the watcher was cancelled: nothing left to run
        assert len(asyncio.all_tasks()) == 1
        return c.bodies()

    assert asyncio.run(main()) == [b"data: 0\n\n", b"data: 1\n\n", b"data: 2\n\n", b""]


def test_disconnect_stops_the_stream_and_closes_its_generator() -> None:
    closed = []

    async def main() -> List[bytes]:
        c = Client()

        async def frames():
            try:
                yield b"data: first\n\n"
                c.disconnect()
                await asyncio.sleep(10)  # waits for a token that never comes
                yield b"data: never\n\n"
            finally:
                closed.append(True)

        await asyncio.wait_for(SSEResponse(frames())(SCOPE, c.receive, c.send), 5)
        assert asyncio.current_task().cancelling() == 0  # the cancel it made was taken back
        return c.bodies()

    assert asyncio.run(main()) == [b"data: first\n\n"]
    assert closed == [True]


def test_an_outside_cancel_propagates() -> None:
    async def main() -> None:
        c = Client()

        async def frames():
            yield b"data: first\n\n"
            await asyncio.sleep(10)

        task = asyncio.ensure_future(SSEResponse(frames())(SCOPE, c.receive, c.send))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
