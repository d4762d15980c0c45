"""Admission: which waiting requests join the next step, within token budgets.

`SchedulePolicy` orders the queue (fcfs, or lpm: longest cached prefix first);
`PrefillAdder` admits requests while the KV pool (free + evictable, minus what running
requests are expected to still need) and the step's token budget allow.

Admission is optimistic, as SGLang's: a request is expected to use
min(max_new_tokens left, clip) x new_token_ratio more tokens, where the clip is
SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION (default 4096). A wrong guess is paid by retraction,
not by an idle pool; and when nothing runs, the head request is admitted whenever its
prompt fits, so a request whose estimate exceeds the pool still runs instead of waiting forever.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional

from sglserve.scheduler.schedule_batch import Req

# Expected future tokens of a request are clipped so one huge max_new_tokens cannot block admission
CLIP_ENV = "SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION"
DEFAULT_CLIP_MAX_NEW_TOKENS = 4096


def clip_max_new_tokens() -> int:
    """SGLang's variable, read when a scheduler starts; a bad value is a start-up error."""
    raw = os.environ.get(CLIP_ENV)
    if raw is None:
        return DEFAULT_CLIP_MAX_NEW_TOKENS
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(f"{CLIP_ENV}={raw!r} must be a non-negative integer (tokens)")
    return value


# Above this queue length lpm's prefix matching costs more than it saves
LPM_MAX_QUEUE = 128


class SchedulePolicy:
    def __init__(self, policy: str, tree_cache, disable_radix_cache: bool) -> None:
        if policy not in ("fcfs", "lpm"):
            raise ValueError(f"schedule policy must be fcfs or lpm, got {policy!r}")
        self.policy = policy
        self.tree_cache = tree_cache
        self.disable_radix_cache = disable_radix_cache

    def calc_priority(self, waiting: List[Req]) -> None:
        """Sorts `waiting` in place; lpm falls back to fcfs when matching would be too costly."""
        if self.policy == "fcfs" or self.disable_radix_cache or len(waiting) > LPM_MAX_QUEUE:
            return
        for r in waiting:
            r.init_next_round_input(self.tree_cache)
        waiting.sort(key=lambda r: -len(r.prefix_indices))


@dataclass
class PrefillAdder:
    tree_cache: object
    rem_total_tokens: int  # free + evictable KV minus what running requests will still need
    rem_input_tokens: int  # max_prefill_tokens budget for this batch
    rem_chunk_tokens: Optional[int]  # chunked_prefill_size budget (None: no chunking)
    page_size: int
    new_token_ratio: float
    clip: int = DEFAULT_CLIP_MAX_NEW_TOKENS
    # Nothing runs: the first request is taken if its prompt fits, whatever its estimate
    must_progress: bool = False
    can_run: List[Req] = field(default_factory=list)
    new_chunked_req: Optional[Req] = None

    def reserved_tokens(self, req: Req) -> int:
        return reserved_tokens(req, self.new_token_ratio, self.clip)

    def _take(self, req: Req, extend_len: int) -> None:
        # The matched prefix stops being evictable once locked, so it leaves the budget too
        self.rem_total_tokens += self.tree_cache.inc_lock_ref(req.last_node)
        self.rem_total_tokens -= extend_len + self.reserved_tokens(req)
        self.rem_input_tokens -= extend_len
        if self.rem_chunk_tokens is not None:
            self.rem_chunk_tokens -= extend_len
        self.can_run.append(req)

    def add_chunked_req(self, req: Req) -> Optional[Req]:
        """Continue the request being prefilled in chunks; returns it if it is still unfinished."""
        req.fill_ids = req.origin_input_ids + req.output_ids
        left = len(req.fill_ids) - len(req.prefix_indices)
        # Decode may have used KV since the last chunk: never take more than is free or evictable
        room = max(self.rem_total_tokens, 0)
        budget = min(self._chunk_budget(), room if left <= room else room // self.page_size * self.page_size)
        if budget <= 0:
            req.fill_ids = req.fill_ids[: len(req.prefix_indices)]
            req.is_chunked = True
            return req  # waits for memory; its KV stays put
        req.extend_input_len = min(left, budget)
        req.fill_ids = req.fill_ids[: len(req.prefix_indices) + req.extend_input_len]
        # Its prefix is already locked by the previous chunk
        self.rem_total_tokens -= req.extend_input_len
        self.rem_input_tokens -= req.extend_input_len
        if self.rem_chunk_tokens is not None:
            self.rem_chunk_tokens -= req.extend_input_len
        self.can_run.append(req)
        req.is_chunked = req.extend_input_len < left
        return req if req.is_chunked else None

    def _unlocked_prefix_tokens(self, req: Req) -> int:
        """Tokens of req's matched prefix now counted as evictable (locking would take them)."""
        delta = self.tree_cache.inc_lock_ref(req.last_node)
        self.tree_cache.dec_lock_ref(req.last_node)
        return -delta

    def _chunk_budget(self) -> int:
        budget = self.rem_input_tokens
        if self.rem_chunk_tokens is not None:
            budget = min(budget, self.rem_chunk_tokens)
        return budget

    def add_one_req(self, req: Req) -> bool:
        """Returns False when admission should stop here (fcfs keeps order)."""
        total_need = req.extend_input_len + self.reserved_tokens(req)
        if self.must_progress and not self.can_run:
            total_need = req.extend_input_len
        if total_need + self._unlocked_prefix_tokens(req) > self.rem_total_tokens:
            return False
        budget = self._chunk_budget()
        if req.extend_input_len <= budget:
            self._take(req, req.extend_input_len)
            req.is_chunked = False
            return True
        # Chunk: only one chunked request at a time, and only if a useful piece fits
        chunk = budget // self.page_size * self.page_size
        if chunk <= 0 or self.new_chunked_req is not None:
            return False
        req.fill_ids = req.fill_ids[: len(req.prefix_indices) + chunk]
        req.extend_input_len = chunk
        req.is_chunked = True
        self._take(req, chunk)
        self.new_chunked_req = req
        return False


def reserved_tokens(req: Req, new_token_ratio: float, clip: int) -> int:
    """KV tokens a running or admitted request is still expected to take."""
    left = max(req.max_new_tokens - len(req.output_ids), 0)
    return int(min(left, clip) * new_token_ratio)
