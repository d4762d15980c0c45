"""The scheduler's input side: drain messages from the HTTP process, admit or reject new
requests (length checks, grammars, logprob state), aborts, and control messages.
A mixin of Scheduler (scheduler.py keeps the batching loop)."""

from __future__ import annotations

import logging

import zmq

from sglserve.io_struct import (
    AbortReq,
    FlushCacheReq,
    GetLoadReq,
    TokenizedGenerateReqInput,
    finish_abort,
    finish_length,
)
from sglserve.scheduler.logprobs import LogprobState
from sglserve.scheduler.schedule_batch import Req

logger = logging.getLogger("sglserve.scheduler.scheduler")  # same logger name as the loop: one log stream


class SchedulerInputMixin:
    def recv_requests(self) -> list:
        msgs = []
        while True:
            try:
                msgs.append(self.recv_from_tokenizer.get(block=False))
            except zmq.ZMQError:
                return msgs

    def process_input_requests(self, msgs: list) -> None:
        for msg in msgs:
            if isinstance(msg, TokenizedGenerateReqInput):
                try:
                    self.handle_generate_request(msg)
                except Exception as e:  # one bad request fails alone, the server goes on
                    self.fail_new_request(msg, e)
            elif isinstance(msg, AbortReq):
                self.abort_request(msg.rid)
            elif isinstance(msg, FlushCacheReq):
                self.send_to_tokenizer.put(self.flush_cache())
            elif isinstance(msg, GetLoadReq):
                self.send_to_tokenizer.put(self.get_load())
            else:
                logger.error("Unknown message type %s", type(msg).__name__)

    def fail_new_request(self, recv: TokenizedGenerateReqInput, e: Exception) -> None:
        logger.exception("Error admitting request %s; failing it", recv.rid)
        self.waiting_queue = [r for r in self.waiting_queue if r.rid != recv.rid]
        self.output_sender.send_admission_failure(recv, f"Internal error admitting the request: {type(e).__name__}: {e}")

    def handle_generate_request(self, recv: TokenizedGenerateReqInput) -> None:
        sp = recv.sampling_params
        room = self.context_len - len(recv.input_ids)
        max_new = room if sp.max_new_tokens is None else min(sp.max_new_tokens, room)
        req = Req(recv.rid, recv.input_ids, sp, max_new, self.eos_token_ids, recv.stream, recv.input_text)
        error = None
        if len(recv.input_ids) == 0:
            error = "The input is empty."
        elif len(recv.input_ids) >= self.context_len:
            error = f"The input ({len(recv.input_ids)} tokens) is longer than the model's context length ({self.context_len} tokens)."
        elif len(recv.input_ids) > self.max_total_num_tokens - self.page_size:
            error = f"The input ({len(recv.input_ids)} tokens) is longer than the KV cache ({self.max_total_num_tokens} tokens)."
        if error is not None:
            req.finished_reason = finish_abort(error, status_code=400)
            self.stream_output([req])
            return
        if max_new == 0:
            req.finished_reason = finish_length(0)
            self.stream_output([req])
            return
        if recv.return_logprob:
            req.logprobs = LogprobState.create(recv.top_logprobs_num, recv.logprob_start_len, recv.input_ids)
        if not self.server_args.disable_radix_cache:
            req.prefix_group = recv.prefix_group
        if sp.json_schema is not None or sp.regex is not None or sp.ebnf is not None:
            error = self.grammar_manager.add(req)  # waits there until its grammar is compiled
            if error is not None:
                req.finished_reason = finish_abort(error, status_code=400)
                self.stream_output([req])
            return
        self.waiting_queue.append(req)

    def abort_request(self, rid: str) -> None:
        for req in self.grammar_manager.remove(rid):
            req.finished_reason = finish_abort("Aborted by the client.")
            self.stream_output([req])
        for req in list(self.waiting_queue):
            if rid == "" or req.rid == rid:
                self.waiting_queue.remove(req)
                if req.req_pool_idx is not None:  # a retracted request holds nothing, a chunked one does
                    self.tree_cache.cache_finished_req(req, is_insert=False)
                req.finished_reason = finish_abort("Aborted by the client.")
                self.stream_output([req])
        for req in self.running + ([self.chunked_req] if self.chunked_req else []):
            if rid == "" or req.rid == rid:
                req.to_abort = "Aborted by the client."
