"""The dict chunk builders give byte for byte the JSON of protocol.py's stream models."""

from __future__ import annotations

import orjson
import pytest

from sglserve.entrypoints.openai.protocol import (
    ChatCompletionResponseStreamChoice,
    ChatCompletionStreamResponse,
    CompletionResponseStreamChoice,
    CompletionStreamResponse,
    DeltaMessage,
    UsageInfo,
)
from sglserve.entrypoints.openai.serving_utils import sse, usage_of
from sglserve.entrypoints.openai.stream_chunks import (
    ChatContentFrames,
    chat_chunk,
    chat_delta,
    completion_chunk,
    usage_chunk,
)

METAS = [{"prompt_tokens": 7, "completion_tokens": 3, "cached_tokens": 2},
         {"prompt_tokens": 7, "completion_tokens": 5, "cached_tokens": 0}]
LOGPROBS = {"content": [{"token": "a", "logprob": -0.5, "bytes": [97], "top_logprobs": []}]}
CALLS = [{"index": 0, "id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


def same_json(built, model) -> None:
    assert orjson.dumps(built) == orjson.dumps(model.model_dump())


def test_usage_matches_usage_info():
    same_json(usage_of(METAS, 2), UsageInfo.model_validate(usage_of(METAS, 2)))
    assert usage_of(METAS, 2) == {"prompt_tokens": 7, "completion_tokens": 8, "total_tokens": 15,
                                  "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": None}
    with_reasoning = usage_of(METAS, 2, [3, None])
    same_json(with_reasoning, UsageInfo.model_validate(with_reasoning))
    assert with_reasoning["completion_tokens_details"] == {"reasoning_tokens": 3}


@pytest.mark.parametrize("fields, reason, matched, usage, logprobs", [
    ({"role": "assistant", "content": ""}, None, None, None, None),
    ({"reasoning_content": "hm", "content": "Paris"}, None, None, usage_of(METAS[:1]), LOGPROBS),
    ({"tool_calls": CALLS}, None, None, None, None),
    ({}, "stop", "</s>", usage_of(METAS[:1]), None),
    ({}, "length", None, None, None),
])
def test_chat_chunk_matches_model(fields, reason, matched, usage, logprobs):
    built = chat_chunk("rid", 123, "m", 1, chat_delta(**fields), reason, matched, usage, logprobs)
    choice = ChatCompletionResponseStreamChoice(index=1, delta=DeltaMessage(**fields), finish_reason=reason,
                                                matched_stop=matched, logprobs=logprobs)
    same_json(built, ChatCompletionStreamResponse(id="rid", created=123, model="m", choices=[choice], usage=usage))


@pytest.mark.parametrize("text, reason, matched, usage", [
    ("Paris", None, None, None), ("", "stop", 2, usage_of(METAS[:1])),
])
def test_completion_chunk_matches_model(text, reason, matched, usage):
    built = completion_chunk("rid", 123, "m", 0, text, reason, matched, usage, None)
    choice = CompletionResponseStreamChoice(index=0, text=text, finish_reason=reason, matched_stop=matched)
    same_json(built, CompletionStreamResponse(id="rid", created=123, model="m", choices=[choice], usage=usage))


def test_usage_chunks_match_models():
    usage = usage_of(METAS, 1)
    same_json(usage_chunk("chat.completion.chunk", "rid", 1, "m", usage),
              ChatCompletionStreamResponse(id="rid", created=1, model="m", choices=[], usage=usage))
    same_json(usage_chunk("text_completion", "rid", 1, "m", usage),
              CompletionStreamResponse(id="rid", created=1, model="m", choices=[], usage=usage))


@pytest.mark.parametrize("text", ["Paris", "", " caf\u00e9 \u2014 \"quoted\" \\ back\nslash\t\u0001", "\U0001f600 emoji"])
@pytest.mark.parametrize("index", [0, 3])
@pytest.mark.parametrize("meta", [None, METAS[0], {"prompt_tokens": 0, "completion_tokens": 0, "cached_tokens": 0}])
def test_chat_content_frames_match_dict_chunks(text, index, meta):
    rid, model = "chatcmpl-\"x\"\u00e9", "Smol/LM \u00e9"
    usage = None if meta is None else usage_of([meta])
    expected = sse(chat_chunk(rid, 1700000000, model, index, chat_delta(content=text), usage=usage))
    assert ChatContentFrames(rid, 1700000000, model).content(index, text, meta) == expected
