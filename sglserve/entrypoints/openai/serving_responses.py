"""/v1/responses (the OpenAI Responses API) on top of the chat path.

A request becomes chat messages (instructions, the stored conversation of
previous_response_id, the new input: responses_input.py) and a ChatCompletionRequest that
`serving_chat.start_chat` runs as any chat request: the chat template, tools and tool_choice
through the tool-call parsers and grammars, text.format through response_format, reasoning
through the reasoning parser. The chat deltas become output items and stream events
(responses_output.py); a stored response (store: true, the default) serves GET
/v1/responses/{id} and the next turn's previous_response_id (responses_store.py).
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Dict, List, Optional

import orjson
from fastapi import Request, Response

from sglserve.entrypoints.openai.chat_output import ChoiceOutput
from sglserve.entrypoints.openai.protocol_responses import ResponseObject, ResponsesRequest
from sglserve.entrypoints.openai.responses_input import input_messages, output_messages, to_chat_request
from sglserve.entrypoints.openai.responses_output import ResponseBuilder, new_id
from sglserve.entrypoints.openai.responses_store import ResponsesStore, StoredResponse
from sglserve.entrypoints.openai.serving_chat import ChatRun, reasoning_tokens, start_chat
from sglserve.entrypoints.openai.serving_utils import (
    OpenAIError,
    final_outputs,
    finish_reason_fields,
    json_response,
    stream_response,
)
from sglserve.tokenizer.req_state import ServerError
from sglserve.tokenizer.tokenizer_manager import TokenizerManager


def _conversation(req: ResponsesRequest, store: ResponsesStore) -> List[Dict[str, Any]]:
    """Earlier turns (previous_response_id) + this input, as chat messages, without instructions."""
    history: List[Dict[str, Any]] = []
    if req.previous_response_id is not None:
        prev = store.get(req.previous_response_id)
        if prev is None:
            raise OpenAIError(f"Previous response with id {req.previous_response_id!r} not found.", 404,
                              "previous_response_id")
        history = list(prev.history)
    return history + input_messages(req.input)


def _base(req: ResponsesRequest, model_name: str) -> Dict[str, Any]:
    """The response object as it starts (in_progress, no output): the request's settings echoed."""
    fmt = req.text.format if req.text is not None and req.text.format is not None else None
    tools = [t.model_dump(exclude_none=True) for t in req.tools or []]
    return ResponseObject(
        id=new_id("resp"), model=model_name, status="in_progress", instructions=req.instructions,
        max_output_tokens=req.max_output_tokens, metadata=req.metadata or {},
        parallel_tool_calls=req.parallel_tool_calls is not False, previous_response_id=req.previous_response_id,
        reasoning=None if req.reasoning is None else {"effort": req.reasoning.effort, "summary": None},
        store=req.store, temperature=1.0 if req.temperature is None else req.temperature,
        text={"format": fmt.model_dump(by_alias=True, exclude_none=True) if fmt else {"type": "text"}},
        tool_choice=req.tool_choice or "auto", tools=tools, top_p=1.0 if req.top_p is None else req.top_p,
        user=req.user,
    ).model_dump()


def _usage(meta: Dict[str, Any], reasoning: Optional[int]) -> Dict[str, Any]:
    prompt, completion = meta["prompt_tokens"], meta["completion_tokens"]
    return {"input_tokens": prompt, "input_tokens_details": {"cached_tokens": meta["cached_tokens"]},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": reasoning or 0},
            "total_tokens": prompt + completion, "prompt_tokens": prompt, "completion_tokens": completion}


def _completed(tm: TokenizerManager, base: Dict[str, Any], builder: ResponseBuilder, choice: ChoiceOutput,
               out: Dict[str, Any]) -> Dict[str, Any]:
    reason, _ = finish_reason_fields(out["meta_info"])
    incomplete = reason == "length"
    return {**base, "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
            "output": builder.items,
            "usage": _usage(out["meta_info"], reasoning_tokens(tm, choice, out["output_ids"]))}


def _store(store: ResponsesStore, req: ResponsesRequest, resp: Dict[str, Any], convo: List[Dict[str, Any]]) -> None:
    if req.store:
        done = resp["status"] in ("completed", "incomplete")
        store.put(StoredResponse(resp, convo + output_messages(resp["output"]) if done else convo))


async def handle_responses(tm: TokenizerManager, model_name: str, store: ResponsesStore, req: ResponsesRequest,
                           raw_request: Request) -> Response:
    bad = req.unsupported()
    if bad is not None:
        raise OpenAIError(f"{bad[1]}.", param=bad[0])
    convo = _conversation(req, store)
    system = [{"role": "system", "content": req.instructions}] if req.instructions else []
    run = await start_chat(tm, to_chat_request(req, system + convo), raw_request)
    base = _base(req, model_name)
    if req.stream:
        return stream_response(_stream(tm, store, req, base, convo, run))
    out = (await final_outputs(run.gen))[0]
    reason, _ = finish_reason_fields(out["meta_info"])
    builder, choice = ResponseBuilder(), run.outputs[0]
    builder.feed(choice.update(out["text"], final=True))
    builder.finish(incomplete=reason == "length")
    resp = _completed(tm, base, builder, choice, out)
    _store(store, req, resp, convo)
    return json_response(resp)


def _frame(event: Dict[str, Any]) -> bytes:
    return b"event: " + event["type"].encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


async def _stream(tm: TokenizerManager, store: ResponsesStore, req: ResponsesRequest, base: Dict[str, Any],
                  convo: List[Dict[str, Any]], run: ChatRun) -> AsyncIterator[bytes]:
    builder, choice = ResponseBuilder(), run.outputs[0]
    yield _frame(builder.event("response.created", response=base))
    yield _frame(builder.event("response.in_progress", response=base))
    _store(store, req, base, convo)  # GET sees it in progress
    out, reason, finished = None, None, False
    try:
        async for out in run.gen:
            reason, _ = finish_reason_fields(out["meta_info"])
            for event in builder.feed(choice.update(out["text"], final=reason is not None)):
                yield _frame(event)
        for event in builder.finish(incomplete=reason == "length"):
            yield _frame(event)
        resp = _completed(tm, base, builder, choice, out)
        finished = True
    except (ValueError, ServerError) as e:  # after the headers went out: a response.failed event
        code = "invalid_request" if isinstance(e, ValueError) else "server_error"
        failed = {**base, "status": "failed", "output": builder.items, "error": {"code": code, "message": str(e)}}
        _store(store, req, failed, convo)
        yield _frame(builder.event("response.failed", response=failed))
        return
    finally:
        if not finished and req.store and (entry := store.get(base["id"])) is not None \
                and entry.response["status"] == "in_progress":  # the client went away mid-stream
            store.put(StoredResponse({**entry.response, "status": "cancelled"}, entry.history))
    _store(store, req, resp, convo)
    kind = "response.incomplete" if resp["status"] == "incomplete" else "response.completed"
    yield _frame(builder.event(kind, response=resp))


def retrieve(store: ResponsesStore, response_id: str) -> Response:
    entry = store.get(response_id)
    if entry is None:
        raise OpenAIError(f"Response with id {response_id!r} not found.", 404, "response_id")
    return json_response(entry.response)


def delete(store: ResponsesStore, response_id: str) -> Response:
    if store.pop(response_id) is None:
        raise OpenAIError(f"Response with id {response_id!r} not found.", 404, "response_id")
    return json_response({"id": response_id, "object": "response", "deleted": True})
