"""The scheduler's view of KV memory: the pools, the prefix cache over them, and how many
tokens a step may still take (free + evictable)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Dict, List

from sglserve.mem_cache.chunk_cache import ChunkCache
from sglserve.mem_cache.radix_cache import RadixCache
from sglserve.model_executor.forward_batch import ForwardMode
from sglserve.scheduler.schedule_batch import Req, ScheduleBatch

if TYPE_CHECKING:
    from sglserve.model_executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)


class KVAccounting:
    def __init__(self, model_runner: "ModelRunner", page_size: int, disable_radix_cache: bool, device: str) -> None:
        self.req_to_token_pool = model_runner.req_to_token_pool
        self.allocator = model_runner.allocator
        self.max_total_num_tokens = model_runner.max_total_num_tokens
        self.page_size = page_size
        self.device = device
        cache_cls = ChunkCache if disable_radix_cache else RadixCache
        self.tree_cache = cache_cls(self.req_to_token_pool, self.allocator, page_size)

    def room(self) -> int:
        """Tokens a step can take without retracting anyone: free slots plus evictable cache."""
        return self.allocator.available_size() + self.tree_cache.evictable_size()

    def decode_tokens_needed(self, reqs: List[Req]) -> int:
        """Slots one more token of each request takes (a new page where its last one is full)."""
        page = self.page_size
        if page == 1:
            return len(reqs)
        return sum(page for r in reqs if r.kv_len % page == 0)

    def new_batch(self, reqs: List[Req], mode: ForwardMode, num_decoding: int = 0) -> ScheduleBatch:
        return ScheduleBatch(reqs, mode, self.req_to_token_pool, self.allocator, self.tree_cache, self.device,
                             num_decoding=num_decoding)

    def usage(self) -> Dict[str, int]:
        available = self.allocator.available_size()
        evictable = self.tree_cache.evictable_size()
        return {"available": available, "evictable": evictable,
                "used": self.max_total_num_tokens - available - evictable}

    def flush(self) -> None:
        self.tree_cache.reset()
        self.req_to_token_pool.clear()
        self.allocator.clear()

    def check_idle(self) -> bool:
        """Idle check: every KV token is free or held by the prefix cache, nothing locked."""
        try:
            self.tree_cache.check_idle()
        except RuntimeError as e:
            logger.error("KV cache leak detected: %s", e)
            return False
        return True
