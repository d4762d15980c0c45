"""Per-request state of the HTTP process and the errors a request can end with."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, Dict, List, Optional

from sglserve.io_struct import BatchStrOut
from sglserve.tokenizer.logprob_output import LogprobAccumulator


class ServerError(RuntimeError):
    """The request is fine but the server cannot serve it (scheduler dead or silent): 5xx."""

    def __init__(self, message: str, status_code: int = 503) -> None:
        super().__init__(message)
        self.status_code = status_code


class Overloaded(ServerError):
    """--max-queued-requests is reached: 503 with Retry-After."""

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message, 503)
        self.retry_after = retry_after


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
    parent: Optional[str] = None  # the rid the client knows (n > 1 / batch: rid-0, rid-1, ... share it)
    first_token_time: Optional[float] = None  # metrics (streamed requests)
    last_token_time: Optional[float] = None

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


class Updates:
    """The rare columns of one BatchStrOut by position (first messages: prompt and cached token
    counts; finishes; logprobs), so the per-request loop pays for them only when present."""

    __slots__ = ("infos", "reasons", "logprobs", "lp_pos", "rare")

    def __init__(self, recv: BatchStrOut) -> None:
        self.infos = dict(zip(recv.first, recv.infos)) if recv.first else None
        self.reasons = recv.finish_map() if recv.finished else None
        self.logprobs = recv.logprobs
        self.lp_pos = None if recv.logprobs is None else {j: k for k, j in enumerate(recv.logprobs.index)}
        self.rare = bool(self.infos or self.reasons or self.lp_pos)

    def apply(self, state: Any, i: int) -> bool:
        """Request i's rare news into `state` (a ReqState or the Engine's result); True if it finished."""
        if self.infos is not None and i in self.infos:
            state.prompt_tokens = self.infos[i].prompt_tokens
            state.cached_tokens = self.infos[i].cached_tokens
        if self.lp_pos is not None and state.logprobs is not None and i in self.lp_pos:
            state.logprobs.add(self.logprobs, self.lp_pos[i])
        reason = None if self.reasons is None else self.reasons.get(i)
        if reason is not None:
            state.finished_reason = reason
            return True
        return False
