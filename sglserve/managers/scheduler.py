"""Scheduler process: continuous batching over the radix cache and the paged KV pool.

One loop: drain requests from the HTTP process, pick a prefill batch if admission allows
(else decode the running set), run it, sample, and send new tokens to the detokenizer.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch
import zmq

from sglserve.configs.model_config import ModelConfig
from sglserve.managers.io_struct import (
    AbortReq,
    BatchTokenIDOut,
    FlushCacheReq,
    FlushCacheReqOutput,
    GetLoadReq,
    GetLoadReqOutput,
    ReadyMsg,
    TokenizedGenerateReqInput,
    finish_abort,
    finish_stop,
)
from sglserve.managers import logprobs
from sglserve.managers.grammar_manager import GrammarManager
from sglserve.managers.logprobs import LogprobState
from sglserve.managers.overlap import LaunchedBatch, overlap_safe, same_reqs
from sglserve.managers.schedule_batch import Req, ScheduleBatch
from sglserve.managers.schedule_policy import PrefillAdder, SchedulePolicy
from sglserve.mem_cache.chunk_cache import ChunkCache
from sglserve.mem_cache.radix_cache import RadixCache
from sglserve.model_executor.forward_batch import ForwardMode
from sglserve.model_executor.model_runner import ModelRunner
from sglserve.sampling.penalties import build_logit_adjust
from sglserve.server_args import PortArgs, ServerArgs
from sglserve.utils.hf_transformers_utils import get_tokenizer
from sglserve.utils.logging_utils import configure_logger
from sglserve.utils.process import setup_child_process

logger = logging.getLogger(__name__)

INIT_NEW_TOKEN_RATIO = 0.7
MIN_NEW_TOKEN_RATIO = 0.1
NEW_TOKEN_RATIO_DECAY = 0.001


class Scheduler:
    def __init__(self, server_args: ServerArgs, port_args: Optional[PortArgs]) -> None:
        self.server_args = server_args
        self.model_config = ModelConfig.from_server_args(server_args)
        self.tokenizer = None if server_args.skip_tokenizer_init else get_tokenizer(server_args.tokenizer_path)
        self.eos_token_ids = self._eos_token_ids()
        self.model_runner = ModelRunner(self.model_config, server_args)
        mr = self.model_runner
        self.max_total_num_tokens = mr.max_total_num_tokens
        self.context_len = mr.context_len
        self.max_running_requests = mr.max_running_requests
        self.page_size = server_args.page_size
        cache_cls = ChunkCache if server_args.disable_radix_cache else RadixCache
        self.tree_cache = cache_cls(mr.req_to_token_pool, mr.allocator, self.page_size)
        self.policy = SchedulePolicy(server_args.schedule_policy, self.tree_cache, server_args.disable_radix_cache)
        self.chunked_prefill_size = None if server_args.chunked_prefill_size == -1 else server_args.chunked_prefill_size
        self.max_prefill_tokens = max(server_args.max_prefill_tokens, self.chunked_prefill_size or 0)

        self.waiting_queue: List[Req] = []
        self.enable_overlap = not server_args.disable_overlap_schedule
        self._last_was_prefill = False
        self._pending: Optional[LaunchedBatch] = None
        self.grammar_manager = GrammarManager(
            self.tokenizer, self.model_config.vocab_size, self.eos_token_ids, server_args.grammar_backend
        )
        self.running: List[Req] = []
        self.chunked_req: Optional[Req] = None
        self.new_token_ratio = INIT_NEW_TOKEN_RATIO
        self.forward_ct = 0
        self.num_generated_tokens = 0
        self.last_decode_log = time.perf_counter()
        self.total_prompt_tokens = 0
        self.total_cached_tokens = 0
        self._idle_checked = True

        # Where BatchTokenIDOut goes: the detokenizer socket, or an in-process sink (Engine)
        self.output_sink: Optional[Callable[[BatchTokenIDOut], None]] = None
        if port_args is not None:
            ctx = zmq.Context(2)
            self.recv_from_tokenizer = ctx.socket(zmq.PULL)
            self.recv_from_tokenizer.bind(port_args.scheduler_input_ipc_name)
            self.send_to_detokenizer = ctx.socket(zmq.PUSH)
            self.send_to_detokenizer.connect(port_args.detokenizer_ipc_name)
            self.send_to_tokenizer = ctx.socket(zmq.PUSH)
            self.send_to_tokenizer.connect(port_args.tokenizer_ipc_name)
            self.output_sink = self.send_to_detokenizer.send_pyobj
        logger.info(
            "max_total_num_tokens=%d, chunked_prefill_size=%s, max_prefill_tokens=%d, max_running_requests=%d, "
            "context_len=%d, page_size=%d",
            self.max_total_num_tokens, self.chunked_prefill_size, self.max_prefill_tokens,
            self.max_running_requests, self.context_len, self.page_size,
        )

    def _eos_token_ids(self) -> set:
        ids = set()
        eos = getattr(self.model_config.hf_config, "eos_token_id", None)
        ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        if self.tokenizer is not None and self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        try:
            from transformers import GenerationConfig

            gen = GenerationConfig.from_pretrained(self.server_args.model_path)
            eos = gen.eos_token_id
            ids.update(eos if isinstance(eos, (list, tuple)) else [eos])
        except Exception:  # no generation_config.json (GGUF, dummy)
            pass
        ids.discard(None)
        return ids

    def ready_info(self) -> dict:
        return {
            "max_total_num_tokens": self.max_total_num_tokens,
            "context_len": self.context_len,
            "vocab_size": self.model_config.vocab_size,
            "max_req_input_len": self.context_len - 1,
            "max_running_requests": self.max_running_requests,
        }

    # ---- event loop --------------------------------------------------------------------

    def event_loop(self) -> None:
        parent = os.getppid()
        while True:
            self.process_input_requests(self.recv_requests())
            if self.step():
                self._idle_checked = False
                continue
            if not self._idle_checked:
                self.check_memory_integrity()
                self._idle_checked = True
            if os.getppid() != parent:
                logger.error("Parent process died; scheduler exits.")
                sys.exit(1)
            self.recv_from_tokenizer.poll(timeout=5 if len(self.grammar_manager) else 1000)

    def recv_requests(self) -> list:
        msgs = []
        while True:
            try:
                msgs.append(self.recv_from_tokenizer.recv_pyobj(zmq.NOBLOCK))
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
                self.send_to_tokenizer.send_pyobj(self.flush_cache())
            elif isinstance(msg, GetLoadReq):
                self.send_to_tokenizer.send_pyobj(self.get_load())
            else:
                logger.error("Unknown message type %s", type(msg).__name__)

    def fail_new_request(self, recv: TokenizedGenerateReqInput, e: Exception) -> None:
        logger.exception("Error admitting request %s; failing it", recv.rid)
        self.waiting_queue = [r for r in self.waiting_queue if r.rid != recv.rid]
        reason = finish_abort(f"Internal error admitting the request: {type(e).__name__}: {e}", status_code=500)
        if self.output_sink is not None:
            self.output_sink(BatchTokenIDOut([recv.rid], [reason], [[]], [True], [True], [False],
                                             [len(recv.input_ids)], [0], [0], stop_strs=[[]]))

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
            from sglserve.managers.io_struct import finish_length

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

    # ---- batch selection -----------------------------------------------------------------

    def move_ready_grammar_requests(self) -> None:
        ready, failed = self.grammar_manager.pop_ready()
        self.waiting_queue.extend(ready)
        for req, error in failed:
            req.finished_reason = finish_abort(error, status_code=400)
            self.stream_output([req])

    def get_next_batch_to_run(self) -> Optional[ScheduleBatch]:
        self.move_ready_grammar_requests()
        # After a prefill, running requests decode once before the next prefill: a burst of
        # arrivals then delays each decoding request by one prefill batch, not by all of them
        if not (self.running and self._last_was_prefill):
            prefill = self.get_new_batch_prefill()
            if prefill is not None:
                self._last_was_prefill = True
                return prefill
        self._last_was_prefill = False
        if self.running:
            return self.update_running_batch()
        return None

    def _new_batch(self, reqs: List[Req], mode: ForwardMode) -> ScheduleBatch:
        mr = self.model_runner
        return ScheduleBatch(reqs, mode, mr.req_to_token_pool, mr.allocator, self.tree_cache, self.server_args.device)

    def get_new_batch_prefill(self) -> Optional[ScheduleBatch]:
        if not self.waiting_queue and self.chunked_req is None:
            return None
        running_bs = len(self.running)
        if running_bs >= self.max_running_requests and self.chunked_req is None:
            return None
        reserved = sum(PrefillAdder.reserved_tokens(r, self.new_token_ratio) for r in self.running)
        adder = PrefillAdder(
            self.tree_cache,
            rem_total_tokens=self.model_runner.allocator.available_size() + self.tree_cache.evictable_size() - reserved,
            rem_input_tokens=self.max_prefill_tokens,
            rem_chunk_tokens=self.chunked_prefill_size,
            page_size=self.page_size,
            new_token_ratio=self.new_token_ratio,
        )
        if self.chunked_req is not None:
            self.chunked_req = adder.add_chunked_req(self.chunked_req)
        self.policy.calc_priority(self.waiting_queue)
        # n > 1: one copy of a prompt prefills first; the others wait a round and hit its KV
        busy_groups = {r.prefix_group for r in adder.can_run if r.prefix_group is not None}
        for req in list(self.waiting_queue):
            if self.chunked_req is not None or adder.new_chunked_req is not None:
                break
            if req.prefix_group is not None and req.prefix_group in busy_groups:
                continue
            if running_bs + len(adder.can_run) >= self.max_running_requests:
                break
            if self.model_runner.req_to_token_pool.available_size() <= len(adder.can_run):
                break
            req.init_next_round_input(self.tree_cache)
            if not adder.add_one_req(req):
                if adder.new_chunked_req is req:
                    self.waiting_queue.remove(req)
                break
            self.waiting_queue.remove(req)
            if req.prefix_group is not None and len(req.prefix_indices) + self.page_size < len(req.origin_input_ids) - 1:
                busy_groups.add(req.prefix_group)  # it computes the prompt: its group waits for its KV
        if adder.new_chunked_req is not None:
            self.chunked_req = adder.new_chunked_req
        if not adder.can_run:
            return None
        for req in adder.can_run:
            if req._first_admission:
                req.cached_tokens = len(req.prefix_indices)
                req._first_admission = False
                self.total_prompt_tokens += len(req.origin_input_ids)
                self.total_cached_tokens += req.cached_tokens
        self.log_prefill_stats(adder.can_run)
        return self._new_batch(adder.can_run, ForwardMode.EXTEND)

    def update_running_batch(self) -> Optional[ScheduleBatch]:
        """Decode the running set; retract the newest requests if the KV pool cannot fit a step."""
        batch = self._new_batch(self.running, ForwardMode.DECODE)
        while batch.decode_tokens_needed() > self.model_runner.allocator.available_size() + self.tree_cache.evictable_size():
            if len(self.running) == 1:
                req = self.running.pop()
                req.finished_reason = finish_abort(
                    f"The request needs more KV cache than the server has ({self.max_total_num_tokens} tokens).", 400
                )
                self.tree_cache.cache_finished_req(req, is_insert=False)
                self.stream_output([req])
                return None
            victim = max(self.running, key=lambda r: r.arrival_time)
            self.running.remove(victim)
            self.tree_cache.cache_finished_req(victim)
            victim.reset_for_retract()
            self.waiting_queue.insert(0, victim)
            self.new_token_ratio = INIT_NEW_TOKEN_RATIO
            logger.warning("KV cache is full: retracted request %s (%d running left).", victim.rid, len(self.running))
            batch = self._new_batch(self.running, ForwardMode.DECODE)
        self.new_token_ratio = max(self.new_token_ratio - NEW_TOKEN_RATIO_DECAY, MIN_NEW_TOKEN_RATIO)
        return batch

    # ---- running a batch ------------------------------------------------------------------

    def run_and_process(self, batch: ScheduleBatch) -> None:
        self.resolve(self.launch(batch))

    def step(self) -> bool:
        """One scheduling iteration; False when there was nothing to run or resolve."""
        pending, self._pending = self._pending, None
        if pending is not None and self._can_overlap(pending):
            self.new_token_ratio = max(self.new_token_ratio - NEW_TOKEN_RATIO_DECAY, MIN_NEW_TOKEN_RATIO)
            self._pending = self.launch(self._new_batch(self.running, ForwardMode.DECODE), pending.next_ids)
            self.resolve(pending)
            return True
        if pending is not None:
            self.resolve(pending)
        batch = self.get_next_batch_to_run()
        if batch is None:
            return pending is not None
        launched = self.launch(batch)
        if self.enable_overlap and batch.forward_mode.is_decode():
            self._pending = launched
        else:
            self.resolve(launched)
        return True

    def _can_overlap(self, pending: LaunchedBatch) -> bool:
        if not pending.batch.forward_mode.is_decode() or self.waiting_queue or self.chunked_req is not None:
            return False
        if len(self.grammar_manager) or not same_reqs(self.running, pending.batch.reqs):
            return False
        if not all(overlap_safe(r) for r in self.running):
            return False
        batch = self._new_batch(self.running, ForwardMode.DECODE)
        return batch.decode_tokens_needed() <= self.model_runner.allocator.available_size()

    def launch(self, batch: ScheduleBatch, input_ids: Optional[torch.Tensor] = None) -> LaunchedBatch:
        """Prepare, forward and sample on the device; nothing waits for the device here."""
        reqs = batch.reqs
        if batch.forward_mode.is_extend():
            batch.return_all_logits = logprobs.wants_input_logprobs(reqs)
            fb = batch.prepare_for_extend()
            sample_rows = [i for i, r in enumerate(reqs) if not r.is_chunked]
        else:
            fb = batch.prepare_for_decode()
            sample_rows = list(range(len(reqs)))
        if input_ids is not None:  # overlapped decode: last step's ids, still on the device
            fb.input_ids = input_ids
        sample_reqs = [reqs[i] for i in sample_rows]
        sampling_info = self.model_runner.make_sampling_info(
            [r.sampling_params for r in sample_reqs], [len(r.output_ids) for r in sample_reqs]
        )
        self.add_sampling_extras(sample_reqs, sampling_info)
        out = self.model_runner.forward(fb)
        logits = out.next_token_logits
        if len(sample_rows) != len(reqs):
            logits = logits[torch.tensor(sample_rows, dtype=torch.long, device=logits.device)]
        logprob_state = logprobs.output_logprobs_begin(sample_reqs, logits) if sample_rows else None
        next_ids = self.model_runner.sample(logits, sampling_info) if sample_rows else None
        self.forward_ct += 1
        return LaunchedBatch.start_copy(next_ids, batch=batch, sample_rows=sample_rows, sample_reqs=sample_reqs,
                                        logprob_state=logprob_state, out=out)

    def resolve(self, launched: LaunchedBatch) -> None:
        """Read the sampled ids (the one host sync per step) and process them."""
        next_ids = launched.host_token_ids()
        batch, sample_rows, sample_reqs = launched.batch, launched.sample_rows, launched.sample_reqs
        logprobs.output_logprobs_end(sample_reqs, launched.logprob_state, next_ids)
        if batch.return_all_logits:
            logprobs.record_input_logprobs(batch.reqs, batch.prefix_lens, batch.seq_lens, launched.out.all_logits)
        if any(r.finished() for r in batch.reqs):
            # Overlap ran these one step past their finish: drop that step for them
            keep = [i for i, r in enumerate(batch.reqs) if not r.finished()]
            pos = {i: k for k, i in enumerate(sample_rows)}
            next_ids = [next_ids[pos[i]] for i in keep if i in pos]
            sample_rows = [j for j, i in enumerate(keep) if i in pos]
            batch.reqs = [batch.reqs[i] for i in keep]
        self.process_batch_result(batch, sample_rows, next_ids)

    def add_sampling_extras(self, reqs: List[Req], info) -> None:
        """Penalties / logit_bias / min_tokens and grammar masks for the rows that need them."""
        if not reqs:
            return
        device = self.model_runner.device
        info.adjust = build_logit_adjust(
            [r.sampling_params for r in reqs], [r.origin_input_ids for r in reqs], [r.output_ids for r in reqs],
            self.eos_token_ids, self.model_config.vocab_size, device,
        )
        info.vocab_mask = self.grammar_manager.vocab_mask(reqs, device)

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
        out = BatchTokenIDOut([], [], [], [], [], [], [], [], [])
        news = []  # per request: new logprob entries (output, output_top, input, input_top)
        for req in reqs:
            if not req.finished() and not req.stream:
                continue
            sp = req.sampling_params
            out.rids.append(req.rid)
            out.finished_reasons.append(req.finished_reason)
            out.decode_ids.append(req.output_ids[req.sent_len:])
            req.sent_len = len(req.output_ids)
            out.skip_special_tokens.append(sp.skip_special_tokens)
            out.spaces_between_special_tokens.append(sp.spaces_between_special_tokens)
            out.no_stop_trim.append(sp.no_stop_trim)
            out.prompt_tokens.append(len(req.origin_input_ids))
            out.completion_tokens.append(len(req.output_ids))
            out.cached_tokens.append(req.cached_tokens)
            if hasattr(out, "stop_strs"):
                out.stop_strs.append(list(sp.stop_strs))
            news.append(logprobs.take_new(req))
        if any(n[0] is not None for n in news):
            out.output_token_logprobs, out.output_top_logprobs, out.input_token_logprobs, out.input_top_logprobs = (
                [list(col) for col in zip(*news)]
            )
        if out.rids and self.output_sink is not None:
            self.output_sink(out)

    # ---- control ------------------------------------------------------------------------

    def flush_cache(self) -> FlushCacheReqOutput:
        if self.waiting_queue or self.running or self.chunked_req is not None or len(self.grammar_manager):
            return FlushCacheReqOutput(False, "Cache not flushed: there are running or waiting requests.")
        self.tree_cache.reset()
        self.model_runner.req_to_token_pool.clear()
        self.model_runner.allocator.clear()
        return FlushCacheReqOutput(True, "Cache flushed.")

    def token_usage(self) -> Dict[str, int]:
        available = self.model_runner.allocator.available_size()
        evictable = self.tree_cache.evictable_size()
        return {"available": available, "evictable": evictable,
                "used": self.max_total_num_tokens - available - evictable}

    def get_load(self) -> GetLoadReqOutput:
        u = self.token_usage()
        rate = self.total_cached_tokens / self.total_prompt_tokens if self.total_prompt_tokens else 0.0
        return GetLoadReqOutput(self.max_total_num_tokens, u["available"], u["evictable"], u["used"],
                                len(self.running), len(self.waiting_queue) + len(self.grammar_manager), rate)

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


def run_scheduler_process(server_args: ServerArgs, port_args: PortArgs, ready_writer) -> None:
    configure_logger(server_args, prefix=" Scheduler")
    logger.info("Scheduler process started (imports done); loading the model.")
    faulthandler.enable()
    setup_child_process()  # the launcher decides when we stop; no orphan if it dies
    try:
        scheduler = Scheduler(server_args, port_args)
    except Exception as e:
        logger.error("Scheduler failed to start:\n%s", traceback.format_exc())
        ready_writer.send(ReadyMsg("scheduler", error=f"{type(e).__name__}: {e}"))
        sys.exit(1)
    ready_writer.send(ReadyMsg("scheduler", scheduler.ready_info()))
    try:
        scheduler.event_loop()
    except Exception:
        logger.error("Scheduler hit an exception:\n%s", traceback.format_exc())
        sys.exit(1)
