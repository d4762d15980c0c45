"""/v1/completions: prompt(s) -> GenerateReqInput -> text_completion (or SSE chunks)."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Dict, List, Union

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from sglserve.entrypoints.openai.protocol import (
    CompletionRequest,
    CompletionResponse,
    CompletionResponseChoice,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
)
from sglserve.entrypoints.openai.serving_utils import (
    SSE_DONE,
    OpenAIError,
    finish_reason_fields,
    json_response,
    reject_unimplemented,
    sse,
    sse_error,
    usage_of,
)
from sglserve.managers.io_struct import GenerateReqInput
from sglserve.managers.tokenizer_manager import ClientDisconnected, ServerError, TokenizerManager


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
    prompts = _prompts(req.prompt)
    single = len(prompts) == 1
    is_text = isinstance(prompts[0], str)
    if any(isinstance(p, str) != is_text for p in prompts):  # pragma: no cover - pydantic forbids mixing
        raise OpenAIError("prompt must not mix text and token ids.", param="prompt")
    items: Any = prompts[0] if single else prompts
    obj = GenerateReqInput(
        text=items if is_text else None,
        input_ids=None if is_text else items,
        sampling_params=req.to_sampling_params(req.max_tokens),
        stream=req.stream,
        rid=req.rid,
    )
    echo = _echo_texts(tm, prompts) if req.echo else None
    gen = tm.generate_request(obj, raw_request)  # ValueError here -> 400 before any byte is sent
    rid = obj.rid if single else obj.rid[0]
    created = int(time.time())
    if req.stream:
        return StreamingResponse(_stream(gen, single, rid, created, model_name, req, echo), media_type="text/event-stream")

    outs = None
    async for outs in gen:
        pass
    outs = [outs] if single else outs
    choices = []
    for i, out in enumerate(outs):
        reason, matched = finish_reason_fields(out["meta_info"])
        text = (echo[i] if echo else "") + out["text"]
        choices.append(CompletionResponseChoice(index=i, text=text, finish_reason=reason, matched_stop=matched))
    resp = CompletionResponse(id=rid, created=created, model=model_name, choices=choices,
                              usage=usage_of(o["meta_info"] for o in outs))
    return json_response(resp.model_dump())


async def _stream(
    gen: AsyncIterator[Any], single: bool, rid: str, created: int, model_name: str, req: CompletionRequest, echo
) -> AsyncIterator[bytes]:
    def chunk(index: int, text: str, reason=None, matched=None, usage=None) -> bytes:
        choice = CompletionResponseStreamChoice(index=index, text=text, finish_reason=reason, matched_stop=matched)
        return sse(CompletionStreamResponse(id=rid, created=created, model=model_name, choices=[choice],
                                            usage=usage).model_dump())

    sent: Dict[int, int] = {}
    metas: Dict[int, Dict[str, Any]] = {}
    try:
        if echo:
            for i, text in enumerate(echo):
                yield chunk(i, text)
        async for out in gen:
            index = 0 if single else out["index"]
            meta = metas[index] = out["meta_info"]
            usage = usage_of([meta]) if req.continuous_usage else None
            delta = out["text"][sent.get(index, 0):]
            sent[index] = len(out["text"])
            reason, matched = finish_reason_fields(meta)
            if delta or reason is not None:
                yield chunk(index, delta, reason, matched, usage)
        if req.include_usage and metas:
            yield sse(CompletionStreamResponse(id=rid, created=created, model=model_name, choices=[],
                                               usage=usage_of(metas.values())).model_dump())
    except ClientDisconnected:
        return
    except ValueError as e:
        yield sse_error(str(e), 400)
    except ServerError as e:
        yield sse_error(str(e), e.status_code)
    yield SSE_DONE
