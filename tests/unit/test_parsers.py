"""Tool-call and reasoning parsers on canned text: every format, streamed one character at a
time (monotonic, deltas reassemble to the one-shot result), and the chat tool plumbing."""

from __future__ import annotations

import json

import pytest

from sglserve.entrypoints.openai.chat_output import ChoiceOutput
from sglserve.entrypoints.openai.chat_tools import plan_tools, prepare_messages, template_supports_tools
from sglserve.entrypoints.openai.protocol import ChatCompletionRequest
from sglserve.entrypoints.openai.serving_utils import OpenAIError
from sglserve.parser.reasoning_parser import ReasoningParser
from sglserve.parser.tool_call_parser import ToolCallParser

WEATHER_ARGS = '{"city": "Pa\\"ris", "unit": {"deg": [1, 2]}}'

CASES = [
    # (format, text, content, [(name, arguments)])
    ("llama3", '{"name": "get_weather", "parameters": ' + WEATHER_ARGS + "}", "", [("get_weather", WEATHER_ARGS)]),
    ("llama3", '<|python_tag|>{"name": "a", "arguments": {"x": 1}}; {"name": "b", "parameters": {}}', "",
     [("a", '{"x": 1}'), ("b", "{}")]),
    ("llama3", "  The weather is nice {not a call}", "  The weather is nice {not a call}", []),
    ("llama3", '{"no_name": 1}', '{"no_name": 1}', []),
    ("llama3", '{"name": "trunc", "parameters": {"x": "abc', "", [("trunc", '{"x": "abc')]),
    ("qwen25", 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": ' + WEATHER_ARGS + "}\n</tool_call>",
     "Let me check.\n", [("get_weather", WEATHER_ARGS)]),
    ("hermes", '<tool_call>\n{"name": "a", "arguments": {}}\n</tool_call>\n<tool_call>\n{"arguments": {"y": "}"}, '
     '"name": "b"}\n</tool_call>', "\n", [("a", "{}"), ("b", '{"y": "}"}')]),
    ("hermes", "No tools here, just <tool text.", "No tools here, just <tool text.", []),
    ("hermes", "<tool_call>broken</tool_call> then text", "<tool_call>broken</tool_call> then text", []),
    ("json_array", '[{"name": "a", "parameters": {"k": [1, {"z": null}]}}, {"name": "b", "parameters": {}}]', "",
     [("a", '{"k": [1, {"z": null}]}'), ("b", "{}")]),
    ("mistral", 'Sure. [TOOL_CALLS] [{"name": "get_weather", "arguments": ' + WEATHER_ARGS + '}, {"name": "b", '
     '"arguments": {}}]', "Sure. ", [("get_weather", WEATHER_ARGS), ("b", "{}")]),
    ("mistral", '[TOOL_CALLS]{"name": "a", "arguments": {"x": "[TOOL_CALLS]"}}', "", [("a", '{"x": "[TOOL_CALLS]"}')]),
    ("mistral", "No calls, just [TOOL text.", "No calls, just [TOOL text.", []),
    ("mistral", "[TOOL_CALLS] nonsense", "[TOOL_CALLS] nonsense", []),
    ("pythonic", '[get_weather(city="Pa\\"ris", unit={"deg": [1, 2]}), get_time(timezone=\'UTC\', dst=True, n=None)]', "",
     [("get_weather", '{"city": "Pa\\"ris", "unit": {"deg": [1, 2]}}'),
      ("get_time", '{"timezone": "UTC", "dst": true, "n": null}')]),
    ("pythonic", '<|python_start|>[noargs(), ns.fn(x=1.5)]<|python_end|>', "", [("noargs", "{}"), ("ns.fn", '{"x": 1.5}')]),
    ("pythonic", "The answer is [1, 2].", "The answer is [1, 2].", []),
    ("pythonic", "[1, 2, 3]", "[1, 2, 3]", []),
    ("pythonic", "[f(x=y)]", "[f(x=y)]", []),  # not a literal: not a call
    ("pythonic", '[trunc(a="x', '[trunc(a="x', []),  # cut off before any call completed: text
    ("pythonic", '[ok(a=1), bad(b=c)]', "", [("ok", '{"a": 1}')]),
]


def stream_parse(parser: ToolCallParser, text: str):
    prev_content, prev = "", []
    for k in range(1, len(text) + 1):
        out = parser.parse(text[:k], final=k == len(text))
        assert out.content.startswith(prev_content), (text[:k], out.content)
        assert len(out.calls) >= len(prev)
        for a, b in zip(prev, out.calls):
            assert a.name == b.name and b.arguments.startswith(a.arguments)
        prev_content, prev = out.content, out.calls
    return out


@pytest.mark.parametrize("fmt,text,content,calls", CASES)
def test_tool_call_parsers(fmt, text, content, calls):
    one_shot = ToolCallParser(fmt).parse(text, final=True)
    assert one_shot.content == content
    assert [(c.name, c.arguments) for c in one_shot.calls] == calls
    streamed = stream_parse(ToolCallParser(fmt), text)
    assert streamed == one_shot
    for name, args in calls:
        if not args.endswith("abc"):
            json.loads(args)


