"""Messages between the HTTP process, the scheduler and the detokenizer.

They travel as pickles over local ipc:// ZMQ sockets only (never TCP).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Union

from sglserve.sampling.sampling_params import SamplingParams


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

    Lists are parallel (one entry per request). `decode_ids[i]` is the request's whole
    output token list; the detokenizer keeps its own offsets.
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
    output_token_logprobs: List[Optional[list]] = field(default_factory=list)


# ---- detokenizer -> HTTP process -----------------------------------------------------------


@dataclass
class BatchStrOut:
    rids: List[str]
    finished_reasons: List[Optional[Dict[str, Any]]]
    output_strs: List[str]  # cumulative text so far (stop strings trimmed when finished)
    output_ids: List[List[int]]
    prompt_tokens: List[int]
    completion_tokens: List[int]
    cached_tokens: List[int]
    output_token_logprobs: List[Optional[list]] = field(default_factory=list)


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
