"""The dashboard's numbers: the scheduler's load sampled once a second into a window of the last
minutes, with prefill and decode throughput computed from its token totals.

One sampler per server, whatever the number of open dashboards: `/web/stats` reads what the
sampler holds and never asks the scheduler itself. The samples come through the same control
message as /get_server_info's load (`GetLoadReq`), so there is no second channel to the scheduler.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Deque, Dict, List, Optional

import msgspec

from sglserve.io_struct import GetLoadReqOutput
from sglserve.tokenizer.tokenizer_manager import ServerError

logger = logging.getLogger(__name__)

HISTORY_COLUMNS = ("time", "running", "queued", "token_usage", "prefill_tps", "decode_tps")


@dataclass
class Sample:
    time: float  # unix time the scheduler's answer arrived
    load: GetLoadReqOutput
    inflight: int  # requests in the HTTP process (queued in the tokenizer manager, or running)
    prefill_tps: float  # prompt tokens computed per second since the previous sample
    decode_tps: float  # output tokens per second since the previous sample

    def row(self) -> List[float]:
        load = self.load
        usage = load.used_tokens / max(load.max_total_num_tokens, 1)
        return [round(self.time, 3), load.num_running_reqs, load.num_waiting_reqs, round(usage, 4),
                round(self.prefill_tps, 1), round(self.decode_tps, 1)]


class StatsSampler:
    """Asks `get_load` every `interval_s` seconds; keeps `window_s` seconds of samples."""

    def __init__(self, get_load: Callable[..., Awaitable[GetLoadReqOutput]], inflight: Callable[[], int],
                 interval_s: float = 1.0, window_s: float = 300.0) -> None:
        self.get_load, self.inflight = get_load, inflight
        self.interval_s, self.window_s = interval_s, window_s
        self.samples: Deque[Sample] = collections.deque(maxlen=max(2, int(window_s / interval_s)))
        self._task: Optional[asyncio.Task] = None

    def add(self, load: GetLoadReqOutput, now: Optional[float] = None) -> Sample:
        """Record one answer of the scheduler; rates are per second since the previous one."""
        now = time.time() if now is None else now
        prefill_tps = decode_tps = 0.0
        if self.samples:
            prev = self.samples[-1]
            dt = now - prev.time
            if dt > 0:
                # max(0, ...): the totals restart from 0 if the scheduler does (never a negative rate)
                prefill_tps = max(0, load.prefill_tokens - prev.load.prefill_tokens) / dt
                decode_tps = max(0, load.generated_tokens - prev.load.generated_tokens) / dt
        sample = Sample(now, load, self.inflight(), prefill_tps, decode_tps)
        self.samples.append(sample)
        return sample

    async def sample_once(self) -> None:
        try:
            load = await self.get_load(timeout=max(10.0, 5 * self.interval_s))
        except ServerError as e:  # scheduler dead or busy past the timeout: a gap in the history
            logger.debug("Stats sample skipped: %s", e)
            return
        self.add(load)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await self.sample_once()
            await asyncio.sleep(max(0.0, self.interval_s - (loop.time() - started)))

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="web-stats-sampler")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def snapshot(self, since: Optional[float] = None) -> Dict[str, Any]:
        """The stats route's body (docs/web_ui.md); `since`: only history rows after that time."""
        latest = self.samples[-1] if self.samples else None
        load = None
        if latest is not None:
            load = msgspec.structs.asdict(latest.load)
            load["num_inflight_reqs"] = latest.inflight
            load["token_usage"] = latest.load.used_tokens / max(latest.load.max_total_num_tokens, 1)
        # Rows carry the time rounded to ms, so `since` (a row's time) is compared at that precision
        rows = [s.row() for s in self.samples if since is None or round(s.time, 3) > since]
        return {
            "time": time.time(),
            "sampled_at": None if latest is None else latest.time,
            "load": load,
            "throughput": {"prefill": 0.0 if latest is None else round(latest.prefill_tps, 1),
                           "decode": 0.0 if latest is None else round(latest.decode_tps, 1)},
            "history": {"interval_s": self.interval_s, "window_s": self.window_s,
                        "columns": list(HISTORY_COLUMNS), "rows": rows},
        }
