"""Messages between the HTTP process, the scheduler and the detokenizer.

They travel as pickles over local ipc:// ZMQ sockets only (never TCP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from sglserve.sampling.sampling_params import SamplingParams


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
        )


# ---- HTTP process -> scheduler -------------------------------------------------------------


@dataclass
class TokenizedGenerateReqInput:
    rid: str
    input_text: Optional[str]
    input_ids: List[int]
    sampling_params: SamplingParams
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = 0
    # Copies of one prompt (n > 1) share a group: the scheduler prefills one, the rest reuse its KV
    prefix_group: Optional[str] = None


@dataclass
class AbortReq:
    rid: str  # "" aborts every request


@dataclass
class FlushCacheReq:
    pass


@dataclass
class FlushCacheReqOutput:
    success: bool
    message: str = ""


@dataclass
class GetLoadReq:
    """Asks the scheduler for its KV pool and queue state (/get_server_info)."""


@dataclass
class GetLoadReqOutput:
    max_total_num_tokens: int
    available_tokens: int  # free in the allocator
    evictable_tokens: int  # held only by the radix cache
    used_tokens: int  # held by running requests
    num_running_reqs: int
    num_waiting_reqs: int
    cache_hit_rate: float


# ---- scheduler -> detokenizer --------------------------------------------------------------


@dataclass
class BatchTokenIDOut:
    """One scheduler step's news for every request that advanced or finished.

    Lists are parallel (one entry per request). `decode_ids[i]` holds the request's NEW
    output token ids since the previous message about it; the detokenizer accumulates them.
    `stop_strs[i]` are the request's stop strings: the detokenizer holds back the last
    (max len - 1) characters while unfinished so a stop string is never streamed.
    """

    rids: List[str]
    finished_reasons: List[Optional[Dict[str, Any]]]
    decode_ids: List[List[int]]
    skip_special_tokens: List[bool]
    spaces_between_special_tokens: List[bool]
    no_stop_trim: List[bool]
    prompt_tokens: List[int]
    completion_tokens: List[int]
    cached_tokens: List[int]
    # Logprobs (empty lists when no request in the message asked; else one entry per request,
    # None for requests that did not ask): NEW (logprob, token_id) entries since the previous
    # message; top: one list of (logprob, token_id) per position; input: sent once, complete.
    output_token_logprobs: List[Optional[list]] = field(default_factory=list)
    stop_strs: List[List[str]] = field(default_factory=list)
    output_top_logprobs: List[Optional[list]] = field(default_factory=list)
    input_token_logprobs: List[Optional[list]] = field(default_factory=list)
    input_top_logprobs: List[Optional[list]] = field(default_factory=list)


# ---- detokenizer -> HTTP process -----------------------------------------------------------


@dataclass
class BatchStrOut:
    rids: List[str]
    finished_reasons: List[Optional[Dict[str, Any]]]
    output_strs: List[str]  # NEW text since the previous message (stop strings trimmed when finished)
    output_ids: List[List[int]]  # NEW output ids since the previous message
    prompt_tokens: List[int]
    completion_tokens: List[int]
    cached_tokens: List[int]
    output_token_logprobs: List[Optional[list]] = field(default_factory=list)  # as in BatchTokenIDOut
    output_top_logprobs: List[Optional[list]] = field(default_factory=list)
    input_token_logprobs: List[Optional[list]] = field(default_factory=list)
    input_top_logprobs: List[Optional[list]] = field(default_factory=list)


@dataclass
class ReadyMsg:
    """Child process -> launcher once it can serve (model loaded, KV pool sized)."""

    who: str
    info: Dict[str, Any] = field(default_factory=dict)
    error: Optional[str] = None


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
