"""Messages between the HTTP process, the scheduler and the detokenizer.

msgspec Structs, built with keywords, sent as msgpack on the typed queues of
utils/zmq_queue.py over local ipc:// ZMQ sockets only (never TCP). The per-step output
messages are columns (one list per field, one flat list of ids), not per-request objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import msgspec

from sglserve.sampling.sampling_params import SamplingParams


class Msg(msgspec.Struct):
    """Base of the messages. Each one is declared kw_only (msgspec does not inherit it):
    keyword construction only, so a field added later cannot shift the others."""


# ---- HTTP layer -> TokenizerManager (inside the HTTP process) --------------------------------


@dataclass
class GenerateReqInput:
    """A native /generate request (also what the OpenAI handlers build).

    Single: `text` is a str or `input_ids` a list of ints. Batch: a list of either; then
    `sampling_params` and `rid` may be one value for all or a list (one per prompt).
    `sampling_params` is a plain dict, turned into SamplingParams by the TokenizerManager.
    """

    text: Optional[Union[str, List[str]]] = None
    input_ids: Optional[Union[List[int], List[List[int]]]] = None
    sampling_params: Optional[Union[Dict[str, Any], List[Dict[str, Any]]]] = None
    rid: Optional[Union[str, List[str]]] = None
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    return_text_in_logprobs: bool = False
    # SGLang's: the logprobs of these token ids at every output position (output_token_ids_logprobs)
    token_ids_logprob: Optional[List[int]] = None
    cache_salt: Optional[Union[str, List[str]]] = None  # a batch may give one per prompt

    @property
    def is_single(self) -> bool:
        if self.text is not None:
            return isinstance(self.text, str)
        return self.input_ids is None or len(self.input_ids) == 0 or not isinstance(self.input_ids[0], list)

    @property
    def batch_size(self) -> int:
        if self.is_single:
            return 1
        return len(self.text) if self.text is not None else len(self.input_ids)

    def __getitem__(self, i: int) -> "GenerateReqInput":
        """The i-th prompt of a batch as a single request."""
        pick = lambda v: v[i] if isinstance(v, list) else v  # noqa: E731
        return GenerateReqInput(
            text=None if self.text is None else self.text[i],
            input_ids=None if self.input_ids is None else self.input_ids[i],
            sampling_params=pick(self.sampling_params),
            rid=pick(self.rid),
            stream=self.stream,
            return_logprob=self.return_logprob,
            logprob_start_len=self.logprob_start_len,
            top_logprobs_num=self.top_logprobs_num,
            return_text_in_logprobs=self.return_text_in_logprobs,
            token_ids_logprob=self.token_ids_logprob,
            cache_salt=pick(self.cache_salt),
        )


# ---- HTTP process -> scheduler -------------------------------------------------------------


class TokenizedGenerateReqInput(Msg, tag=True, kw_only=True):
    rid: str
    input_text: Optional[str]
    input_ids: List[int]
    sampling_params: SamplingParams
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    token_ids_logprob: Optional[List[int]] = None
    # Copies of one prompt (n > 1) share a group: the scheduler prefills one, the rest reuse its KV
    prefix_group: Optional[str] = None
    cache_salt: Optional[str] = None  # prefix-cache namespace: only requests with the same salt share KV
    http_worker: int = 0  # the HTTP process (--api-server-count) its outputs go back to


class AbortReq(Msg, tag=True, kw_only=True):
    rid: str  # "" aborts every request


class FlushCacheReq(Msg, tag=True, kw_only=True):
    http_worker: int = 0  # the HTTP process the reply goes to


class FlushCacheReqOutput(Msg, tag=True, kw_only=True):
    success: bool
    message: str = ""


class GetLoadReq(Msg, tag=True, kw_only=True):
    """Asks the scheduler for its KV pool, queue and token counts (/get_server_info, /metrics, /web/stats)."""

    http_worker: int = 0  # the HTTP process the reply goes to


class GetLoadReqOutput(Msg, tag=True, kw_only=True):
    max_total_num_tokens: int
    available_tokens: int  # free in the allocator
    evictable_tokens: int  # held only by the radix cache
    used_tokens: int  # held by running requests
    num_running_reqs: int
    num_waiting_reqs: int
    cache_hit_rate: float
    cache_tokens: int = 0  # KV tokens in the prefix cache's tree (locked by running requests or not)
    prefill_tokens: int = 0  # prompt tokens computed by prefill since start (cache hits not counted)
    generated_tokens: int = 0  # output tokens sampled since start


# ---- scheduler -> detokenizer -> HTTP process: one message per step, in columns ------------

Entry = Tuple[Optional[float], int]  # (logprob, token id); input position 0 has no logprob


class ReqInfo(Msg, array_like=True, kw_only=True):
    """What stays fixed for a request: sent once, with its first message, and remembered."""

    prompt_tokens: int
    cached_tokens: int
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    stop_strs: List[str] = msgspec.field(default_factory=list)
    stop_regex: List[str] = msgspec.field(default_factory=list)


class LogprobNews(Msg, array_like=True, kw_only=True):
    """The new logprob entries of the message's requests that asked (`index`: their positions
    in the message): output entries since the previous message (top and the asked token ids:
    one list per position); input entries once, complete (None until then)."""

    index: List[int]
    output: List[List[Entry]]
    output_top: List[List[List[Entry]]]
    input: List[Optional[List[Entry]]]
    input_top: List[Optional[List[List[Entry]]]]
    output_ids: List[List[List[Entry]]] = msgspec.field(default_factory=list)  # token_ids_logprob

    FIELDS = ("output", "output_top", "input", "input_top", "output_ids")


class Columns(Msg, kw_only=True):
    """Per-request columns shared by both output messages (request i = position i).

    `ids[offsets[i]:offsets[i + 1]]` are request i's NEW output ids since its previous message.
    `first[k]` is the position of a request whose first message this is; `infos[k]` its ReqInfo.
    `finished[k]` is the position of a request that ended; `finished_reasons[k]` why.
    """

    rids: List[str]
    offsets: List[int]  # len(rids) + 1 prefix sums into ids
    ids: List[int]
    completion_tokens: List[int]
    first: List[int] = msgspec.field(default_factory=list)
    infos: List[ReqInfo] = msgspec.field(default_factory=list)
    finished: List[int] = msgspec.field(default_factory=list)
    finished_reasons: List[Dict[str, Any]] = msgspec.field(default_factory=list)
    logprobs: Optional[LogprobNews] = None
    # With --api-server-count > 1, request i's HTTP process (None: all go to the only one)
    http_workers: Optional[List[int]] = None

    def new_ids(self, i: int) -> List[int]:
        return self.ids[self.offsets[i] : self.offsets[i + 1]]

    def finish_map(self) -> Dict[int, Dict[str, Any]]:
        return dict(zip(self.finished, self.finished_reasons))


class BatchTokenIDOut(Columns, tag=True, kw_only=True):
    """One scheduler step's news for every request that advanced or finished. The detokenizer
    holds back the last (max stop string length - 1) characters of an unfinished request so
    a stop string is never streamed."""


class BatchStrOut(Columns, tag=True, kw_only=True):
    """The detokenizer's answer to one BatchTokenIDOut, same requests in the same order:
    `texts[i]` is request i's NEW text (stop strings trimmed when finished)."""

    texts: List[str] = msgspec.field(default_factory=list)


class ReadyMsg(Msg, kw_only=True):
    """Child process -> launcher once it can serve (model loaded, KV pool sized)."""

    who: str
    info: Dict[str, Any] = msgspec.field(default_factory=dict)
    error: Optional[str] = None


# Every message that crosses a socket (utils/zmq_queue.py decodes this union by its tag)
Message = Union[TokenizedGenerateReqInput, AbortReq, FlushCacheReq, FlushCacheReqOutput, GetLoadReq,
                GetLoadReqOutput, BatchTokenIDOut, BatchStrOut]


# ---- finish reasons (as SGLang reports them in meta_info) ------------------------------------


def finish_stop(matched: Union[int, str, None]) -> Dict[str, Any]:
    return {"type": "stop", "matched": matched}


def finish_length(length: int) -> Dict[str, Any]:
    return {"type": "length", "length": length}


def finish_abort(message: str = "", status_code: Optional[int] = None) -> Dict[str, Any]:
    out: Dict[str, Any] = {"type": "abort", "message": message}
    if status_code is not None:
        out["status_code"] = status_code
    return out
