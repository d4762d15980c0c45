"""Scheduler process: continuous batching over the radix cache and the paged KV pool.

One step = one forward over a token budget (--chunked-prefill-size): the decode token of every
running request plus prefill chunks of waiting ones. Decode-only steps replay CUDA graphs and
overlap with the host; mixed steps run eagerly. The scheduler composes parts that each own
their state: PrefillPlanner (waiting queue), RunningBatch (running set, retraction),
KVAccounting (pools, prefix cache), BatchRunner (device), OutputSender (outbox), SchedulerStats.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import sys
import time
import traceback
from typing import Callable, List, Optional

import torch
import zmq

from sglserve.configs.model_config import ModelConfig
from sglserve.distributed.parallel_state import all_reduce_min
from sglserve.io_struct import (
    AbortReq,
    FlushCacheReq,
    FlushCacheReqOutput,
    GetLoadReq,
    GetLoadReqOutput,
    ReadyMsg,
    TokenizedGenerateReqInput,
    finish_abort,
    finish_stop,
)
from sglserve.model_executor.forward_batch import ForwardMode
from sglserve.model_executor.model_runner import ModelRunner
from sglserve.scheduler.batch_runner import BatchRunner
from sglserve.scheduler.kv_accounting import KVAccounting
from sglserve.scheduler.output_sender import OutputSender
from sglserve.scheduler.overlap import LaunchedBatch, all_overlap_safe, carried_rows
from sglserve.scheduler.prefill_planner import PrefillPlanner
from sglserve.scheduler.rank_input import DiscardQueue, RankInput
from sglserve.scheduler.request_intake import RequestIntake
from sglserve.scheduler.running_batch import RunningBatch
from sglserve.scheduler.schedule_batch import Req, ScheduleBatch
from sglserve.scheduler.schedule_policy import SchedulePolicy, clip_max_new_tokens
from sglserve.scheduler.stats import SchedulerStats
from sglserve.scheduler.step_trace import StepTrace
from sglserve.scheduler.text_side import start_text_side
from sglserve.port_args import PortArgs
from sglserve.server_args import ServerArgs
from sglserve.utils.jit_monitor import install_jit_monitor
from sglserve.utils.logging_utils import configure_logger
from sglserve.utils.optional_imports import transformers_without_torch
from sglserve.utils.process import (freeze_startup_objects, process_age_s, resume_gc_after_imports,
                                    setup_child_process)
from sglserve.utils.worker_routing import WorkerQueues
from sglserve.utils.zmq_queue import PullQueue, PushQueue

logger = logging.getLogger(__name__)


class Scheduler:
    def __init__(self, server_args: ServerArgs, port_args: Optional[PortArgs], tp_rank: int = 0,
                 dist_init_addr: Optional[str] = None) -> None:
        """tp_rank, dist_init_addr: with --tp-size > 1, this process's rank and where the ranks meet
        (rank_input.py: rank 0 alone talks to the other processes)."""
        self.server_args = sa = server_args
        self.tp_rank, self.tp_size = tp_rank, sa.tp_size
        t0 = time.perf_counter()
        self.model_config = ModelConfig.from_server_args(server_args)
        resume_gc_after_imports()  # the config's transformers imports were the last big ones
        logger.info("Model config read in %.2f s (%s)", time.perf_counter() - t0, self.model_config.architecture)
        text_side = start_text_side(sa, self.model_config, agree=all_reduce_min if self.tp_size > 1 else None)
        self.model_runner = mr = ModelRunner(self.model_config, server_args, tp_rank, dist_init_addr)
        text = text_side.result()
        self.tokenizer, self.eos_token_ids, self.grammar_manager = text.tokenizer, text.eos_token_ids, text.grammar_manager
        self.context_len = mr.context_len
        self.max_total_num_tokens = mr.max_total_num_tokens
        self.max_running_requests = mr.max_running_requests
        # The step's token budget: decode tokens + prefill chunks (None: unbounded)
        self.step_budget = sa.step_budget()
        clip = clip_max_new_tokens()

        self.kv = KVAccounting(mr, sa.page_size, sa.disable_radix_cache, sa.device)
        self.tree_cache = self.kv.tree_cache
        policy = SchedulePolicy(sa.schedule_policy, self.tree_cache, sa.disable_radix_cache)
        max_prefill = max(sa.max_prefill_tokens, self.step_budget or 0)
        self.planner = PrefillPlanner(self.kv, policy, max_prefill, self.max_running_requests, clip)
        self.running = RunningBatch(self.kv, clip)
        self.output_sender = OutputSender(stream_interval=sa.stream_interval)
        self.stats = SchedulerStats(self.kv, sa.decode_log_interval, sa.enable_cache_report)
        self.intake = RequestIntake(self.context_len, self.max_total_num_tokens, sa.page_size, self.eos_token_ids,
                                    sa.disable_radix_cache, self.planner, self.running, self.grammar_manager,
                                    lambda reqs: self.stream_output(reqs))
        self.batch_runner = BatchRunner(mr, self.grammar_manager, self.eos_token_ids, self.model_config.vocab_size)
        self.enable_overlap = not sa.disable_overlap_schedule
        self._pending: Optional[LaunchedBatch] = None
        self.step_trace = StepTrace(sa.step_trace_path) if sa.step_trace_path and tp_rank == 0 else None
        self._idle_checked = True

        if port_args is not None and tp_rank == 0:
            ctx = zmq.Context(2)
            self.recv_from_tokenizer = PullQueue(ctx, port_args.scheduler_input_ipc_name, bind=True)
            self.send_to_detokenizer = PushQueue(ctx, port_args.detokenizer_ipc_name)
            self.send_to_tokenizer = WorkerQueues(ctx, port_args.tokenizer_ipc_names)  # control replies
            self.output_sender.sink = self.send_to_detokenizer.put
            self.output_sender.route_workers = sa.api_server_count > 1
            self.input = RankInput(self.recv_from_tokenizer, tp_rank, self.tp_size)
        elif port_args is not None:  # another rank: its input is rank 0's broadcast, its output dropped
            self.send_to_tokenizer = DiscardQueue()
            self.input = RankInput(None, tp_rank, self.tp_size)
        logger.info(
            "max_total_num_tokens=%d, step token budget (chunked_prefill_size)=%s, max_prefill_tokens=%d, "
            "max_running_requests=%d, context_len=%d, page_size=%d, clip_max_new_tokens=%d",
            self.max_total_num_tokens, self.step_budget, max_prefill, self.max_running_requests,
            self.context_len, sa.page_size, clip,
        )

    def ready_info(self) -> dict:
        return {
            "max_total_num_tokens": self.max_total_num_tokens,
            "context_len": self.context_len,
            "vocab_size": self.model_config.vocab_size,
            "max_req_input_len": self.context_len - 1,
            "max_running_requests": self.max_running_requests,
        }

    # ---- input and control ---------------------------------------------------------------

    def event_loop(self) -> None:
        parent = os.getppid()
        while True:
            self.process_input_requests(self.recv_requests())
            if self.step():
                self._idle_checked = False
                continue
            if not self._idle_checked:
                self.check_memory_integrity()
                if self.step_trace is not None:
                    self.step_trace.flush()
                self._idle_checked = True
            if os.getppid() != parent:
                logger.error("Parent process died; scheduler exits.")
                sys.exit(1)
            self.input.wait(5 if len(self.grammar_manager) else 1000)

    def recv_requests(self) -> list:
        return self.input.recv()

    def process_input_requests(self, msgs: list) -> None:
        for msg in msgs:
            if isinstance(msg, TokenizedGenerateReqInput):
                try:
                    self.handle_generate_request(msg)
                except Exception as e:  # one bad request fails alone, the server goes on
                    logger.exception("Error admitting request %s; failing it", msg.rid)
                    self.planner.take(msg.rid)
                    self.output_sender.send_admission_failure(
                        msg, f"Internal error admitting the request: {type(e).__name__}: {e}")
            elif isinstance(msg, AbortReq):
                self.abort_request(msg.rid)
            elif isinstance(msg, FlushCacheReq):
                self.send_to_tokenizer.put(self.flush_cache(), msg.http_worker)
            elif isinstance(msg, GetLoadReq):
                self.send_to_tokenizer.put(self.get_load(), msg.http_worker)
            else:
                logger.error("Unknown message type %s", type(msg).__name__)

    def handle_generate_request(self, recv: TokenizedGenerateReqInput) -> None:
        self.intake.add(recv)

    def abort_request(self, rid: str) -> None:
        self.intake.abort(rid, self.tree_cache)

    def stream_output(self, reqs: List[Req]) -> None:
        self.output_sender.send(reqs)

    def flush_cache(self) -> FlushCacheReqOutput:
        if len(self.planner) or self.running.reqs or len(self.grammar_manager):
            return FlushCacheReqOutput(success=False, message="Cache not flushed: there are running or waiting requests.")
        self.kv.flush()
        return FlushCacheReqOutput(success=True, message="Cache flushed.")

    def get_load(self) -> GetLoadReqOutput:
        return self.stats.load(len(self.running), len(self.planner.waiting) + len(self.grammar_manager))

    def check_memory_integrity(self) -> bool:
        return self.kv.check_idle()

    # ---- one step --------------------------------------------------------------------------

    def get_next_batch_to_run(self) -> Optional[ScheduleBatch]:
        """Decode every running request; fill the rest of the step's budget with prefill chunks."""
        ready, failed = self.grammar_manager.pop_ready()
        self.planner.extend(ready)
        for req, error in failed:
            req.finished_reason = finish_abort(error, status_code=400)
        if failed:
            self.stream_output([req for req, _ in failed])
        self.running.make_room(self.planner, lambda req: self.stream_output([req]))
        decoding = self.running.reqs
        prefill: List[Req] = []
        if len(self.planner):
            budget = None
            if self.step_budget is not None:  # a quarter of it always goes to prefill: no starvation
                budget = max(self.step_budget - len(decoding), self.step_budget // 4)
            kv_room = self.kv.room() - self.kv.decode_tokens_needed(decoding) - self.running.reserved_tokens()
            prefill = self.planner.plan(budget, kv_room, len(decoding), self.running.new_token_ratio)
        if prefill:
            self.stats.on_admitted(prefill)
            self.stats.log_prefill(prefill, len(decoding), len(self.planner.waiting))
            return self.kv.new_batch(prefill + decoding, ForwardMode.EXTEND, num_decoding=len(decoding))
        if decoding:
            self.running.decay()
            return self.kv.new_batch(list(decoding), ForwardMode.DECODE)
        return None

    def step(self) -> bool:
        """One scheduling iteration; False when there was nothing to run or resolve.

        With overlap on, the next step is planned and launched while the last one still runs
        (look-ahead), whenever nothing in it needs the last step's tokens on the host: its
        decoding requests take those tokens from the device. Otherwise the last step is
        resolved first."""
        pending, self._pending = self._pending, None
        if pending is not None:
            carried = self._look_ahead_rows(pending)
            if carried is not None:
                started = time.perf_counter()
                batch = self.get_next_batch_to_run()
                if batch is not None:
                    marks = self._marks(started)
                    poll = self._resolve_when_done(pending, marks, wait_at_last=batch.forward_mode.is_extend())
                    self._pending = self._launch(batch, pending.carried_ids(carried) if carried else None, marks, poll)
                if not pending.resolved:
                    self.resolve(pending, looked_ahead=batch is not None)
                return True
            self.resolve(pending)
        started = time.perf_counter()
        batch = self.get_next_batch_to_run()
        if batch is None:
            return pending is not None
        launched = self._launch(batch, marks=self._marks(started))
        if self.enable_overlap:
            self._pending = launched
        else:
            self.resolve(launched)
        return True

    def run_and_process(self, batch: ScheduleBatch) -> None:
        self.resolve(self._launch(batch))

    def _look_ahead_rows(self, pending: LaunchedBatch) -> Optional[List[int]]:
        """For each running request, its row among the in-flight step's sampled ids; None when
        the next step must wait for that step on the host."""
        if not self.enable_overlap or len(self.grammar_manager):
            return None
        reqs = self.running.reqs
        if not reqs and not len(self.planner):
            return None
        # Per-token host state (grammar, penalties, logprobs, aborts) needs each token first
        if not all_overlap_safe(pending.batch.reqs):
            return None
        chunked = self.planner.chunked_req
        if chunked is not None and chunked.to_abort is not None:
            return None
        if self.kv.decode_tokens_needed(reqs) > self.kv.room():  # would retract: settle first
            return None
        return carried_rows(reqs, pending.sample_reqs)

    def _marks(self, started: float) -> Optional[dict]:
        """The step's first timestamps for --step-trace-path (None when off): planning began, ended."""
        return None if self.step_trace is None else {"launch": started, "planned": time.perf_counter()}

    def _resolve_when_done(self, pending: LaunchedBatch, marks: Optional[dict] = None,
                           wait_at_last: bool = False) -> Callable[[bool], None]:
        """Called between the next step's layers: the last step is resolved as soon as the device
        has finished it and, when the next step is a mixed one (wait_at_last), at the latest once
        its layers are enqueued, before its logits and sampling. The host runs ahead of the device
        until CUDA's launch queue is full; a mixed step's launch then blocked at the logits (V13's
        trace: up to 67 ms) while the last step's tokens, long finished, waited to be sent. The
        device has the next step's layers queued meanwhile, so the wait costs it nothing. Eager
        decode steps do not block there (V13), and waiting in them made the host the bottleneck
        (V13: 39 ms a step at ~840 running against 33)."""

        layer_ends = None if marks is None else marks.setdefault("layer_ends", [])

        def poll(last: bool) -> None:
            if layer_ends is not None:
                layer_ends.append(time.perf_counter())
            if not pending.resolved and ((last and wait_at_last) or pending.is_done()):
                with torch.inference_mode(False):  # the forward's mode is not the scheduler's
                    self.resolve(pending, looked_ahead=True)

        return poll

    def _launch(self, batch: ScheduleBatch, carried_ids=None, marks: Optional[dict] = None,
                between_layers: Optional[Callable[[bool], None]] = None) -> LaunchedBatch:
        """Launch, then the bookkeeping that needs no result: a chunk's KV goes into the prefix
        cache (the next chunk continues from it), and a request whose prompt is done joins the
        running set (it decodes next step, its first token taken from the device)."""
        launched = self.batch_runner.launch(batch, carried_ids, marks, between_layers)
        if marks is not None:
            launched.trace = StepTrace.at_launch(batch, marks)
        if batch.forward_mode.is_extend():
            joined = []
            for req in batch.reqs[: len(batch.reqs) - batch.num_decoding]:
                if not req.is_chunked:
                    req.fill_ids = req.origin_input_ids + req.output_ids
                    joined.append(req)
                self.tree_cache.cache_unfinished_req(req)
            self.running.join(joined)
        return launched

    def resolve(self, launched: LaunchedBatch, looked_ahead: bool = False) -> None:
        launched.resolved = True
        resolve_started = time.perf_counter()
        batch, sample_rows, next_ids = self.batch_runner.resolve(launched)
        synced = time.perf_counter()
        self.process_batch_result(batch, sample_rows, next_ids)
        if self.step_trace is not None:
            self.step_trace.record(launched, resolve_started, synced, looked_ahead)

    def process_batch_result(self, batch: ScheduleBatch, sample_rows: List[int], next_ids: List[int]) -> None:
        """Append each sampled token, settle finishes (their KV goes back to the cache) and send news."""
        reqs = batch.reqs
        sampled = reqs if len(sample_rows) == len(reqs) else [reqs[i] for i in sample_rows]
        for req, tok in zip(sampled, next_ids):
            out = req.output_ids
            out.append(tok)
            # The cheap test first: most tokens cannot finish their request
            if (tok in req.finish_token_ids or len(out) >= req.max_new_tokens or req.has_stop_strs
                    or req.to_abort is not None or req.grammar is not None):
                self._settle(req, tok)
        chunked = batch.chunked_ids
        if chunked:
            for req in reqs:
                if id(req) in chunked and req.to_abort is not None and req.finished_reason is None:
                    req.finished_reason = finish_abort(req.to_abort)
                    if self.planner.chunked_req is req:
                        self.planner.chunked_req = None
        finished = [r for r in reqs if r.finished_reason is not None]
        for req in finished:
            self.tree_cache.cache_finished_req(req, is_insert=req.finished_reason["type"] != "abort")
        if finished:
            self.running.drop_finished()
        # A chunk that is not the prompt's last has nothing to tell
        self.stream_output([r for r in reqs if id(r) not in chunked or r.finished_reason is not None] if chunked else reqs)
        self.stats.on_step(len(next_ids), len(self.running), len(self.planner.waiting))

    def _settle(self, req: Req, tok: int) -> None:
        """The full finish check of one token: grammar, stop ids and strings, length, abort."""
        try:
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


def run_scheduler_process(server_args: ServerArgs, port_args: PortArgs, ready_writer, tp_rank: int = 0,
                          dist_init_addr: Optional[str] = None) -> None:
    configure_logger(server_args, prefix=" Scheduler" + (f" TP{tp_rank}" if server_args.tp_size > 1 else ""))
    logger.info("Scheduler process started (imports done, %.1f s after the process began%s); loading the model.",
                process_age_s(), "; transformers without torch" if transformers_without_torch() else "")
    faulthandler.enable()
    setup_child_process()  # the launcher decides when we stop; no orphan if it dies
    # Counts start-up's Triton kernel variants, then names any compiled while serving (CUDA: the CPU
    # path runs no compiled Triton and need not import it)
    jit = install_jit_monitor(serving=False) if server_args.device == "cuda" else None
    try:
        scheduler = Scheduler(server_args, port_args, tp_rank, dist_init_addr)
    except Exception as e:
        logger.error("Scheduler failed to start:\n%s", traceback.format_exc())
        ready_writer.send(ReadyMsg(who="scheduler", error=f"{type(e).__name__}: {e}"))
        sys.exit(1)
    ready_writer.send(ReadyMsg(who="scheduler", info=scheduler.ready_info()))
    # After the ReadyMsg: the full collection (~0.15 s on the CPU runner) overlaps with the
    # launcher's own last steps instead of delaying them (a request arriving meanwhile waits in its socket)
    freeze_startup_objects()
    if jit is not None:
        jit.start_serving()
    try:
        scheduler.event_loop()
    except Exception:
        logger.error("Scheduler hit an exception:\n%s", traceback.format_exc())
        sys.exit(1)
