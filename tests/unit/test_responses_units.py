"""Units of /v1/responses and /v1/score: the event builder, the LRU store, input conversion,
reasoning-token counting and score normalization (the server tests cover them end to end)."""

from __future__ import annotations

import math

import pytest

from sglserve.entrypoints.openai.responses_input import input_messages, output_messages
from sglserve.entrypoints.openai.responses_output import ResponseBuilder
from sglserve.entrypoints.openai.responses_store import ResponsesStore, SharedResponsesStore, StoredResponse
from sglserve.entrypoints.openai.serving_score import scores_of
from sglserve.entrypoints.openai.serving_utils import OpenAIError
from sglserve.parser.reasoning_parser import ReasoningParser


def test_builder_events_and_items():
    b = ResponseBuilder()
    events = b.feed({"reasoning_content": "hm"}) + b.feed({"content": "Hi"})
    events += b.feed({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                      "function": {"name": "f", "arguments": '{"a"'}}]})
    events += b.feed({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]})
    events += b.finish(incomplete=False)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.output_item.added", "response.content_part.added", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",  # content began
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done",
    ]
    reasoning, message, call = b.items
    assert reasoning["content"] == [{"type": "reasoning_text", "text": "hm"}] and reasoning["status"] == "completed"
    assert message["content"][0]["text"] == "Hi" and message["status"] == "completed"
    assert (call["call_id"], call["name"], call["arguments"]) == ("call_1", "f", '{"a": 1}')
    added = events[0]["item"]
    assert added["status"] == "in_progress" and added["content"] == []  # a snapshot, not the growing item


def test_builder_incomplete_and_empty():
    b = ResponseBuilder()
    b.feed({"content": "cut"})
    b.finish(incomplete=True)
    assert b.items[0]["status"] == "incomplete"
    empty = ResponseBuilder()
    empty.finish(incomplete=False)
    assert empty.items[0]["type"] == "message" and empty.items[0]["content"][0]["text"] == ""


def test_store_is_a_bounded_lru():
    store = ResponsesStore(2)
    for rid in ("a", "b"):
        store.put(StoredResponse({"id": rid}, []))
    assert store.get("a") is not None  # a is now the most recent
    store.put(StoredResponse({"id": "c"}, []))
    assert store.get("b") is None and store.get("a") and store.get("c") and len(store) == 2
    none = ResponsesStore(0)
    none.put(StoredResponse({"id": "a"}, []))
    assert none.get("a") is None


def test_shared_store_is_one_lru_for_every_worker(tmp_path):
    """--api-server-count > 1: two workers' stores over one file see each other's entries and
    share one LRU order (a read on one worker keeps an entry for the other)."""
    path = str(tmp_path / "responses.sqlite")
    one, two = SharedResponsesStore(path, 2), SharedResponsesStore(path, 2)
    for rid in ("a", "b"):
        one.put(StoredResponse({"id": rid, "status": "completed"}, [{"role": "user", "content": rid}]))
    got = two.get("a")  # a is now the most recent, for both
    assert got == StoredResponse({"id": "a", "status": "completed"}, [{"role": "user", "content": "a"}])
    two.put(StoredResponse({"id": "c"}, []))
    assert one.get("b") is None and one.get("a") and one.get("c") and len(one) == len(two) == 2
    two.put(StoredResponse({"id": "a", "status": "cancelled"}, []))  # entries change by a new put
    assert one.get("a").response["status"] == "cancelled"
    assert one.pop("a") is not None and two.get("a") is None and two.pop("a") is None
    none = SharedResponsesStore(str(tmp_path / "none.sqlite"), 0)
    none.put(StoredResponse({"id": "a"}, []))
    assert none.get("a") is None


def test_input_items_to_messages():
    msgs = input_messages([
        {"role": "system", "content": "s"},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "a"},
                                                        {"type": "input_text", "text": "b"}]},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "1"},
    ])
    assert msgs[:2] == [{"role": "system", "content": "s"}, {"role": "user", "content": "ab"}]
    assert msgs[2]["role"] == "assistant" and [c["id"] for c in msgs[2]["tool_calls"]] == ["c1", "c2"]
    assert msgs[3] == {"role": "tool", "tool_call_id": "c1", "content": "1"}
    with pytest.raises(OpenAIError) as e:
        input_messages([{"role": "user", "content": [{"type": "input_image", "image_url": "u"}]}])
    assert e.value.param == "input.0.content.0"
    out = [{"type": "reasoning", "content": []}, {"type": "message", "content": [{"type": "output_text", "text": "x"}]},
           {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]
    assert output_messages(out) == [{"role": "assistant", "content": "x", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}]


@pytest.mark.parametrize("name, pieces, expected", [
    ("qwen3", ["<", "think", ">", "a b", "</", "think", ">", " ok"], 7),
    ("qwen3", ["<think>", "still thinking"], 2),  # never closed: all reasoning
    ("qwen3", ["plain", " answer"], 0),
    ("deepseek-r1", ["why", "</think>", "ok"], 2),  # starts inside the block
])
def test_reasoning_tokens(name, pieces, expected):
    ids = list(range(len(pieces)))
    decode = lambda xs: "".join(pieces[i] for i in xs)  # noqa: E731
    assert ReasoningParser(name).reasoning_tokens(ids, decode) == expected


def test_scores_of():
    lps = [math.log(0.2), math.log(0.05)]
    assert scores_of(lps, False) == pytest.approx([0.2, 0.05])
    assert scores_of(lps, True) == pytest.approx([0.8, 0.2])
    assert sum(scores_of([-1000.0, -1001.0], True)) == pytest.approx(1.0)  # no underflow
