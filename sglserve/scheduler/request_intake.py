"""New requests into the scheduler: the checks only the scheduler can make (the KV pool's
size), logprob state, grammar compilation, then the waiting queue; and aborts."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Callable, List, Optional, Set

from sglserve.constrained.base import grammar_key
from sglserve.io_struct import TokenizedGenerateReqInput, finish_abort, finish_length
from sglserve.scheduler.logprobs import LogprobState
from sglserve.scheduler.schedule_batch import Req

if TYPE_CHECKING:
    from sglserve.scheduler.grammar_manager import GrammarManager
    from sglserve.scheduler.prefill_planner import PrefillPlanner
    from sglserve.scheduler.running_batch import RunningBatch

logger = logging.getLogger("sglserve.scheduler.scheduler")  # the loop's logger: one log stream


class RequestIntake:
    def __init__(self, context_len: int, max_total_num_tokens: int, page_size: int, eos_token_ids: Set[int],
                 disable_radix_cache: bool, planner: "PrefillPlanner", running: "RunningBatch",
                 grammar_manager: "GrammarManager", finish: Callable[[List[Req]], None]) -> None:
        self.context_len = context_len
        self.max_total_num_tokens = max_total_num_tokens
        self.page_size = page_size
        self.eos_token_ids = eos_token_ids
        self.disable_radix_cache = disable_radix_cache
        self.planner = planner
        self.running = running
        self.grammar_manager = grammar_manager
        self.finish = finish  # hands finished requests to the outbox

    def _refusal(self, n_input: int) -> Optional[str]:
        """What the HTTP side cannot know for sure: the context and the KV pool as this process sized them."""
        if n_input == 0:
            return "The input is empty."
        if n_input >= self.context_len:
            return f"The input ({n_input} tokens) is longer than the model's context length ({self.context_len} tokens)."
        if n_input > self.max_total_num_tokens - self.page_size:
            return f"The input ({n_input} tokens) is longer than the KV cache ({self.max_total_num_tokens} tokens)."
        return None

    def add(self, recv: TokenizedGenerateReqInput) -> None:
        sp = recv.sampling_params
        room = self.context_len - len(recv.input_ids)
        max_new = room if sp.max_new_tokens is None else min(sp.max_new_tokens, room)
        req = Req(recv.rid, recv.input_ids, sp, max_new, self.eos_token_ids, recv.stream, recv.input_text)
        req.http_worker = recv.http_worker
        error = self._refusal(len(recv.input_ids))
        if error is not None:
            req.finished_reason = finish_abort(error, status_code=400)
        elif max_new == 0:
            req.finished_reason = finish_length(0)
        if req.finished_reason is not None:
            self.finish([req])
            return
        if recv.return_logprob:
            req.logprobs = LogprobState.create(recv.top_logprobs_num, recv.logprob_start_len, recv.input_ids,
                                               recv.token_ids_logprob)
            req.plain = False
        req.cache_salt = recv.cache_salt
        if not self.disable_radix_cache:
            req.prefix_group = recv.prefix_group
        if grammar_key(sp) is not None:
            error = self.grammar_manager.add(req)  # waits there until its grammar is compiled
            if error is not None:
                req.finished_reason = finish_abort(error, status_code=400)
                self.finish([req])
            return
        self.planner.add(req)

    def abort(self, rid: str, tree_cache) -> None:
        """rid "" aborts everything. Waiting requests end now; running ones at their next token."""
        gone = self.grammar_manager.remove(rid) + self.planner.take(rid)
        for req in gone:
            if req.req_pool_idx is not None:  # a retracted request holds nothing, a chunked one does
                tree_cache.cache_finished_req(req, is_insert=False)
            req.finished_reason = finish_abort("Aborted by the client.")
        if gone:
            self.finish(gone)
        chunked = [self.planner.chunked_req] if self.planner.chunked_req is not None else []
        for req in self.running.reqs + chunked:
            if rid == "" or req.rid == rid:
                req.to_abort = "Aborted by the client."
