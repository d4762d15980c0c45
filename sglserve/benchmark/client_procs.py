"""Load generation from several client processes.

One Python event loop parses some 20-30k SSE chunks a second; a server that streams faster
(a small model at thousands of running requests) is then measured at the client's speed, and
late reads inflate its TTFT and ITL. With --client-procs K each of K worker processes sends
every K-th request at its global arrival time (one shared schedule, one shared start on the
monotonic clock, which all processes of a Linux host read alike) and returns the per-request
outputs; the metrics are computed over all of them as from one process.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import time
from typing import List, Optional, Sequence, Tuple

import numpy as np

from sglserve.benchmark.backends import RequestInput, make_session, send_request
from sglserve.benchmark.metrics import RequestOutput

Share = List[Tuple[int, float, RequestInput]]  # (index, arrival offset in s, request)


def arrival_offsets(n: int, rate: float, rng: np.random.Generator) -> List[float]:
    """Poisson arrivals as bench_serving's single loop draws them: the first at 0."""
    offsets, target = [], 0.0
    for _ in range(n):
        offsets.append(target)
        if rate != float("inf"):
            target += float(rng.exponential(1.0 / rate))
    return offsets


async def _send_share(backend: str, share: Share, start: float, concurrency: Optional[int]):
    semaphore = asyncio.Semaphore(concurrency) if concurrency else None
    async with make_session() as session:
        async def one(i: int, offset: float, inp: RequestInput) -> Tuple[int, RequestOutput]:
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            if semaphore is None:
                return i, await send_request(session, backend, inp)
            async with semaphore:
                return i, await send_request(session, backend, inp)

        return await asyncio.gather(*[one(*x) for x in share])


def _worker(conn, backend: str, share: Share, concurrency: Optional[int]) -> None:
    conn.send("ready")
    start = conn.recv()
    conn.send(asyncio.run(_send_share(backend, share, start, concurrency)))
    conn.close()


def run_in_procs(backend: str, inputs: Sequence[RequestInput], offsets: Sequence[float], procs: int,
                 max_concurrency: Optional[int] = None) -> Tuple[List[RequestOutput], float]:
    """The outputs in input order and the duration from the common start to the last answer.
    --max-concurrency is split evenly across the processes."""
    ctx = mp.get_context("spawn")
    share_conc = None if max_concurrency is None else max(1, math.ceil(max_concurrency / procs))
    conns, workers = [], []
    for w in range(procs):
        parent, child = ctx.Pipe()
        share = [(i, offsets[i], inputs[i]) for i in range(w, len(inputs), procs)]
        p = ctx.Process(target=_worker, args=(child, backend, share, share_conc), daemon=True)
        p.start()
        conns.append(parent)
        workers.append(p)
    for c in conns:
        if c.recv() != "ready":
            raise RuntimeError("a client process did not start")
    start = time.perf_counter() + 0.05
    for c in conns:
        c.send(start)
    outputs: List[Optional[RequestOutput]] = [None] * len(inputs)
    for c in conns:
        for i, out in c.recv():
            outputs[i] = out
    duration = time.perf_counter() - start
    for p in workers:
        p.join(10)
    return outputs, duration
