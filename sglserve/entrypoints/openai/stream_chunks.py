"""The SSE chunks of the OpenAI streaming routes as plain dicts, serialized by `sse` (orjson).

A stream sends one chunk per request per step, so building each through pydantic
(ChatCompletionStreamResponse(...).model_dump()) cost more than the rest of the chunk's path.
These builders give the same JSON (keys, order, nulls) as protocol.py's stream models,
which stay the schema; tests/unit/test_stream_chunks.py holds the two together.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

DELTA_KEYS = ("role", "content", "reasoning_content", "tool_calls")  # DeltaMessage's field order


def chat_delta(**fields: Any) -> Dict[str, Any]:
    """A chat delta in DeltaMessage's order: every key, null when unused (as SGLang sends it, so a
    delta has the keys of the non-streamed message)."""
    return {k: fields.get(k) for k in DELTA_KEYS}


def chat_chunk(rid: str, created: int, model: str, index: int, delta: Dict[str, Any], finish_reason: Optional[str] = None,
               matched_stop: Any = None, usage: Optional[Dict[str, Any]] = None,
               logprobs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """ChatCompletionStreamResponse with one choice."""
    choice = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason,
              "matched_stop": matched_stop}
    return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model, "choices": [choice],
            "usage": usage}


def completion_chunk(rid: str, created: int, model: str, index: int, text: str, finish_reason: Optional[str] = None,
                     matched_stop: Any = None, usage: Optional[Dict[str, Any]] = None,
                     logprobs: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """CompletionStreamResponse with one choice."""
    choice = {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason,
              "matched_stop": matched_stop}
    return {"id": rid, "object": "text_completion", "created": created, "model": model, "choices": [choice],
            "usage": usage}


def usage_chunk(obj: str, rid: str, created: int, model: str, usage: Dict[str, Any]) -> Dict[str, Any]:
    """The last chunk with stream_options.include_usage: no choices, the whole usage."""
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": [], "usage": usage}
