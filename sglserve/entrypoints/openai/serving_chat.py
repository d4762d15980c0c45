"""/v1/chat/completions: chat template -> GenerateReqInput -> chat.completion (or SSE chunks)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, AsyncIterator, Dict, List

from fastapi import Request, Response
from fastapi.responses import StreamingResponse

from sglserve.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    ChatMessage,
    DeltaMessage,
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


def build_chat_input_ids(tokenizer: Any, req: ChatCompletionRequest) -> List[int]:
    """Render the messages with the tokenizer's chat template and tokenize them."""
    if tokenizer is None:
        raise OpenAIError("Chat completions need a tokenizer; the server runs with --skip-tokenizer-init.")
    if not getattr(tokenizer, "chat_template", None):
        raise OpenAIError("The model has no chat template; use /v1/completions instead.")
    messages: List[Dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        msg = m.model_dump(exclude_none=True)
        if isinstance(m.content, list):
            texts = []
            for part in m.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise OpenAIError(
                        f"messages[{i}].content: only text parts are supported, got type {part.get('type')!r}.",
                        param=f"messages.{i}.content",
                    )
                texts.append(part["text"])
            msg["content"] = "\n".join(texts)
        elif m.content is None:
            msg["content"] = ""
        messages.append(msg)
    cont = req.continue_final_message
    if cont and messages[-1]["role"] != "assistant":
        raise OpenAIError("continue_final_message needs the last message to be from the assistant.",
                          param="continue_final_message")
    try:
        out = tokenizer.apply_chat_template(
            messages, add_generation_prompt=not cont, continue_final_message=cont, tokenize=True,
            **(req.chat_template_kwargs or {}),
        )
    except Exception as e:  # jinja TemplateError (raise_exception in the template), bad kwargs
        raise OpenAIError(f"Failed to apply the chat template: {e}") from e
    if isinstance(out, Mapping) or hasattr(out, "input_ids"):  # transformers 5: BatchEncoding
        out = out["input_ids"]
    return list(out)


async def handle_chat_completions(
    tm: TokenizerManager, model_name: str, req: ChatCompletionRequest, raw_request: Request
) -> Response:
    reject_unimplemented(req)
    input_ids = build_chat_input_ids(tm.tokenizer, req)
    obj = GenerateReqInput(
        input_ids=input_ids,
        sampling_params=req.to_sampling_params(req.requested_max_tokens),
        stream=req.stream,
        rid=req.rid,
    )
    gen = tm.generate_request(obj, raw_request)  # ValueError here -> 400 before any byte is sent
    created = int(time.time())
    if req.stream:
        return StreamingResponse(_stream(gen, obj.rid, created, model_name, req), media_type="text/event-stream")

    out = None
    async for out in gen:
        pass
    reason, matched = finish_reason_fields(out["meta_info"])
    choice = ChatCompletionResponseChoice(
        index=0, message=ChatMessage(content=out["text"]), finish_reason=reason, matched_stop=matched
    )
    resp = ChatCompletionResponse(
        id=out["meta_info"]["id"], created=created, model=model_name, choices=[choice], usage=usage_of([out["meta_info"]])
    )
    return json_response(resp.model_dump())


async def _stream(
    gen: AsyncIterator[Dict[str, Any]], rid: str, created: int, model_name: str, req: ChatCompletionRequest
) -> AsyncIterator[bytes]:
    def chunk(delta: DeltaMessage, reason=None, matched=None, usage=None) -> bytes:
        choice = ChatCompletionResponseStreamChoice(index=0, delta=delta, finish_reason=reason, matched_stop=matched)
        return sse(ChatCompletionStreamResponse(id=rid, created=created, model=model_name, choices=[choice],
                                                usage=usage).model_dump())

    sent = 0
    meta = None
    try:
        yield chunk(DeltaMessage(role="assistant", content=""))
        async for out in gen:
            meta = out["meta_info"]
            usage = usage_of([meta]) if req.continuous_usage else None
            delta = out["text"][sent:]
            sent = len(out["text"])
            if delta:
                yield chunk(DeltaMessage(content=delta), usage=usage)
            reason, matched = finish_reason_fields(meta)
            if reason is not None:
                yield chunk(DeltaMessage(), reason, matched, usage)
        if req.include_usage and meta is not None:
            yield sse(ChatCompletionStreamResponse(id=rid, created=created, model=model_name, choices=[],
                                                   usage=usage_of([meta])).model_dump())
    except ClientDisconnected:
        return
    except ValueError as e:
        yield sse_error(str(e), 400)
    except ServerError as e:
        yield sse_error(str(e), e.status_code)
    yield SSE_DONE
