"""ChunkCache: the prefix cache used with --disable-radix-cache.

Nothing is shared between requests: every request owns all of its KV slots. The only
state that survives a step is a chunked request's own KV, kept on the request itself
(`req.prefix_indices`) so the next chunk of its prefill continues after it.
"""

from __future__ import annotations

from typing import Any, List, Optional

import torch

from sglserve.mem_cache.base_prefix_cache import BasePrefixCache, MatchResult


class ChunkCache(BasePrefixCache):
    """Same interface as RadixCache; caches nothing across requests."""

    def reset(self) -> None:
        """Nothing to forget."""

    def match_prefix(self, key: List[int], salt: Optional[str] = None) -> MatchResult:
        """Never a hit: empty indices and last_node None (locking None is a no-op)."""
        return MatchResult(self._empty_indices(), None)

    def insert(self, key: List[int], value: torch.Tensor, salt: Optional[str] = None) -> int:
        """Stores nothing: the slots are freed right away (ownership passed here) and 0 returned."""
        if len(key) != len(value):
            raise ValueError(f"insert: {len(key)} tokens but {len(value)} slots")
        self.token_to_kv_pool_allocator.free(value)
        return 0

    def evict(self, num_tokens: int) -> None:
        """Nothing is evictable."""

    def inc_lock_ref(self, node: Any) -> int:
        return 0

    def dec_lock_ref(self, node: Any) -> int:
        return 0

    def cache_finished_req(self, req: Any, is_insert: bool = True) -> None:
        """Free every KV slot of the request and its req_to_token row."""
        kv = self._row_slots(req, len(self._finished_token_ids(req)))
        self.token_to_kv_pool_allocator.free(kv)
        self.req_to_token_pool.free(req.req_pool_idx)

    def cache_unfinished_req(self, req: Any) -> None:
        """Keep the computed slots on the request so the next chunk extends them."""
        req.prefix_indices = self._row_slots(req, len(req.fill_ids))

    def evictable_size(self) -> int:
        return 0

    def protected_size(self) -> int:
        return 0

    def total_size(self) -> int:
        return 0

    def pretty_print(self) -> str:
        text = f"ChunkCache(page_size={self.page_size}): caches nothing"
        print(text)
        return text
