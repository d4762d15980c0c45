"""TokenizerManager: the HTTP process's side of the pipeline.

Tokenizes and validates requests, sends them to the scheduler, and routes the
detokenizer's BatchStrOut messages to per-request state that `generate_request` awaits.
A client that goes away (disconnect or cancellation) gets its request aborted so the
scheduler frees its KV. Control calls (flush_cache, get_load) time out rather than hang.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
import uuid
from typing import Any, AsyncIterator, Deque, Dict, List, Optional

import zmq
import zmq.asyncio

from sglserve.managers.io_struct import (
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
from sglserve.constrained.xgrammar_backend import grammar_key, validate_grammar
from sglserve.managers.logprob_output import LogprobAccumulator, validate_logprob_args
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.server_args import PortArgs, ServerArgs
from sglserve.utils.aio import last_item, merge_streams

logger = logging.getLogger(__name__)

DISCONNECT_POLL_S = 1.0  # how often a waiting request checks whether its client left
CONTROL_TIMEOUT_S = 30.0  # flush_cache / get_load give up after this long


class ServerError(RuntimeError):
    """The request is fine but the server cannot serve it (scheduler dead or silent): 5xx."""

    def __init__(self, message: str, status_code: int = 503) -> None:
        super().__init__(message)
        self.status_code = status_code


class ClientDisconnected(Exception):
    """The client went away; its request was aborted. Nobody is left to answer."""


@dataclasses.dataclass
class ReqState:
    rid: str
    stream: bool
    created: float
    dirty: bool = False  # news arrived since the consumer last looked
    waiter: Optional[asyncio.Future] = None
    text: str = ""
    output_ids: List[int] = dataclasses.field(default_factory=list)
    finished_reason: Optional[Dict[str, Any]] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_time: Optional[float] = None
    logprobs: Optional[LogprobAccumulator] = None  # when the request asked for logprobs
    tokenizer: Any = None

    def notify(self) -> None:
        self.dirty = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def wait(self, timeout: float) -> bool:
        """True when there is news, False after `timeout`. Awaits a bare future: cheaper than
        a task per wait, and a cancellation always propagates (asyncio.wait_for before
        Python 3.12 can swallow one that races with the result, and the stream would go on)."""
        if not self.dirty:
            loop = asyncio.get_running_loop()
            self.waiter = fut = loop.create_future()
            timer = loop.call_later(timeout, lambda: fut.done() or fut.set_result(None))
            try:
                await fut
            finally:
                timer.cancel()
                self.waiter = None
        news, self.dirty = self.dirty, False
        return news

    def to_dict(self) -> Dict[str, Any]:
        end = self.finish_time if self.finish_time is not None else time.time()
        meta = {
            "id": self.rid,
            "finish_reason": self.finished_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "e2e_latency": end - self.created,
        }
        if self.logprobs is not None:
            meta.update(self.logprobs.meta(self.tokenizer))
        return {"text": self.text, "output_ids": list(self.output_ids), "meta_info": meta}


class TokenizerManager:
    def __init__(self, server_args: ServerArgs, port_args: PortArgs, scheduler_info: Dict[str, Any], tokenizer: Any = None):
        self.server_args = server_args
        self.scheduler_info = dict(scheduler_info)
        self.context_len: int = scheduler_info["context_len"]
        self.max_req_input_len: int = scheduler_info.get("max_req_input_len", self.context_len - 1)
        self.vocab_size: int = scheduler_info["vocab_size"]
        self.max_total_num_tokens: int = scheduler_info["max_total_num_tokens"]
        if tokenizer is None and not server_args.skip_tokenizer_init:
            from sglserve.utils.hf_transformers_utils import get_tokenizer

            tokenizer = get_tokenizer(server_args.tokenizer_path, server_args.trust_remote_code)
        self.tokenizer = tokenizer

        self._zmq_context = zmq.asyncio.Context(2)
        self.recv_from_detokenizer = self._zmq_context.socket(zmq.PULL)
        self.recv_from_detokenizer.bind(port_args.tokenizer_ipc_name)
        self.send_to_scheduler = self._zmq_context.socket(zmq.PUSH)
        self.send_to_scheduler.connect(port_args.scheduler_input_ipc_name)

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

    def generate_request(self, obj: GenerateReqInput, request: Any = None) -> AsyncIterator[Any]:
        """Validate now (ValueError -> the caller answers 400), then return the async generator.

        Single request: yields cumulative dicts {"text", "output_ids", "meta_info"}; one at the
        end, or one per message when streaming. Batch: one list of such dicts when not
        streaming, else each dict with an "index". `obj.rid` is filled in with the rid(s).
        Raises (while iterating) ValueError for a request the scheduler rejected,
        ServerError when the scheduler is gone, ClientDisconnected after an abort.
        """
        if self.dead_reason:
            raise ServerError(self.dead_reason)
        _check_shape(obj)
        if obj.is_single:
            tokenized = [self._tokenize_one(obj)]
        else:
            if obj.batch_size == 0:
                raise ValueError("The batch of prompts is empty.")
            if isinstance(obj.rid, str):
                obj.rid = [f"{obj.rid}-{i}" for i in range(obj.batch_size)]
            tokenized = [self._tokenize_one(obj[i]) for i in range(obj.batch_size)]
        single = obj.is_single and tokenized[0].sampling_params.n == 1
        tokenized = expand_n(tokenized)
        rids = [t.rid for t in tokenized]
        if len(set(rids)) != len(rids) or any(r in self.rid_to_state for r in rids):
            raise ValueError(f"Duplicate request ID in {rids}.")
        obj.rid = rids[0] if single else rids
        if single:
            return self._wait_one(tokenized[0], request, obj.return_text_in_logprobs)
        return self._wait_batch(tokenized, request, obj.stream, obj.return_text_in_logprobs)

    def _tokenize_one(self, obj: GenerateReqInput) -> TokenizedGenerateReqInput:
        if (obj.text is None) == (obj.input_ids is None):
            raise ValueError("Either text or input_ids should be provided (exactly one of them).")
        validate_logprob_args(obj.return_logprob, obj.top_logprobs_num, obj.logprob_start_len)
        if obj.text is not None:
            if self.tokenizer is None:
                raise ValueError("text input needs a tokenizer; the server runs with --skip-tokenizer-init: send input_ids.")
            input_ids = self.tokenizer.encode(obj.text)
        else:
            input_ids = obj.input_ids
            bad = [t for t in input_ids if not 0 <= t < self.vocab_size]
            if bad:
                raise ValueError(f"The input_ids {bad[:8]} are outside the model's vocabulary [0, {self.vocab_size}).")
        n = len(input_ids)
        if n == 0:
            raise ValueError("The input is empty.")
        if n >= self.context_len:
            raise ValueError(f"The input ({n} tokens) is longer than the model's context length ({self.context_len} tokens).")
        if n > self.max_req_input_len:
            raise ValueError(f"The input ({n} tokens) is longer than the maximum allowed input length ({self.max_req_input_len} tokens).")
        if n > self.max_total_num_tokens - self.server_args.page_size:  # as the scheduler checks it, but before a stream starts
            raise ValueError(f"The input ({n} tokens) is longer than the KV cache ({self.max_total_num_tokens} tokens).")

        sp = SamplingParams.from_dict(obj.sampling_params)
        sp.verify(self.vocab_size)
        check_implemented(sp)
        key = grammar_key(sp)
        if key is not None:  # a bad grammar is a 400 here, never a problem for the scheduler
            if self.server_args.grammar_backend == "none" or self.tokenizer is None:
                raise ValueError("Constrained decoding (json_schema / regex / ebnf) needs --grammar-backend xgrammar and a tokenizer.")
            validate_grammar(key)
        if sp.max_new_tokens is not None and n + sp.max_new_tokens > self.context_len:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of {self.context_len} tokens. "
                f"You requested a total of {n + sp.max_new_tokens} tokens: {n} tokens from the input messages and "
                f"{sp.max_new_tokens} tokens for the completion. Please reduce the number of tokens in the input "
                f"messages or the completion to fit within the limit."
            )
        rid = obj.rid or uuid.uuid4().hex
        return TokenizedGenerateReqInput(
            rid, obj.text, list(input_ids), sp, stream=obj.stream, return_logprob=obj.return_logprob,
            logprob_start_len=obj.logprob_start_len, top_logprobs_num=obj.top_logprobs_num,
        )

    async def _wait_one(
        self, tokenized: TokenizedGenerateReqInput, request: Any, text_in_logprobs: bool = False
    ) -> AsyncIterator[Dict[str, Any]]:
        self.start()
        if self.dead_reason:
            raise ServerError(self.dead_reason)
        rid = tokenized.rid
        state = ReqState(rid, tokenized.stream, time.time(), tokenizer=self.tokenizer)
        if tokenized.return_logprob:
            state.logprobs = LogprobAccumulator(return_text=text_in_logprobs)
        self.rid_to_state[rid] = state
        try:
            self.send_to_scheduler.send_pyobj(tokenized)
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
            if self.rid_to_state.pop(rid, None) is not None and state.finished_reason is None:
                logger.debug("Request %s ends unfinished (client gone or cancelled); aborting it", rid)
                self.abort_request(rid)

    async def _wait_batch(self, tokenized: List[TokenizedGenerateReqInput], request: Any, stream: bool,
                          text_in_logprobs: bool = False):
        gens = [self._wait_one(t, request, text_in_logprobs) for t in tokenized]
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

    def abort_request(self, rid: str) -> None:
        """Tell the scheduler to drop `rid` and free its KV (safe to call from `finally`)."""
        try:
            self.send_to_scheduler.send_pyobj(AbortReq(rid), flags=zmq.NOBLOCK)
        except zmq.ZMQError as e:  # pragma: no cover - the queue to the scheduler is full
            logger.error("Could not send AbortReq(%s): %s", rid, e)

    # ---- control calls ------------------------------------------------------------------

    async def flush_cache(self, timeout: Optional[float] = None) -> FlushCacheReqOutput:
        return await self._control(FlushCacheReq(), FlushCacheReqOutput, timeout)

    async def get_load(self, timeout: Optional[float] = None) -> GetLoadReqOutput:
        return await self._control(GetLoadReq(), GetLoadReqOutput, timeout)

    async def _control(self, req: Any, reply_type: type, timeout: Optional[float]) -> Any:
        timeout = CONTROL_TIMEOUT_S if timeout is None else timeout
        self.start()
        if self.dead_reason:
            raise ServerError(self.dead_reason)
        fut = asyncio.get_running_loop().create_future()
        waiters = self._control_waiters[reply_type]
        waiters.append(fut)
        try:
            self.send_to_scheduler.send_pyobj(req)
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
            recv = await self.recv_from_detokenizer.recv_pyobj()
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
        for i, rid in enumerate(recv.rids):
            state = self.rid_to_state.get(rid)
            if state is None:  # aborted or already finished: nobody is waiting
                continue
            state.text += recv.output_strs[i]
            state.output_ids.extend(recv.output_ids[i])
            state.prompt_tokens = recv.prompt_tokens[i]
            state.completion_tokens = recv.completion_tokens[i]
            state.cached_tokens = recv.cached_tokens[i]
            if state.logprobs is not None:
                state.logprobs.add(recv, i)
            if recv.finished_reasons[i] is not None:
                state.finished_reason = recv.finished_reasons[i]
                state.finish_time = time.time()
            state.notify()

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


def _check_shape(obj: GenerateReqInput) -> None:
    """Types of a native request body (the OpenAI routes arrive here already well-formed)."""

    def is_ids(v: Any) -> bool:
        return isinstance(v, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in v)

    if obj.text is not None and not (
        isinstance(obj.text, str) or (isinstance(obj.text, list) and all(isinstance(t, str) for t in obj.text))
    ):
        raise ValueError("text must be a string or a list of strings.")
    if obj.input_ids is not None and not (
        is_ids(obj.input_ids) or (isinstance(obj.input_ids, list) and all(is_ids(x) for x in obj.input_ids))
    ):
        raise ValueError("input_ids must be a list of integers or a list of lists of integers.")
    n = None if obj.is_single else obj.batch_size
    for name, kind in (("sampling_params", dict), ("rid", str)):
        v = getattr(obj, name)
        if v is None or isinstance(v, kind):
            continue
        if n is None or not isinstance(v, list) or len(v) != n or not all(isinstance(x, kind) for x in v):
            what = "an object" if kind is dict else "a string"
            raise ValueError(f"{name} must be {what}, or for a batch a list of {n or 'N'} such values (one per prompt).")
    for name in ("stream", "return_logprob"):
        if not isinstance(getattr(obj, name), bool):
            raise ValueError(f"{name} must be a boolean.")


NOT_IMPLEMENTED_YET: Dict[str, Any] = {
    # SamplingParams field -> test that it is in use. Remove an entry when the scheduler does it.
}


def check_implemented(sp: SamplingParams) -> None:
    for name, in_use in NOT_IMPLEMENTED_YET.items():
        if in_use(sp):
            raise ValueError(f"{name} is not supported yet (got {getattr(sp, name)!r}).")


MAX_N = 128


def expand_n(tokenized: List[TokenizedGenerateReqInput]) -> List[TokenizedGenerateReqInput]:
    """n > 1: n copies of each prompt (rid-0 .. rid-{n-1}, seed + i) in one prefix group, so
    the scheduler computes the prompt's KV once and the copies share it (radix cache)."""
    out: List[TokenizedGenerateReqInput] = []
    for t in tokenized:
        n = t.sampling_params.n
        if n == 1:
            out.append(t)
            continue
        if n > MAX_N:
            raise ValueError(f"n must be at most {MAX_N}, got {n}.")
        for i in range(n):
            sp = t.sampling_params
            sp = dataclasses.replace(sp, n=1, seed=None if sp.seed is None else sp.seed + i)
            out.append(dataclasses.replace(t, rid=f"{t.rid}-{i}", sampling_params=sp, prefix_group=t.rid))
    return out
