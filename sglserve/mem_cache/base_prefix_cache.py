"""The prefix-cache contract shared by RadixCache and ChunkCache.

Ownership of KV slots (the one rule every method follows):
- A slot belongs to exactly one owner at a time: the allocator (free), a tree node, or a
  request (the slots in its `req_to_token` row past its cached prefix).
- Slots handed to `insert` become the tree's, except the first `prefix_len` returned:
  those duplicate a prefix that was already cached and stay the caller's to free.
- A request's matched prefix (`req.prefix_indices[:floor_page(len)]`) is the tree's; the
  request only keeps it alive by holding a lock on `req.last_node`.

Request fields read here (see `sglserve.scheduler.schedule_batch.Req`): origin_input_ids,
output_ids, fill_ids, req_pool_idx, prefix_indices, last_node, cache_salt (if present).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, List, NamedTuple, Optional

import numpy as np
import torch

if TYPE_CHECKING:
    from sglserve.mem_cache.memory_pool import PagedTokenToKVPoolAllocator, ReqToTokenPool


class MatchResult(NamedTuple):
    """Result of `match_prefix`.

    device_indices: int64 KV slots of the matched prefix (a fresh tensor, safe to keep).
    last_node: the node that ends the match; lock it to keep the prefix from eviction.
    """

    device_indices: torch.Tensor
    last_node: Any


class BasePrefixCache(ABC):
    """Maps token-id prefixes to KV slots; all sizes are counted in tokens."""

    def __init__(
        self,
        req_to_token_pool: "ReqToTokenPool",
        token_to_kv_pool_allocator: "PagedTokenToKVPoolAllocator",
        page_size: int,
    ) -> None:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        alloc_page = getattr(token_to_kv_pool_allocator, "page_size", page_size)
        if alloc_page != page_size:
            raise ValueError(f"page_size {page_size} differs from the allocator's page_size {alloc_page}")
        self.req_to_token_pool = req_to_token_pool
        self.token_to_kv_pool_allocator = token_to_kv_pool_allocator
        self.page_size = page_size
        self.device = getattr(token_to_kv_pool_allocator, "device", "cpu")

    # ---- lookup and storage -------------------------------------------------------
    @abstractmethod
    def match_prefix(self, key: List[int], salt: Optional[str] = None) -> MatchResult:
        """Longest cached prefix of `key`, whole pages only; refreshes its LRU time. Only prefixes
        inserted with the same `salt` (a request's cache_salt; None: unsalted) can match."""

    @abstractmethod
    def insert(self, key: List[int], value: torch.Tensor, salt: Optional[str] = None) -> int:
        """Cache `key` -> `value` (len(key) a multiple of page_size) under `salt`.

        Returns how many leading tokens were already cached; the caller still owns (and
        must free) value[:returned]'s slots past its own cached prefix. The cache owns
        the rest of `value` from now on.
        """

    @abstractmethod
    def evict(self, num_tokens: int) -> None:
        """Free least recently used unlocked leaves until num_tokens are freed or none is left."""

    # ---- locks --------------------------------------------------------------------
    @abstractmethod
    def inc_lock_ref(self, node: Any) -> int:
        """Protect the path root..node from eviction; returns the change of evictable_size()."""

    @abstractmethod
    def dec_lock_ref(self, node: Any) -> int:
        """Undo one inc_lock_ref(node); returns the change of evictable_size()."""

    # ---- requests -----------------------------------------------------------------
    @abstractmethod
    def cache_finished_req(self, req: Any, is_insert: bool = True) -> None:
        """Release a finished request: its KV goes to the cache (or is freed when
        is_insert is False, e.g. on abort), its req_to_token row is freed and its lock
        on req.last_node dropped. The request must not be used with the pools afterwards."""

    @abstractmethod
    def cache_unfinished_req(self, req: Any) -> None:
        """After a chunk of prefill: cache req.fill_ids' KV, and update req.prefix_indices
        and req.last_node (lock moved) so the next chunk continues after it."""

    # ---- accounting ---------------------------------------------------------------
    @abstractmethod
    def evictable_size(self) -> int:
        """Tokens in unlocked nodes (freeable by evict)."""

    @abstractmethod
    def protected_size(self) -> int:
        """Tokens in locked nodes."""

    @abstractmethod
    def total_size(self) -> int:
        """Tokens held by the cache (counted by walking it, independent of the counters)."""

    @abstractmethod
    def reset(self) -> None:
        """Forget every cached prefix without freeing slots (the pools are cleared by the caller)."""

    @abstractmethod
    def pretty_print(self) -> str:
        """Print a readable dump of the cache and return it."""

    def check_integrity(self, outstanding_tokens: Optional[int] = None) -> None:
        """Raise RuntimeError if the cache's bookkeeping is inconsistent.

        With `outstanding_tokens` (slots held by requests outside the cache, counted in
        whole pages), also check free + cached + outstanding == pool size.
        """
        if self.evictable_size() + self.protected_size() != self.total_size():
            raise RuntimeError(
                f"evictable {self.evictable_size()} + protected {self.protected_size()} "
                f"!= tokens in cache {self.total_size()}"
            )
        if outstanding_tokens is None:
            return
        alloc = self.token_to_kv_pool_allocator
        free, cached = alloc.available_size(), self.total_size()
        if free + cached + outstanding_tokens != alloc.size:
            raise RuntimeError(
                f"KV slot leak: free {free} + cached {cached} + in use {outstanding_tokens} "
                f"!= total {alloc.size} (difference {alloc.size - free - cached - outstanding_tokens})"
            )

    def check_idle(self) -> None:
        """The scheduler's idle check (no request holds slots or locks): raise RuntimeError
        on a slot leak (free + cached != pool size), a lock leak or broken bookkeeping."""
        self.check_integrity(outstanding_tokens=0)
        if self.protected_size() != 0:
            raise RuntimeError(f"lock leak: {self.protected_size()} tokens still locked while idle")

    # ---- shared helpers -----------------------------------------------------------
    def _floor_page(self, n: int) -> int:
        return n - n % self.page_size

    @staticmethod
    def _finished_token_ids(req: Any) -> List[int]:
        """Tokens of a finished request whose KV exists in its req_to_token row.

        Normally input + output minus the last sampled token (never fed to the model).
        Without any output (abort during chunked prefill) only fill_ids have KV.
        """
        kv_len = getattr(req, "kv_len", None)
        if kv_len is not None:  # the scheduler's Req counts its KV exactly (covers retract + chunk + abort)
            return (list(req.origin_input_ids) + list(req.output_ids))[:kv_len]
        if req.output_ids:
            return (list(req.origin_input_ids) + list(req.output_ids))[:-1]
        return list(req.fill_ids)

    def _row_slots(self, req: Any, length: int) -> torch.Tensor:
        """int64 copy of the first `length` slots of the request's req_to_token row (host copy)."""
        # numpy's astype copies a short row in half the time of torch's .to (once per prefill and finish)
        row = self.req_to_token_pool.host.numpy()[req.req_pool_idx, :length]
        return torch.from_numpy(row.astype(np.int64))

    def _empty_indices(self) -> torch.Tensor:
        return torch.empty(0, dtype=torch.int64, device=self.device)
