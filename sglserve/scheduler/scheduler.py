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
from typing import List, Optional, Tuple

import torch
import zmq

from sglserve.configs.model_config import ModelConfig
from sglserve.io_struct import ReadyMsg, finish_abort
from sglserve.scheduler import logprobs
from sglserve.scheduler.grammar_manager import GrammarManager
from sglserve.scheduler.output_sender import OutputSender
from sglserve.utils.zmq_queue import PullQueue, PushQueue
from sglserve.scheduler.overlap import LaunchedBatch, overlap_safe, same_reqs
from sglserve.scheduler.schedule_batch import Req, ScheduleBatch
from sglserve.scheduler.scheduler_control import SchedulerControlMixin
from sglserve.scheduler.scheduler_input import SchedulerInputMixin
from sglserve.scheduler.scheduler_output import SchedulerOutputMixin
from sglserve.scheduler.schedule_policy import PrefillAdder, SchedulePolicy
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


class Scheduler(SchedulerInputMixin, SchedulerOutputMixin, SchedulerControlMixin):
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
        bound = server_args.max_prefill_tokens_while_decoding
        self.max_prefill_tokens_while_decoding = None if bound in (None, -1) else bound

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

        self.output_sender = OutputSender(stream_interval=server_args.stream_interval)
        if port_args is not None:
            ctx = zmq.Context(2)
            self.recv_from_tokenizer = PullQueue(ctx, port_args.scheduler_input_ipc_name, bind=True)
            self.send_to_detokenizer = PushQueue(ctx, port_args.detokenizer_ipc_name)
            self.send_to_tokenizer = PushQueue(ctx, port_args.tokenizer_ipc_name)
            self.output_sender.sink = self.send_to_detokenizer.put
        logger.info(
            "max_total_num_tokens=%d, chunked_prefill_size=%s, max_prefill_tokens=%d, "
            "max_prefill_tokens_while_decoding=%s, max_running_requests=%d, context_len=%d, page_size=%d",
            self.max_total_num_tokens, self.chunked_prefill_size, self.max_prefill_tokens,
            self.max_prefill_tokens_while_decoding,
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

    def prefill_budgets(self, decoding: bool) -> Tuple[int, Optional[int]]:
        """(max new tokens, chunk size) of the next prefill batch. While requests decode, both are
        bounded by --max-prefill-tokens-while-decoding: a decoding request waits for one prefill
        batch between two of its tokens (prefill and decode alternate), so this bound is what
        caps its inter-token latency; from idle the full sizes apply (nobody waits on a token)."""
        bound = self.max_prefill_tokens_while_decoding
        if not decoding or bound is None or self.chunked_prefill_size is None:  # chunking off: no bound
            return self.max_prefill_tokens, self.chunked_prefill_size
        return min(self.max_prefill_tokens, bound), min(self.chunked_prefill_size, bound)

    def get_new_batch_prefill(self) -> Optional[ScheduleBatch]:
        if not self.waiting_queue and self.chunked_req is None:
            return None
        running_bs = len(self.running)
        if running_bs >= self.max_running_requests and self.chunked_req is None:
            return None
        reserved = sum(PrefillAdder.reserved_tokens(r, self.new_token_ratio) for r in self.running)
        input_budget, chunk_budget = self.prefill_budgets(running_bs > 0)
        adder = PrefillAdder(
            self.tree_cache,
            rem_total_tokens=self.model_runner.allocator.available_size() + self.tree_cache.evictable_size() - reserved,
            rem_input_tokens=input_budget,
            rem_chunk_tokens=chunk_budget,
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


def run_scheduler_process(server_args: ServerArgs, port_args: PortArgs, ready_writer) -> None:
    configure_logger(server_args, prefix=" Scheduler")
    logger.info("Scheduler process started (imports done); loading the model.")
    faulthandler.enable()
    setup_child_process()  # the launcher decides when we stop; no orphan if it dies
    try:
        scheduler = Scheduler(server_args, port_args)
    except Exception as e:
        logger.error("Scheduler failed to start:\n%s", traceback.format_exc())
        ready_writer.send(ReadyMsg(who="scheduler", error=f"{type(e).__name__}: {e}"))
        sys.exit(1)
    ready_writer.send(ReadyMsg(who="scheduler", info=scheduler.ready_info()))
    try:
        scheduler.event_loop()
    except Exception:
        logger.error("Scheduler hit an exception:\n%s", traceback.format_exc())
        sys.exit(1)
