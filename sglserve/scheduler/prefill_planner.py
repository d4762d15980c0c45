"""The waiting queue, and which of its requests get prefill tokens in the next step.

A step's forward holds every running request's decode token plus prefill chunks of waiting
requests, up to the step's token budget (--chunked-prefill-size); this part picks the chunks.
At most one request is part-way through a chunked prefill (`chunked_req`); it continues first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from sglserve.scheduler.schedule_batch import Req
from sglserve.scheduler.schedule_policy import PrefillAdder, SchedulePolicy

if TYPE_CHECKING:
    from sglserve.scheduler.kv_accounting import KVAccounting


class PrefillPlanner:
    def __init__(self, kv: "KVAccounting", policy: SchedulePolicy, max_prefill_tokens: int,
                 max_running_requests: int, clip: int) -> None:
        self.kv = kv
        self.policy = policy
        self.max_prefill_tokens = max_prefill_tokens
        self.max_running_requests = max_running_requests
        self.clip = clip
        self.waiting: List[Req] = []
        self.chunked_req: Optional[Req] = None

    def __len__(self) -> int:
        return len(self.waiting) + (self.chunked_req is not None)

    def add(self, req: Req) -> None:
        self.waiting.append(req)

    def extend(self, reqs: List[Req]) -> None:
        self.waiting.extend(reqs)

    def push_front(self, req: Req) -> None:
        """A retracted request goes first: it already waited once."""
        self.waiting.insert(0, req)

    def take(self, rid: str) -> List[Req]:
        """Remove the waiting requests with this rid ("" = all) and return them."""
        gone = [r for r in self.waiting if rid == "" or r.rid == rid]
        if gone:
            self.waiting = [r for r in self.waiting if r not in gone]
        return gone

    def plan(self, token_budget: Optional[int], kv_room: int, num_running: int, new_token_ratio: float) -> List[Req]:
        """Requests (with their chunk set in extend_input_len) that prefill in the next step.

        token_budget: prefill tokens this step may hold (None: no bound); kv_room: KV tokens
        left once running requests' decode and expected growth are set aside."""
        if self.chunked_req is not None and self.chunked_req.finished_reason is not None:
            self.chunked_req = None  # aborted while its next chunk was already in flight
        if not self.waiting and self.chunked_req is None:
            return []
        if num_running >= self.max_running_requests and self.chunked_req is None:
            return []
        budget = self.max_prefill_tokens if token_budget is None else min(self.max_prefill_tokens, token_budget)
        adder = PrefillAdder(
            self.kv.tree_cache, rem_total_tokens=kv_room, rem_input_tokens=budget, rem_chunk_tokens=token_budget,
            page_size=self.kv.page_size, new_token_ratio=new_token_ratio, clip=self.clip,
            must_progress=num_running == 0,
        )
        if self.chunked_req is not None:
            self.chunked_req = adder.add_chunked_req(self.chunked_req)
        self.policy.calc_priority(self.waiting)
        # n > 1: one copy of a prompt prefills first; the others wait a round and hit its KV
        busy_groups = {r.prefix_group for r in adder.can_run if r.prefix_group is not None}
        taken = set()
        rows_free = self.kv.req_to_token_pool.available_size()
        for req in self.waiting:
            if self.chunked_req is not None or adder.new_chunked_req is not None:
                break
            if req.prefix_group is not None and req.prefix_group in busy_groups:
                continue
            if num_running + len(adder.can_run) >= self.max_running_requests or rows_free <= len(adder.can_run):
                break
            req.init_next_round_input(self.kv.tree_cache)
            if not adder.add_one_req(req):
                if adder.new_chunked_req is req:
                    taken.add(id(req))
                break
            taken.add(id(req))
            if req.prefix_group is not None and len(req.prefix_indices) + self.kv.page_size < len(req.origin_input_ids) - 1:
                busy_groups.add(req.prefix_group)  # it computes the prompt: its group waits for its KV
        if taken:
            self.waiting = [r for r in self.waiting if id(r) not in taken]
        if adder.new_chunked_req is not None:
            self.chunked_req = adder.new_chunked_req
        return adder.can_run
