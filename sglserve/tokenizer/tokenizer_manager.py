"""TokenizerManager: the HTTP process's side of the pipeline.

Validates requests (InputProcessor), tokenizes them off the event loop (BatchEncoder), sends
them to the scheduler, and routes the detokenizer's BatchStrOut messages to per-request state
that `generate_request`'s generator awaits.
A client that goes away (disconnect or cancellation) gets its request aborted so the
scheduler frees its KV. Control calls (flush_cache, get_load) time out rather than hang.

Limits (docs/reliability.md): at most max_running_requests + --max-queued-requests sequences
in flight (more: 503 with Retry-After, decided before any tokenization); --request-timeout
aborts a request that runs too long (408). A slow stream reader costs bounded memory: the
state holds the cumulative output and a dirty flag, never a queue of messages.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import weakref
from typing import Any, AsyncIterator, Deque, Dict, List, Optional

import zmq
import zmq.asyncio

from sglserve.io_struct import (
    AbortReq,
    BatchStrOut,
    FlushCacheReq,
    FlushCacheReqOutput,
    GenerateReqInput,
    GetLoadReq,
    GetLoadReqOutput,
    TokenizedGenerateReqInput,
    finish_abort,
)
from sglserve.tokenizer.logprob_output import LogprobAccumulator
from sglserve.tokenizer.admission import AdmissionControl, Ticket
from sglserve.tokenizer.batch_encoder import BatchEncoder
from sglserve.tokenizer.input_processor import InputProcessor
from sglserve.tokenizer.req_state import ClientDisconnected, Overloaded, ReqState, ServerError, Updates
from sglserve.tokenizer.request_checks import expand_n, requested_count
from sglserve.port_args import PortArgs
from sglserve.server_args import ServerArgs
from sglserve.utils.aio import last_item, merge_streams
from sglserve.utils.logging_utils import request_context
from sglserve.utils.zmq_queue import PullQueue, PushQueue

__all__ = ["TokenizerManager", "ServerError", "ClientDisconnected", "Overloaded", "ReqState"]

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 1.0  # how often a waiting request checks whether its client left
CONTROL_TIMEOUT_S = 30.0  # flush_cache / get_load give up after this long


class TokenizerManager:
    def __init__(self, server_args: ServerArgs, port_args: PortArgs, scheduler_info: Dict[str, Any], tokenizer: Any = None,
                 http_worker: int = 0):
        self.server_args = server_args
        self.http_worker = http_worker  # this process's index (--api-server-count): outputs come back to it
        self.scheduler_info = dict(scheduler_info)
        self.context_len: int = scheduler_info["context_len"]
        self.max_req_input_len: int = scheduler_info.get("max_req_input_len", self.context_len - 1)
        self.vocab_size: int = scheduler_info["vocab_size"]
        self.max_total_num_tokens: int = scheduler_info["max_total_num_tokens"]
        if tokenizer is None and not server_args.skip_tokenizer_init:
            from sglserve.utils.hf_transformers_utils import get_tokenizer

            tokenizer = get_tokenizer(server_args.tokenizer_path, server_args.trust_remote_code)
        self.tokenizer = tokenizer
        self.input_processor = InputProcessor.create(tokenizer, scheduler_info, server_args.page_size,
                                                     server_args.grammar_backend)
        self.encoder = BatchEncoder(tokenizer)
        running = scheduler_info.get("max_running_requests")
        queued = server_args.max_queued_requests
        workers = server_args.api_server_count  # each HTTP worker admits its share of the limit (rounded up)
        self.admission = AdmissionControl(None if queued is None or running is None else -(-(running + queued) // workers),
                                          lambda: len(self.rid_to_state))
        self.metrics: Any = None  # a metrics.collector.MetricsCollector with --enable-metrics

        self._zmq_context = zmq.asyncio.Context(2)
        self.recv_from_detokenizer = PullQueue(self._zmq_context, port_args.tokenizer_ipc_names[http_worker], bind=True)
        self.send_to_scheduler = PushQueue(self._zmq_context, port_args.scheduler_input_ipc_name)

        self.rid_to_state: Dict[str, ReqState] = {}
        self._control_waiters: Dict[type, Deque[asyncio.Future]] = {
            FlushCacheReqOutput: collections.deque(),
            GetLoadReqOutput: collections.deque(),
        }
        self._loop_tasks: List[asyncio.Task] = []
        self._watched: Dict[str, Any] = {}
        self._watch_interval = 1.0
        self.dead_reason: Optional[str] = None

    # ---- requests -----------------------------------------------------------------------

    async def generate_request(self, obj: GenerateReqInput, request: Any = None) -> AsyncIterator[Any]:
        """Validate and tokenize now (ValueError -> the caller answers 400), then return the async generator.

        Single request: yields cumulative dicts {"text", "output_ids", "meta_info"}; one at the
        end, or one per message when streaming. Batch: one list of such dicts when not
        streaming, else each dict with an "index". `obj.rid` is filled in with the rid(s).
        Raises (while iterating) ValueError for a request the scheduler rejected,
        ServerError when the scheduler is gone, ClientDisconnected after an abort.
        """
        if self.dead_reason:
            raise ServerError(self.dead_reason)
        self.input_processor.check_shape(obj)
        admission = self.admission.admit(requested_count(obj), self.metrics)
        try:
            group = self._claim_rid(obj)
            return self._prepare(obj, request, admission, group, await self._tokenize(obj))
        except BaseException:
            admission.release_all()
            raise

    async def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Token ids of one text, tokenized off the event loop (chat prompts, /tokenize)."""
        return (await self.encoder.encode([text], add_special_tokens))[0]

    def check_prompt_chars(self, num_chars: int) -> None:
        """400 for a text prompt too long for the context, before tokenizing it (chat messages)."""
        self.input_processor.check_chars(num_chars)

    @property
    def num_inflight(self) -> int:
        return self.admission.in_flight

    async def _tokenize(self, obj: GenerateReqInput) -> List[TokenizedGenerateReqInput]:
        """InputProcessor's checks and the texts' tokenization (one batch, off the loop), with the
        first error in prompt order, as checking the prompts one after another would find it."""
        items = [obj] if obj.is_single else [obj[i] for i in range(obj.batch_size)]
        checked, error = [], None
        for item in items:
            try:
                checked.append((item, self.input_processor.check(item)))
            except ValueError as e:
                error = e
                break
        texts = [item.text for item, _ in checked if item.text is not None]
        ids = iter(await self.encoder.encode(texts) if texts else [])
        tokenized = [self.input_processor.finish(item, sp, next(ids) if item.text is not None else item.input_ids)
                     for item, sp in checked]
        if error is not None:
            raise error
        return tokenized

    @staticmethod
    def _claim_rid(obj: GenerateReqInput) -> Optional[str]:
        """Fill in the request's rid(s); returns the one rid /abort_request may name for all of them."""
        ctx = request_context.get()
        if obj.rid is None and ctx is not None and not ctx.claimed:
            obj.rid = ctx.rid  # the id the logs and the X-Request-Id header already show
        group = obj.rid if isinstance(obj.rid, str) else None
        if not obj.is_single and group is not None:
            obj.rid = [f"{group}-{i}" for i in range(obj.batch_size)]
        return group

    def _prepare(self, obj: GenerateReqInput, request: Any, admission: Ticket, group: Optional[str],
                 tokenized: List[TokenizedGenerateReqInput]) -> AsyncIterator[Any]:
        ctx = request_context.get()
        single = obj.is_single and tokenized[0].sampling_params.n == 1
        tokenized = expand_n(tokenized)
        for t in tokenized:
            t.http_worker = self.http_worker
        rids = [t.rid for t in tokenized]
        if len(set(rids)) != len(rids) or any(r in self.rid_to_state for r in rids):
            raise ValueError(f"Duplicate request ID in {rids}.")
        obj.rid = rids[0] if single else rids
        parents = {t.rid: group or t.prefix_group or t.rid for t in tokenized}
        if ctx is not None:
            ctx.claimed, ctx.rid = True, parents[rids[0]]
        if single:
            gen = self._wait_one(tokenized[0], request, obj.return_text_in_logprobs, admission, parents)
        else:
            gen = self._wait_batch(tokenized, request, obj.stream, obj.return_text_in_logprobs, admission, parents)
        weakref.finalize(gen, admission.release_all)  # a stream the server never started
        return gen

    async def _wait_one(
        self, tokenized: TokenizedGenerateReqInput, request: Any, text_in_logprobs: bool = False,
        admission: Optional[Ticket] = None, parents: Optional[Dict[str, str]] = None,
    ) -> AsyncIterator[Dict[str, Any]]:
        self.start()
        if self.dead_reason:
            raise ServerError(self.dead_reason)
        rid = tokenized.rid
        state = ReqState(rid, tokenized.stream, time.time(), tokenizer=self.tokenizer,
                         parent=(parents or {}).get(rid, rid))
        if tokenized.return_logprob:
            state.logprobs = LogprobAccumulator(return_text=text_in_logprobs)
        self.rid_to_state[rid] = state
        if admission is not None:
            admission.release(1)
        timer = None  # a timer, not a check in this loop: it fires while a slow reader blocks the stream too
        if self.server_args.request_timeout is not None:
            timer = asyncio.get_running_loop().call_later(self.server_args.request_timeout, self._expire, state)
        try:
            self.send_to_scheduler.put(tokenized)
            while True:
                if not await state.wait(DISCONNECT_POLL_S):
                    if request is not None and await request.is_disconnected():
                        logger.info("Client disconnected; aborting request %s", rid)
                        raise ClientDisconnected(rid)
                    continue
                fr = state.finished_reason
                if fr is not None:
                    if fr.get("type") == "abort" and fr.get("status_code") is not None:
                        if fr["status_code"] == 400:
                            raise ValueError(fr.get("message") or "The request was rejected.")
                        raise ServerError(fr.get("message") or "The request failed.", fr["status_code"])
                    yield state.to_dict()
                    return
                if state.stream:
                    yield state.to_dict()
        finally:
            if timer is not None:
                timer.cancel()
            fr = state.finished_reason
            if self.rid_to_state.pop(rid, None) is not None:
                if fr is None:
                    logger.debug("Request %s ends unfinished (client gone or cancelled); aborting it", rid)
                    self.abort_request(rid)
                elif fr.get("type") == "abort" and fr.get("status_code") == 500 and not self.dead_reason:
                    self.abort_request(rid)  # failed outside the scheduler: stop generating for nobody
                if self.metrics is not None:
                    self.metrics.on_finish(state, aborted=fr is None or fr.get("type") == "abort",
                                           timed_out=fr is not None and fr.get("status_code") == 408)

    def _expire(self, state: ReqState) -> None:
        """--request-timeout: abort the request; its consumer gets a 408 (or an SSE error event)."""
        if state.finished_reason is not None or self.rid_to_state.get(state.rid) is not state:
            return
        timeout = self.server_args.request_timeout
        logger.warning("Request %s timed out after %g s (--request-timeout); aborting it", state.rid, timeout)
        state.finished_reason = finish_abort(
            f"The request timed out after {timeout:g} s (--request-timeout) and was aborted.", status_code=408)
        state.finish_time = time.time()
        self.abort_request(state.rid)
        state.notify()

    async def _wait_batch(self, tokenized: List[TokenizedGenerateReqInput], request: Any, stream: bool,
                          text_in_logprobs: bool = False, admission: Optional[Ticket] = None,
                          parents: Optional[Dict[str, str]] = None):
        gens = [self._wait_one(t, request, text_in_logprobs, admission, parents) for t in tokenized]
        if not stream:
            tasks = [asyncio.ensure_future(last_item(g)) for g in gens]
            try:
                results = await asyncio.gather(*tasks)
            finally:  # one failed or we were cancelled: abort the rest
                for t in tasks:
                    t.cancel()
            yield list(results)
            return
        async for index, out in merge_streams(gens):
            out["index"] = index
            yield out

    def abort_by_client(self, rid: str) -> List[str]:
        """/abort_request: abort `rid` (and its n > 1 / batch members rid-0, rid-1, ...); "" aborts
        everything. The waiting clients get finish_reason "abort". Returns the rids found here."""
        found = [r for r, s in self.rid_to_state.items() if rid == "" or r == rid or s.parent == rid]
        for r in found:
            logger.info("Aborting request %s (/abort_request)", r)
            self.abort_request(r)
        if rid == "" or not found:
            self.abort_request(rid)  # maybe queued in the scheduler only; "" clears its whole queue
        return found

    def abort_request(self, rid: str) -> None:
        """Tell the scheduler to drop `rid` and free its KV (safe to call from `finally`)."""
        try:
            self.send_to_scheduler.put(AbortReq(rid=rid), block=False)
        except zmq.ZMQError as e:  # pragma: no cover - the queue to the scheduler is full
            logger.error("Could not send AbortReq(%s): %s", rid, e)

    # ---- control calls ------------------------------------------------------------------

    async def flush_cache(self, timeout: Optional[float] = None) -> FlushCacheReqOutput:
        return await self._control(FlushCacheReq(http_worker=self.http_worker), FlushCacheReqOutput, timeout)

    async def get_load(self, timeout: Optional[float] = None) -> GetLoadReqOutput:
        return await self._control(GetLoadReq(http_worker=self.http_worker), GetLoadReqOutput, timeout)

    async def _control(self, req: Any, reply_type: type, timeout: Optional[float]) -> Any:
        timeout = CONTROL_TIMEOUT_S if timeout is None else timeout
        self.start()
        if self.dead_reason:
            raise ServerError(self.dead_reason)
        fut = asyncio.get_running_loop().create_future()
        waiters = self._control_waiters[reply_type]
        waiters.append(fut)
        try:
            self.send_to_scheduler.put(req)
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise ServerError(f"The scheduler did not answer {type(req).__name__} within {timeout:g} s.") from None
        finally:
            if fut in waiters:
                waiters.remove(fut)

    # ---- the receive loop ---------------------------------------------------------------

    def start(self) -> None:
        """Start the receive loop (and the process watcher) on the running event loop.
        Idempotent; the app's lifespan calls it, and so does the first request."""
        if self._loop_tasks:
            return
        loop = asyncio.get_running_loop()
        self._loop_tasks.append(loop.create_task(self._handle_loop()))
        if self._watched:
            self._loop_tasks.append(loop.create_task(self._watch()))

    async def _handle_loop(self) -> None:
        while True:
            recv = await self.recv_from_detokenizer.aget()
            try:
                if isinstance(recv, BatchStrOut):
                    self._handle_batch_str_out(recv)
                elif type(recv) in self._control_waiters:
                    waiters = self._control_waiters[type(recv)]
                    while waiters:
                        fut = waiters.popleft()
                        if not fut.done():
                            fut.set_result(recv)
                            break
                else:
                    logger.error("Unknown message type %s", type(recv).__name__)
            except Exception:  # a bug here must not stop every other request
                logger.exception("Error handling %s", type(recv).__name__)

    def _handle_batch_str_out(self, recv: BatchStrOut) -> None:
        """The columns -> each waiting request's state. What rarely happens (a first message,
        a finish, logprobs) is looked up by position; the common step is a few assignments."""
        news = Updates(recv)
        states = self.rid_to_state
        for i, rid in enumerate(recv.rids):
            state = states.get(rid)
            if state is None:  # aborted or already finished: nobody is waiting
                continue
            try:
                self._update_state(state, recv, i, news)
            except Exception as e:  # a bug with one request's output fails that request only
                logger.exception("Error handling the output of request %s", rid)
                state.finished_reason = finish_abort(f"Internal error while handling the output: {type(e).__name__}: {e}",
                                                     status_code=500)
                state.finish_time = time.time()
            state.notify()

    def _update_state(self, state: ReqState, recv: BatchStrOut, i: int, news: "Updates") -> None:
        if state.finished_reason is not None:  # timed out or failed here already: the rest is moot
            return
        lo, hi = recv.offsets[i], recv.offsets[i + 1]
        if self.metrics is not None and state.stream:
            self.metrics.on_output(state, hi - lo)
        state.text += recv.texts[i]
        if hi > lo:
            state.output_ids += recv.ids[lo:hi]
        state.completion_tokens = recv.completion_tokens[i]
        if news.rare and news.apply(state, i):
            state.finish_time = time.time()

    # ---- liveness -----------------------------------------------------------------------

    def watch_processes(self, procs: Dict[str, Any], interval: float = 1.0) -> None:
        """Poll child processes (name -> multiprocessing.Process) from the event loop; when
        one dies, every pending and later request fails with 503 instead of hanging.
        Call before the server starts (or from the loop; then it starts at once)."""
        self._watched, self._watch_interval = dict(procs), interval
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # start() launches it
        if self._loop_tasks:
            self._loop_tasks.append(loop.create_task(self._watch()))

    async def _watch(self) -> None:
        while self.dead_reason is None:
            for name, proc in self._watched.items():
                if not proc.is_alive():
                    self.set_dead(f"The {name} process died (exit code {proc.exitcode}).")
            await asyncio.sleep(self._watch_interval)

    def set_dead(self, reason: str) -> None:
        """Fail all pending and future requests with 503 (call from the event loop)."""
        if self.dead_reason is None:
            logger.error("%s Failing %d pending requests.", reason, len(self.rid_to_state))
        self.dead_reason = reason
        for state in self.rid_to_state.values():
            state.finished_reason = finish_abort(reason, status_code=503)
            state.notify()
        for waiters in self._control_waiters.values():
            for fut in waiters:
                if not fut.done():
                    fut.set_exception(ServerError(reason))
