"""What the scheduler reports: prefill/decode log lines, the prefix-cache hit rate, and the
load it answers /get_server_info, /metrics and the web UI's /web/stats with (the token totals
from which the HTTP process computes prefill and decode throughput)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, List

from sglserve.io_struct import GetLoadReqOutput

if TYPE_CHECKING:
    from sglserve.scheduler.kv_accounting import KVAccounting
    from sglserve.scheduler.schedule_batch import Req

logger = logging.getLogger("sglserve.scheduler.scheduler")  # the loop's logger: one log stream


class SchedulerStats:
    def __init__(self, kv: "KVAccounting", decode_log_interval: int, enable_cache_report: bool) -> None:
        self.kv = kv
        self.decode_log_interval = decode_log_interval
        self.enable_cache_report = enable_cache_report
        self.forward_ct = 0
        self.num_generated_tokens = 0
        self.last_decode_log = time.perf_counter()
        self.total_prompt_tokens = 0
        self.total_cached_tokens = 0
        self.total_prefill_tokens = 0  # computed by prefill (chunks included, cache hits not)
        self.total_generated_tokens = 0

    def on_admitted(self, reqs: List["Req"]) -> None:
        """First admission of each request: its prefix hit is what the client is told it saved."""
        for req in reqs:
            if req._first_admission:
                req.cached_tokens = len(req.prefix_indices)
                req._first_admission = False
                self.total_prompt_tokens += len(req.origin_input_ids)
                self.total_cached_tokens += req.cached_tokens

    @property
    def cache_hit_rate(self) -> float:
        return self.total_cached_tokens / self.total_prompt_tokens if self.total_prompt_tokens else 0.0

    def load(self, num_running: int, num_waiting: int) -> GetLoadReqOutput:
        u = self.kv.usage()
        cache = self.kv.tree_cache
        return GetLoadReqOutput(max_total_num_tokens=self.kv.max_total_num_tokens, available_tokens=u["available"],
                                evictable_tokens=u["evictable"], used_tokens=u["used"], num_running_reqs=num_running,
                                num_waiting_reqs=num_waiting, cache_hit_rate=self.cache_hit_rate,
                                cache_tokens=cache.evictable_size() + cache.protected_size(),
                                prefill_tokens=self.total_prefill_tokens, generated_tokens=self.total_generated_tokens)

    def log_prefill(self, reqs: List["Req"], num_running: int, num_waiting: int) -> None:
        """Counts the step's prefill tokens and logs one line about them."""
        num_new = sum(r.extend_input_len for r in reqs)
        self.total_prefill_tokens += num_new
        usage = self.kv.usage()["used"] / self.kv.max_total_num_tokens
        cache_report = ""
        if self.enable_cache_report and self.total_prompt_tokens:
            cache_report = f", cache hit rate: {100 * self.cache_hit_rate:.2f}%"
        logger.info(
            "Prefill batch. #new-seq: %d, #new-token: %d, #cached-token: %d, token usage: %.2f, "
            "#running-req: %d, #queue-req: %d%s",
            len(reqs), num_new, sum(len(r.prefix_indices) for r in reqs),
            usage, num_running, num_waiting, cache_report,
        )

    def on_step(self, num_new_tokens: int, num_running: int, num_waiting: int) -> None:
        """Counts a forward; every decode_log_interval steps, one decode summary line."""
        self.forward_ct += 1
        self.num_generated_tokens += num_new_tokens
        self.total_generated_tokens += num_new_tokens
        if self.forward_ct % self.decode_log_interval != 0 or not num_running:
            return
        now = time.perf_counter()
        throughput = self.num_generated_tokens / max(now - self.last_decode_log, 1e-6)
        self.num_generated_tokens, self.last_decode_log = 0, now
        u = self.kv.usage()
        logger.info(
            "Decode batch. #running-req: %d, #token: %d, token usage: %.2f, gen throughput (token/s): %.2f, "
            "#queue-req: %d",
            num_running, u["used"], u["used"] / self.kv.max_total_num_tokens, throughput, num_waiting,
        )
