"""The running requests: who decodes this step, how much KV they are expected to still take,
and retraction when the pool cannot hold one more token for each of them."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, List

from sglserve.io_struct import finish_abort
from sglserve.scheduler.schedule_batch import Req
from sglserve.scheduler.schedule_policy import reserved_tokens

if TYPE_CHECKING:
    from sglserve.scheduler.kv_accounting import KVAccounting
    from sglserve.scheduler.prefill_planner import PrefillPlanner

logger = logging.getLogger(__name__)

# The expected share of a request's remaining max_new_tokens it will really use: starts
# cautious, decays while decoding goes well, resets on a retraction (SGLang's new_token_ratio)
INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = 0.001


class RunningBatch:
    def __init__(self, kv: "KVAccounting", clip: int) -> None:
        self.kv = kv
        self.clip = clip
        self.reqs: List[Req] = []
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO

    def __len__(self) -> int:
        return len(self.reqs)

    def reserved_tokens(self) -> int:
        ratio, clip = self.new_token_ratio, self.clip
        return sum(reserved_tokens(r, ratio, clip) for r in self.reqs)

    def decay(self) -> None:
        self.new_token_ratio = max(self.new_token_ratio - NEW_TOKEN_RATIO_DECAY, MIN_NEW_TOKEN_RATIO)

    def make_room(self, planner: "PrefillPlanner", fail: Callable[[Req], None]) -> None:
        """Retract the newest requests until one more token of each fits; their progress stays
        in the prefix cache and they wait first in line. A lone request that cannot fit fails."""
        while self.reqs and self.kv.decode_tokens_needed(self.reqs) > self.kv.room():
            if len(self.reqs) == 1:
                req = self.reqs.pop()
                req.finished_reason = finish_abort(
                    f"The request needs more KV cache than the server has ({self.kv.max_total_num_tokens} tokens).", 400
                )
                self.kv.tree_cache.cache_finished_req(req, is_insert=False)
                fail(req)
                return
            victim = max(self.reqs, key=lambda r: r.arrival_time)
            self.reqs.remove(victim)
            self.kv.tree_cache.cache_finished_req(victim)
            victim.reset_for_retract()
            planner.push_front(victim)
            self.new_token_ratio = INIT_NEW_TOKEN_RATIO
            logger.warning("KV cache is full: retracted request %s (%d running left).", victim.rid, len(self.reqs))

    def join(self, reqs: List[Req]) -> None:
        """Requests whose prompt is computed by the step just launched: they decode from the next."""
        if reqs:
            self.reqs = self.reqs + reqs

    def drop_finished(self) -> None:
        self.reqs = [r for r in self.reqs if r.finished_reason is None]
