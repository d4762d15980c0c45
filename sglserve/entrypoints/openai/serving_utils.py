"""What the OpenAI handlers share: error shapes, SSE framing, finish reasons, usage."""

from __future__ import annotations

from typing import Any, AsyncIterator, Dict, Iterable, List, Optional, Tuple

import orjson
from fastapi import Response

from sglserve.entrypoints.openai.protocol import ErrorResponse
from sglserve.entrypoints.sse_response import SSEResponse
from sglserve.tokenizer.req_state import ClientDisconnected, ServerError

ERROR_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    413: "RequestEntityTooLargeError",
    499: "ClientClosedRequest",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}

SSE_DONE = b"data: [DONE]\n\n"


class OpenAIError(Exception):
    """Raised by handlers; the app turns it into an ErrorResponse with this status."""

    def __init__(self, message: str, status_code: int = 400, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.message, self.status_code, self.param = message, status_code, param


def error_payload(message: str, status_code: int = 400, param: Optional[str] = None) -> Dict[str, Any]:
    err_type = ERROR_TYPES.get(status_code, "BadRequestError" if status_code < 500 else "InternalServerError")
    return ErrorResponse(message=message, type=err_type, param=param, code=status_code).model_dump()


def json_response(content: Any, status_code: int = 200, headers: Optional[Dict[str, str]] = None) -> Response:
    return Response(content=orjson.dumps(content, option=orjson.OPT_NON_STR_KEYS), status_code=status_code,
                    media_type="application/json", headers=headers)


def error_response(message: str, status_code: int = 400, param: Optional[str] = None,
                   headers: Optional[Dict[str, str]] = None) -> Response:
    return json_response(error_payload(message, status_code, param), status_code, headers)


def sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS) + b"\n\n"


def sse_error(message: str, status_code: int = 400) -> bytes:
    """An error after the stream started (headers already sent): as SGLang streams it."""
    return sse({"error": error_payload(message, status_code)})


async def sse_stream(frames: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The one SSE tail every streaming route shares: a request error after the headers went out
    becomes an error frame, a gone client ends the stream quietly, and the rest ends in [DONE]."""
    try:
        async for frame in frames:
            yield frame
    except ClientDisconnected:
        return
    except ValueError as e:
        yield sse_error(str(e), 400)
    except ServerError as e:
        yield sse_error(str(e), e.status_code)
    finally:
        await frames.aclose()  # a closed response closes the route's generator (and its request) now, not at GC
    yield SSE_DONE


def stream_response(frames: AsyncIterator[bytes]) -> SSEResponse:
    return SSEResponse(sse_stream(frames), media_type="text/event-stream")


async def final_outputs(gen: AsyncIterator[Any]) -> List[Dict[str, Any]]:
    """Drain a non-streaming generation: its last item, as a list of per-choice outputs."""
    last = None
    async for last in gen:
        pass
    return last if isinstance(last, list) else [last]


def finish_reason_fields(meta_info: Dict[str, Any]) -> Tuple[Optional[str], Any]:
    """SGLang's finish_reason dict -> (OpenAI finish_reason string, matched_stop)."""
    fr = meta_info.get("finish_reason")
    if not fr:
        return None, None
    return fr.get("type"), fr.get("matched") if fr.get("type") == "stop" else None


def usage_of(metas: Iterable[Dict[str, Any]], n: int = 1,
             reasoning: Optional[List[Optional[int]]] = None) -> Dict[str, Any]:
    """Token counts of a response (protocol.UsageInfo's JSON, a plain dict: streams send it per chunk).
    With n > 1 the metas come prompt-major (n per prompt) and each prompt counts once, as SGLang
    counts it; completions and cached tokens add up. `reasoning`: each choice's reasoning tokens
    (None entries: no reasoning parser), summed into completion_tokens_details."""
    prompt = completion = cached = 0
    for i, m in enumerate(metas):
        if i % n == 0:
            prompt += m["prompt_tokens"]
        completion += m["completion_tokens"]
        cached += m["cached_tokens"]
    counts = [r for r in reasoning or [] if r is not None]
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": sum(counts)} if counts else None}


# Sampling fields of vLLM / other servers that sglserve does not implement (other unknown fields,
# like OpenAI's store or metadata, are accepted and ignored, as OpenAI-compatible servers do)
_GUIDED = "; use response_format, regex or ebnf"
UNSUPPORTED_SAMPLING = {
    "guided_json": _GUIDED, "guided_regex": _GUIDED, "guided_choice": _GUIDED, "guided_grammar": _GUIDED,
    "guided_decoding_backend": _GUIDED, "structured_outputs": _GUIDED, "use_beam_search": "", "length_penalty": "",
    "include_stop_str_in_output": "; use no_stop_trim", "truncate_prompt_tokens": "", "bad_words": "; use logit_bias",
    "allowed_token_ids": "; use logit_bias", "prompt_logprobs": "", "typical_p": "", "top_a": "", "tfs": "",
    "mirostat": "", "dry_multiplier": "", "xtc_probability": "",
}


def check_model_name(server_args: Any, req: Any) -> None:
    """--strict-model-name: a request naming another model is a 404 model_not_found, as OpenAI answers;
    otherwise any name is accepted, as SGLang does (a request that leaves `model` out always is)."""
    if not server_args.strict_model_name or "model" not in req.model_fields_set:
        return
    if req.model not in server_args.model_names():
        raise OpenAIError(f"The model {req.model!r} does not exist; this server serves "
                          f"{server_args.served_model_name!r} (model_not_found).", 404, "model")


def reject_unimplemented(req: Any) -> None:
    """Known OpenAI fields whose behaviour is not implemented: 400 naming the field."""
    checks = []
    if not hasattr(req, "messages"):  # completions
        checks += [
            ("suffix", bool(req.suffix), "suffix is not supported"),
            ("best_of", req.best_of is not None and req.best_of != req.n, "best_of other than n is not supported"),
        ]
    extra = getattr(req, "model_extra", None) or {}
    for name, hint in UNSUPPORTED_SAMPLING.items():  # other servers' sampling fields: refused, never ignored
        if extra.get(name) is not None:
            checks.append((name, True, f"{name} is not supported{hint}"))
    for legacy in ("functions", "function_call"):  # the pre-tools API: answer with tools / tool_choice
        if extra.get(legacy) is not None:
            checks.append((legacy, True, f"{legacy} is not supported; use tools / tool_choice"))
    if req.response_format is not None and req.response_format.type == "structural_tag":
        checks.append(("response_format", True, "response_format 'structural_tag' is not supported"))
    for param, bad, message in checks:
        if bad:
            raise OpenAIError(f"{message} (got {param}={getattr(req, param, extra.get(param))!r}).", 400, param)
    if req.response_format is not None and req.response_format.type != "text" and (req.regex or req.ebnf):
        raise OpenAIError("Use one of response_format, regex and ebnf.", 400, "response_format")
