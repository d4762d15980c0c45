"""/v1/responses through the real server on the default model with the official openai client:
create (plain and streamed), retrieve, previous_response_id, text.format json_schema, function
calls, reasoning, and the 4xx answers. The shared `server` runs --tool-call-parser llama3
--reasoning-parser qwen3 (tests/conftest.py)."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
import requests

from tests.server.tool_helpers import SCHEMA_OF, TOOLS

RESPONSE_TOOLS = [{"type": "function", **t["function"]} for t in TOOLS]  # the Responses API's flat tools
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                           "age": {"type": "integer", "minimum": 0, "maximum": 120}},
          "required": ["name", "age"], "additionalProperties": False}


@pytest.fixture(scope="module")
def client(server):
    return openai.Client(base_url=server.base_url + "/v1", api_key="None")


def test_create_plain(client):
    r = client.responses.create(model="m", input="Say hello.", instructions="Be brief.", max_output_tokens=24,
                                temperature=0, metadata={"k": "v"})
    assert r.object == "response" and r.id.startswith("resp_") and r.error is None
    assert r.model and r.created_at > 0 and r.metadata == {"k": "v"} and r.instructions == "Be brief."
    msg = r.output[-1]
    assert msg.type == "message" and msg.role == "assistant" and msg.content[0].type == "output_text"
    assert r.output_text == msg.content[0].text and r.output_text
    u = r.usage
    assert u.input_tokens > 0 and 0 < u.output_tokens <= 24 and u.total_tokens == u.input_tokens + u.output_tokens
    extra = r.usage.model_extra
    assert (extra["prompt_tokens"], extra["completion_tokens"]) == (u.input_tokens, u.output_tokens)
    if r.status == "incomplete":  # the length limit cut it
        assert u.output_tokens == 24 and r.incomplete_details.reason == "max_output_tokens"
    else:
        assert r.status == "completed" and r.incomplete_details is None


def test_length_cut_is_incomplete(client):
    r = client.responses.create(model="m", input="Tell me a long story about a dragon.", max_output_tokens=4,
                                temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 4 and r.output[0].status == "incomplete"


def test_stream_matches_plain(client):
    kw = dict(model="m", input="Name three colors.", max_output_tokens=20, temperature=0)
    plain = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    types = [e.type for e in events]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed" if plain.status == "completed" else "response.incomplete"]
    assert events[0].response.status == "in_progress" and events[0].response.usage is None
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 1 and all(d.item_id == events[2].item.id for d in deltas)
    text = "".join(d.delta for d in deltas)
    assert text == plain.output_text == events[-4].text
    final = events[-1].response
    assert final.output_text == text and final.usage.output_tokens == plain.usage.output_tokens
    assert final.usage.input_tokens == plain.usage.input_tokens
    # the streamed response is stored like a plain one
    assert client.responses.retrieve(final.id).output_text == text


def test_retrieve_and_delete(client, server):
    r = client.responses.create(model="m", input="Hi!", max_output_tokens=8, temperature=0)
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == r.output_text and got.usage == r.usage
    assert client.responses.create(model="m", input="Hi!", max_output_tokens=2, store=False).id
    client.responses.delete(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    resp = requests.get(f"{server.base_url}/v1/responses/resp_nope", timeout=10)
    assert resp.status_code == 404 and resp.json()["param"] == "response_id"


def test_unstored_response_is_not_kept(client):
    r = client.responses.create(model="m", input="Hi!", max_output_tokens=2, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="m", input="And?", previous_response_id=r.id, max_output_tokens=2)


def test_two_turns_previous_response_id(client):
    first = client.responses.create(model="m", input="My name is Zorblax. Remember it.", instructions="Be brief.",
                                    max_output_tokens=16, temperature=0)
    second = client.responses.create(model="m", input="What is my name?", previous_response_id=first.id,
                                     max_output_tokens=16, temperature=0)
    alone = client.responses.create(model="m", input="What is my name?", max_output_tokens=16, temperature=0)
    assert second.previous_response_id == first.id
    # the second turn's prompt holds the first turn (its input and its output), not just the new input
    assert second.usage.input_tokens > alone.usage.input_tokens + first.usage.output_tokens
    # exactly: the same conversation sent as input items gives the same prompt
    replay = client.responses.create(model="m", max_output_tokens=16, temperature=0, input=[
        {"role": "user", "content": "My name is Zorblax. Remember it."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"}])
    assert replay.usage.input_tokens == second.usage.input_tokens and replay.output_text == second.output_text
    # streamed turns chain too
    events = list(client.responses.create(model="m", input="Say it again.", previous_response_id=second.id,
                                          max_output_tokens=8, temperature=0, stream=True))
    assert events[-1].response.usage.input_tokens > second.usage.input_tokens + second.usage.output_tokens


def test_json_schema(client):
    fmt = {"format": {"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}}
    r = client.responses.create(model="m", input="Describe a person as JSON.", text=fmt, max_output_tokens=60,
                                temperature=0)
    jsonschema.validate(json.loads(r.output_text), PERSON)
    assert r.text.format.type == "json_schema"
    events = list(client.responses.create(model="m", input="Describe a person as JSON.", text=fmt,
                                          max_output_tokens=60, temperature=0, stream=True))
    assert events[-1].response.output_text == r.output_text


@pytest.mark.parametrize("choice", ["required", {"type": "function", "name": "get_time"}])
def test_function_call(client, choice):
    kw = dict(model="m", input="What is the weather like in Paris right now?", tools=RESPONSE_TOOLS,
              tool_choice=choice, max_output_tokens=48, temperature=0)
    r = client.responses.create(**kw)
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls and r.status == "completed"
    for call in calls:
        assert call.call_id.startswith("call_") and call.id.startswith("fc_")
        jsonschema.validate(json.loads(call.arguments), SCHEMA_OF[call.name])
    if isinstance(choice, dict):
        assert [c.name for c in calls] == ["get_time"]
    events = list(client.responses.create(stream=True, **kw))
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(d.name, d.arguments) for d in done] == [(c.name, c.arguments) for c in calls]
    assert args == "".join(c.arguments for c in calls)
    # the tool's result goes back as input items, and the model answers in text
    follow = client.responses.create(model="m", previous_response_id=r.id, tools=RESPONSE_TOOLS,
                                     max_output_tokens=16, temperature=0, tool_choice="none", input=[
        {"type": "function_call_output", "call_id": calls[0].call_id, "output": '{"result": 21}'}])
    question = client.responses.create(model="m", input=kw["input"], tools=RESPONSE_TOOLS, tool_choice="none",
                                       max_output_tokens=1)
    # the prompt holds the question, the call and its result
    assert follow.output_text and follow.usage.input_tokens > question.usage.input_tokens + 10


def test_reasoning_item_and_tokens(client):
    kw = dict(model="m", input="Think, then answer.", max_output_tokens=48, temperature=0,
              extra_body={"regex": "<think>[a-z ]{1,20}</think>[a-z ]{1,20}"})
    r = client.responses.create(**kw)
    kinds = [item.type for item in r.output]
    assert kinds == ["reasoning", "message"]
    reasoning = r.output[0].content[0].text
    assert reasoning and "<think>" not in reasoning + r.output_text
    assert 0 < r.usage.output_tokens_details.reasoning_tokens < r.usage.output_tokens
    events = list(client.responses.create(stream=True, **kw))
    assert "".join(e.delta for e in events if e.type == "response.reasoning_text.delta") == reasoning
    assert events[-1].response.usage.output_tokens_details.reasoning_tokens == \
        r.usage.output_tokens_details.reasoning_tokens


@pytest.mark.parametrize("body, status, param", [
    ({"input": "hi", "previous_response_id": "resp_unknown"}, 404, "previous_response_id"),
    ({"input": []}, 400, "input"),
    ({"input": "hi", "background": True}, 400, "background"),
    ({"input": "hi", "tools": [{"type": "web_search"}]}, 400, "tools.0.type"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, 400, "input.0"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, 400, "input.0.content.0"),
    ({"input": "hi", "max_output_tokens": 0}, 400, "max_output_tokens"),
    ({"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}}, 400, "text.format.schema"),
    ({"input": "hi", "tool_choice": {"type": "function", "name": "nope"},
      "tools": RESPONSE_TOOLS}, 400, "tool_choice"),
])
def test_bad_requests(server, body, status, param):
    r = requests.post(server.base_url + "/v1/responses", json={"model": "m", **body}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["object"] == "error" and err["code"] == status and err["param"] == param and err["message"]
