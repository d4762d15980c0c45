"""The scheduler's control and reporting side: cache flush, KV usage and load for the HTTP
process, the idle leak check, and the prefill/decode log lines. Kept apart from the batching loop
in scheduler.py; the methods read the Scheduler's state (this is a mixin of it)."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Dict, List

from sglserve.io_struct import FlushCacheReqOutput, GetLoadReqOutput

if TYPE_CHECKING:
    from sglserve.scheduler.schedule_batch import Req

logger = logging.getLogger("sglserve.scheduler.scheduler")  # same logger name as the loop: one log stream


class SchedulerControlMixin:
    # ---- control ------------------------------------------------------------------------

    def flush_cache(self) -> FlushCacheReqOutput:
        if self.waiting_queue or self.running or self.chunked_req is not None or len(self.grammar_manager):
            return FlushCacheReqOutput(success=False, message="Cache not flushed: there are running or waiting requests.")
        self.tree_cache.reset()
        self.model_runner.req_to_token_pool.clear()
        self.model_runner.allocator.clear()
        return FlushCacheReqOutput(success=True, message="Cache flushed.")

    def token_usage(self) -> Dict[str, int]:
        available = self.model_runner.allocator.available_size()
        evictable = self.tree_cache.evictable_size()
        return {"available": available, "evictable": evictable,
                "used": self.max_total_num_tokens - available - evictable}

    def get_load(self) -> GetLoadReqOutput:
        u = self.token_usage()
        rate = self.total_cached_tokens / self.total_prompt_tokens if self.total_prompt_tokens else 0.0
        return GetLoadReqOutput(max_total_num_tokens=self.max_total_num_tokens, available_tokens=u["available"],
                                evictable_tokens=u["evictable"], used_tokens=u["used"], num_running_reqs=len(self.running),
                                num_waiting_reqs=len(self.waiting_queue) + len(self.grammar_manager), cache_hit_rate=rate)

    def check_memory_integrity(self) -> bool:
        """Idle check: every KV token is free or held by the prefix cache, nothing locked."""
        try:
            self.tree_cache.check_idle()
        except RuntimeError as e:
            logger.error("KV cache leak detected: %s", e)
            return False
        return True

    # ---- logs ---------------------------------------------------------------------------

    def log_prefill_stats(self, reqs: List[Req]) -> None:
        usage = self.token_usage()["used"] / self.max_total_num_tokens
        cache_report = ""
        if self.server_args.enable_cache_report and self.total_prompt_tokens:
            cache_report = f", cache hit rate: {100 * self.total_cached_tokens / self.total_prompt_tokens:.2f}%"
        logger.info(
            "Prefill batch. #new-seq: %d, #new-token: %d, #cached-token: %d, token usage: %.2f, "
            "#running-req: %d, #queue-req: %d%s",
            len(reqs), sum(r.extend_input_len for r in reqs), sum(len(r.prefix_indices) for r in reqs),
            usage, len(self.running), len(self.waiting_queue), cache_report,
        )

    def log_decode_stats(self) -> None:
        if self.forward_ct % self.server_args.decode_log_interval != 0:
            return
        now = time.perf_counter()
        throughput = self.num_generated_tokens / max(now - self.last_decode_log, 1e-6)
        self.num_generated_tokens, self.last_decode_log = 0, now
        u = self.token_usage()
        logger.info(
            "Decode batch. #running-req: %d, #token: %d, token usage: %.2f, gen throughput (token/s): %.2f, "
            "#queue-req: %d",
            len(self.running), u["used"], u["used"] / self.max_total_num_tokens, throughput, len(self.waiting_queue),
        )
