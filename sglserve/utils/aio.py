"""Small asyncio helpers the HTTP process needs."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, List


async def last_item(gen: AsyncIterator[Any]) -> Any:
    out = None
    async for out in gen:
        pass
    return out


async def merge_streams(gens: List[AsyncIterator[Any]]) -> AsyncIterator[Any]:
    """Interleave async generators as items arrive; yields (index, item). An exception in
    one stops all; leaving early closes all (their `finally` aborts unfinished requests).
    The queue is bounded: while a slow consumer lags, the producers wait and their (cumulative)
    state coalesces instead of piling up snapshots in memory."""
    queue: asyncio.Queue = asyncio.Queue(maxsize=max(1, len(gens)))
    done = object()

    async def pump(i: int, gen: AsyncIterator[Any]) -> None:
        try:
            async for item in gen:
                await queue.put((i, item, None))
        except BaseException as e:  # noqa: BLE001 - forwarded to the consumer
            await queue.put((i, done, e))
            return
        await queue.put((i, done, None))

    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(tasks)
        while remaining:
            i, item, exc = await queue.get()
            if item is done:
                if exc is not None and not isinstance(exc, asyncio.CancelledError):
                    raise exc
                remaining -= 1
                continue
            yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
