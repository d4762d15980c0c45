"""The scheduler's output side: append sampled tokens, check finish (stop, length, grammar),
hand finished and unfinished requests to the prefix cache, and send new tokens to the detokenizer.
A mixin of Scheduler (scheduler.py keeps the batching loop)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, List

from sglserve.io_struct import finish_abort, finish_stop

if TYPE_CHECKING:
    from sglserve.scheduler.schedule_batch import Req, ScheduleBatch

logger = logging.getLogger("sglserve.scheduler.scheduler")  # same logger name as the loop: one log stream


class SchedulerOutputMixin:
    def process_batch_result(self, batch: ScheduleBatch, sample_rows: List[int], next_ids: List[int]) -> None:
        is_extend = batch.forward_mode.is_extend()
        for i, tok in zip(sample_rows, next_ids):
            req = batch.reqs[i]
            try:
                req.output_ids.append(tok)
                if req.grammar is not None:
                    error = self.grammar_manager.accept(req, tok)
                    if error is not None:  # the mask allowed nothing: the constraint cannot be met
                        req.finished_reason = finish_abort(error, status_code=400)
                    elif req.grammar.is_terminated():  # the grammar accepted a stop token
                        req.finished_reason = finish_stop(tok)
                req.check_finished(self.tokenizer, self.context_len)
            except Exception as e:  # a bug with one request fails that request only
                logger.exception("Error processing the output of request %s; failing it", req.rid)
                req.finished_reason = finish_abort(f"Internal error: {type(e).__name__}: {e}", status_code=500)
        self.num_generated_tokens += len(next_ids)
        finished, still_running = [], []
        for req in batch.reqs:
            if req.is_chunked:
                if req.to_abort is not None:
                    req.finished_reason = finish_abort(req.to_abort)
                    self.tree_cache.cache_finished_req(req, is_insert=False)
                    self.chunked_req = None
                    finished.append(req)
                else:
                    self.tree_cache.cache_unfinished_req(req)
                continue
            if req.finished():
                self.tree_cache.cache_finished_req(req, is_insert=req.finished_reason["type"] != "abort")
                finished.append(req)
            else:
                if is_extend:
                    # Let later requests hit this prompt while it decodes
                    req.fill_ids = req.origin_input_ids + req.output_ids[:-1]
                    self.tree_cache.cache_unfinished_req(req)
                still_running.append(req)
        if is_extend:
            self.running.extend(still_running)
        else:
            self.running = still_running
        self.stream_output([r for r in batch.reqs if not r.is_chunked or r.finished()])
        if not is_extend:
            self.log_decode_stats()

    def stream_output(self, reqs: List[Req]) -> None:
        self.output_sender.send(reqs)
