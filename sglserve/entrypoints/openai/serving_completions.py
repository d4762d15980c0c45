"""/v1/completions: prompt(s) -> GenerateReqInput -> text_completion (or SSE chunks)."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Dict, List, Union

from fastapi import Request, Response

from sglserve.entrypoints.openai.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
)
from sglserve.entrypoints.openai.serving_utils import (
    OpenAIError,
    final_outputs,
    finish_reason_fields,
    json_response,
    check_model_name,
    reject_unimplemented,
    sse,
    stream_response,
    usage_of,
)
from sglserve.entrypoints.openai.stream_chunks import completion_chunk, usage_chunk
from sglserve.io_struct import GenerateReqInput
from sglserve.tokenizer.logprob_output import MAX_TOP_LOGPROBS, completion_logprobs
from sglserve.tokenizer.tokenizer_manager import TokenizerManager


def _prompts(prompt: Union[str, List[str], List[int], List[List[int]]]) -> List[Union[str, List[int]]]:
    """Normalize the four accepted forms to a list of prompts (text or token ids)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise OpenAIError("prompt must not be empty.", param="prompt")
    if isinstance(prompt[0], int):
        return [prompt]
    return list(prompt)


def _echo_texts(tm: TokenizerManager, prompts: List[Union[str, List[int]]]) -> List[str]:
    if tm.tokenizer is None:
        raise OpenAIError("echo needs a tokenizer; the server runs with --skip-tokenizer-init.", param="echo")
    return [p if isinstance(p, str) else tm.tokenizer.decode(p) for p in prompts]


async def handle_completions(tm: TokenizerManager, model_name: str, req: CompletionRequest, raw_request: Request) -> Response:
    reject_unimplemented(req)
    check_model_name(tm.server_args, req)
    if req.logprobs is not None and not 0 <= req.logprobs <= MAX_TOP_LOGPROBS:
        raise OpenAIError(f"logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {req.logprobs}.", param="logprobs")
    prompts = _prompts(req.prompt)
    single = len(prompts) == 1
    is_text = isinstance(prompts[0], str)
    if any(isinstance(p, str) != is_text for p in prompts):  # pragma: no cover - pydantic forbids mixing
        raise OpenAIError("prompt must not mix text and token ids.", param="prompt")
    items: Any = prompts[0] if single else prompts
    want_lp = req.logprobs is not None
    obj = GenerateReqInput(
        text=items if is_text else None,
        input_ids=None if is_text else items,
        sampling_params=req.to_sampling_params(req.max_tokens),
        stream=req.stream,
        rid=req.rid,
        cache_salt=req.cache_salt,
        return_logprob=want_lp,
        top_logprobs_num=req.logprobs or 0,
        logprob_start_len=0 if (want_lp and req.echo) else -1,  # echo: the prompt's logprobs too
        return_text_in_logprobs=True,
    )
    gen = await tm.generate_request(obj, raw_request)  # ValueError here -> 400 before any byte is sent
    echo = _echo_texts(tm, prompts) if req.echo else None  # after: the token ids are validated now
    rid = obj.rid if isinstance(obj.rid, str) else obj.rid[0]
    created = int(time.time())
    if req.stream:
        return stream_response(_stream(gen, rid, created, model_name, req, echo))

    outs = await final_outputs(gen)
    choices = []
    for i, out in enumerate(outs):
        reason, matched = finish_reason_fields(out["meta_info"])
        prefix = echo[i // req.n] if echo else ""
        logprobs = completion_logprobs(out["meta_info"], bool(echo)) if want_lp else None
        choices.append(CompletionResponseChoice(index=i, text=prefix + out["text"], finish_reason=reason,
                                                matched_stop=matched, logprobs=logprobs))
    resp = CompletionResponse(id=rid, created=created, model=model_name, choices=choices,
                              usage=usage_of([o["meta_info"] for o in outs], req.n))
    return json_response(resp.model_dump())


async def _stream(gen: AsyncIterator[Any], rid: str, created: int, model_name: str, req: CompletionRequest, echo) -> AsyncIterator[bytes]:
    def chunk(index: int, text: str, reason=None, matched=None, usage=None, logprobs=None) -> bytes:
        return sse(completion_chunk(rid, created, model_name, index, text, reason, matched, usage, logprobs))

    sent: Dict[int, int] = {}
    sent_lp: Dict[int, int] = {}
    sent_chars: Dict[int, int] = {}  # characters of the choice's text already sent (text_offset)
    metas: Dict[int, Dict[str, Any]] = {}
    want_lp = req.logprobs is not None
    async for out in gen:
        index = out.get("index", 0)
        meta = metas[index] = out["meta_info"]
        usage = usage_of([meta]) if req.continuous_usage else None
        first = index not in sent
        text = out["text"]
        delta = ((echo[index // req.n] if echo else "") if first else "") + text[sent.get(index, 0):]
        sent[index] = len(text)
        reason, matched = finish_reason_fields(meta)
        logprobs = None
        if want_lp:
            start = sent_lp.get(index, 0)
            logprobs = completion_logprobs(meta, bool(echo) and first, start, sent_chars.get(index, 0))
            sent_lp[index] = len(meta.get("output_token_logprobs") or [])
        sent_chars[index] = sent_chars.get(index, 0) + len(delta)
        if delta or reason is not None or (logprobs and logprobs["tokens"]):
            yield chunk(index, delta, reason, matched, usage, logprobs)
    if req.include_usage and metas:
        yield sse(usage_chunk("text_completion", rid, created, model_name,
                              usage_of([metas[i] for i in sorted(metas)], req.n)))
