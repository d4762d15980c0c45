"""Shared by the tool-calling server tests: tools, and checks on responses and streams."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
                                            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
           "required": ["city", "unit"]}
TIME = {"type": "object", "properties": {"timezone": {"type": "string", "enum": ["UTC", "CET", "JST"]}},
        "required": ["timezone"]}
TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Current weather in a city", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time in a timezone", "parameters": TIME}},
]
SCHEMA_OF = {"get_weather": WEATHER, "get_time": TIME}
ASK = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


def check_calls(message):
    """Every tool call is well-formed: an id, a known name, JSON arguments valid for its schema."""
    assert message.tool_calls, message
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_")
        jsonschema.validate(json.loads(call.function.arguments), SCHEMA_OF[call.function.name])
    return [(c.function.name, c.function.arguments) for c in message.tool_calls]


def reassemble(chunks):
    """(content, [(name, arguments)], finish_reason) from streamed chunks, as a client rebuilds them."""
    content, calls, finish = "", {}, None
    for ch in chunks:
        if not ch.choices:
            continue
        delta = ch.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": "", "arguments": ""})
            if tc.id:
                assert entry["id"] is None, "the id comes once, with the first piece"
                entry["id"] = tc.id
            if tc.function and tc.function.name:
                entry["name"] += tc.function.name
            if tc.function and tc.function.arguments:
                entry["arguments"] += tc.function.arguments
        finish = ch.choices[0].finish_reason or finish
    assert all(e["id"] for e in calls.values())
    return content, [(calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)], finish


def run_tool_choices(client, choices, max_tokens=48):
    """For each tool_choice: (non-streaming response, streamed chunks), all requests at once."""
    kw = dict(model="m", messages=ASK, tools=TOOLS, temperature=0, max_tokens=max_tokens)
    with ThreadPoolExecutor(2 * len(choices)) as pool:
        plain = [pool.submit(client.chat.completions.create, tool_choice=c, **kw) for c in choices]
        streams = [pool.submit(lambda c=c: list(client.chat.completions.create(tool_choice=c, stream=True, **kw)))
                   for c in choices]
        return [(p.result(), s.result()) for p, s in zip(plain, streams)]


def assert_forced_calls(results, choices):
    """required / named: the output always parses; streaming reassembles to the same calls."""
    for choice, (resp, chunks) in zip(choices, results):
        msg = resp.choices[0].message
        calls = check_calls(msg)
        assert resp.choices[0].finish_reason == "tool_calls" and msg.content is None
        if isinstance(choice, dict):
            assert [name for name, _ in calls] == [choice["function"]["name"]]
        content, streamed, finish = reassemble(chunks)
        assert streamed == calls and finish == "tool_calls" and content == ""


def assert_well_formed(resp, chunks):
    """auto / none: either text or parseable tool calls; the stream says the same."""
    choice = resp.choices[0]
    content, streamed, finish = reassemble(chunks)
    if choice.message.tool_calls:
        assert check_calls(choice.message) == streamed and choice.finish_reason == "tool_calls"
    else:
        assert choice.message.content and not streamed and choice.finish_reason in ("stop", "length")
        assert content == choice.message.content
    assert finish == choice.finish_reason