def test_named_parser_is_the_arguments():
    out = stream_parse(ToolCallParser("named", "get_time"), '{"timezone": "UTC"}')
    assert [(c.name, c.arguments) for c in out.calls] == [("get_time", '{"timezone": "UTC"}')]


@pytest.mark.parametrize(
    "name,text,reasoning,content",
    [
        ("qwen3", "<think>\nLet me think.\n</think>\n\nParis.", "Let me think.\n", "Paris."),
        ("qwen3", "Paris.", "", "Paris."),
        ("qwen3", "<think>still thinking", "still thinking", ""),
        ("deepseek-r1", "Hmm, France.</think>Paris.", "Hmm, France.", "Paris."),
        ("deepseek-r1", "<think>Hmm.</think>\nParis.", "Hmm.", "Paris."),
        ("deepseek-r1", "never closed </thi", "never closed </thi", ""),
    ],
)
def test_reasoning_parsers(name, text, reasoning, content):
    parser = ReasoningParser(name)
    prev = ("", "")
    for k in range(1, len(text) + 1):
        cur = parser.split(text[:k], final=k == len(text))
        assert cur[0].startswith(prev[0]) and cur[1].startswith(prev[1]), (text[:k], cur, prev)
        prev = cur
    assert prev == (reasoning, content) == parser.split(text, final=True)


def test_choice_output_deltas_reassemble():
    text = '<think>plan</think>Sure.\n<tool_call>\n{"name": "f", "arguments": {"a": [1, 2]}}\n</tool_call>'
    whole = ChoiceOutput(ReasoningParser("qwen3"), ToolCallParser("hermes"))
    whole.update(text, final=True)
    msg = whole.message()
    assert msg["reasoning_content"] == "plan" and msg["content"] == "Sure."
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in msg["tool_calls"]] == [("f", '{"a": [1, 2]}')]
    assert whole.finish_reason("stop") == "tool_calls" and whole.finish_reason("length") == "length"

    stream = ChoiceOutput(ReasoningParser("qwen3"), ToolCallParser("hermes"))
    reasoning, content, calls = "", "", {}
    for k in range(1, len(text) + 1):
        delta = stream.update(text[:k], final=k == len(text))
        reasoning += delta.get("reasoning_content", "")
        content += delta.get("content", "")
        for piece in delta.get("tool_calls", []):
            entry = calls.setdefault(piece["index"], ["", ""])
            entry[0] += piece.get("function", {}).get("name", "")
            entry[1] += piece["function"].get("arguments", "")
    assert (reasoning, content) == ("plan", "Sure.")
    assert calls == {0: ["f", '{"a": [1, 2]}']}


TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}},
         {"type": "function", "function": {"name": "noargs"}}]


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], tools=TOOLS, **kw)


def test_plan_tools_per_choice_and_grammar_compiles():
    import jsonschema
    import xgrammar as xgr

    assert plan_tools(chat(tool_choice="none"), "llama3") is None
    assert plan_tools(chat(), "llama3").fmt == "llama3"
    assert plan_tools(chat(tool_choice="auto"), "qwen25").fmt == "hermes"
    with pytest.raises(OpenAIError, match="--tool-call-parser"):
        plan_tools(chat(tool_choice="auto"), None)
    required = plan_tools(chat(tool_choice="required"), None)
    schema = json.loads(required.json_schema)
    jsonschema.validate([{"name": "get_weather", "parameters": {"city": "x"}}, {"name": "noargs", "parameters": {}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([], schema)
    named = plan_tools(chat(tool_choice={"type": "function", "function": {"name": "get_weather"}}), None)
    assert named.fmt == "named" and json.loads(named.json_schema)["required"] == ["city"]
    for plan in (required, named):
        xgr.Grammar.from_json_schema(plan.json_schema)
    one = plan_tools(chat(tool_choice="required", parallel_tool_calls=False), None)
    assert json.loads(one.json_schema)["maxItems"] == 1


def test_prepare_messages_without_native_tool_support(tokenizer=None):
    plan = plan_tools(chat(), "qwen25")
    req = chat()
    call = {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Lima"}'}}
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": [call]},
                {"role": "tool", "tool_call_id": "c1", "content": "sunny"}]
    out = prepare_messages(messages, plan, req.tools, native=False)
    assert out[0]["role"] == "system" and "<tools>" in out[0]["content"] and "get_weather" in out[0]["content"]
    assert out[2]["content"] == '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Lima"}}\n</tool_call>'
    assert "tool_calls" not in out[2] and out[3] == messages[2]
    native = prepare_messages(messages, plan, req.tools, native=True)
    assert native[1]["tool_calls"][0]["function"]["arguments"] == {"city": "Lima"} and native[0]["role"] == "user"

    class Tok:
        chat_template = "{% for m in messages %}{{ m.content }}{% endfor %}{% if tools %}{{ tools }}{% endif %}"

    assert template_supports_tools(Tok()) and not template_supports_tools(type("T", (), {"chat_template": "x"})())
