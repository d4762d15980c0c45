"""Tools in chat requests: which format the output takes, its grammar, and the prompt.

tool_choice decides:
- "none" (or no tools): tools are not shown to the model and nothing is parsed.
- "auto": the server's --tool-call-parser format (llama3 JSON, hermes/qwen25 `<tool_call>`
  blocks, mistral `[TOOL_CALLS] [...]` or pythonic `[f(a=1)]`); the model may answer in text
  instead. Tools with `function.strict: true` are then enforced by a grammar (tool_grammar.py).
- "required": the output is grammar-constrained to a JSON array of calls
  `[{"name": ..., "parameters": {...}}]` built from the tools' schemas, so it always parses.
- a named function: the output is grammar-constrained to that function's parameters.

Templates that render tools themselves (their source mentions `tools`) get them through
`apply_chat_template(tools=...)` with assistant tool-call arguments as objects. Templates
without tool support (SmolLM2's) get the tool descriptions and the expected call format
injected into the system prompt (added to the first system message, or as a new one),
and earlier assistant tool calls are written into the message text in that format, as
vLLM and SGLang do for such templates.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from sglserve.entrypoints.openai.chat_tool_grammar import named_schema, required_schema, strict_structural_tag
from sglserve.entrypoints.openai.serving_utils import OpenAIError
from sglserve.parser.tool_call_parser import ToolCallParser


@dataclass
class ToolPlan:
    fmt: str  # llama3 | hermes | json_array | named
    named: Optional[str] = None
    json_schema: Optional[str] = None  # grammar for required / named
    structural_tag: Optional[str] = None  # grammar for auto with strict tools

    def parser(self) -> ToolCallParser:
        return ToolCallParser(self.fmt, self.named)


def plan_tools(req: Any, server_parser: Optional[str]) -> Optional[ToolPlan]:
    """How this request's output is read (None: no tool calling)."""
    choice = req.tool_choice
    if not req.tools or choice == "none":
        if choice not in (None, "none", "auto"):
            raise OpenAIError("tool_choice needs tools.", param="tool_choice")
        return None
    names = [t.function.name for t in req.tools]
    if len(set(names)) != len(names):
        raise OpenAIError(f"Tool names must be unique, got {names}.", param="tools")
    if req.response_format is not None and req.response_format.type != "text" and choice not in (None, "auto"):
        raise OpenAIError("response_format cannot be combined with a forced tool_choice.", param="response_format")
    if choice is None or choice == "auto":
        if server_parser is None:
            raise OpenAIError(
                "tools with tool_choice 'auto' need the server to run with --tool-call-parser "
                "(llama3, qwen25, hermes, mistral or pythonic); tool_choice 'required' or a named function work "
                "without it.",
                param="tool_choice",
            )
        fmt = "hermes" if server_parser in ("qwen25", "hermes") else server_parser
        tag = None
        if req.response_format is None or req.response_format.type == "text":  # else the response_format rules
            tag = strict_structural_tag(fmt, req.tools)
        return ToolPlan(fmt, structural_tag=tag)
    if choice == "required":
        return ToolPlan("json_array", json_schema=required_schema(req.tools, req.parallel_tool_calls))
    name = choice.function.name
    tool = next((t for t in req.tools if t.function.name == name), None)
    if tool is None:
        raise OpenAIError(f"tool_choice names {name!r}, which is not among the tools {names}.", param="tool_choice")
    return ToolPlan("named", named=name, json_schema=named_schema(tool))


def template_supports_tools(tokenizer: Any) -> bool:
    template = getattr(tokenizer, "chat_template", None) or ""
    return "tools" in template if isinstance(template, str) else False


def _call_text(fmt: str, name: str, arguments: Any) -> str:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    if fmt == "hermes":
        return f'<tool_call>\n{{"name": {json.dumps(name)}, "arguments": {args}}}\n</tool_call>'
    if fmt == "mistral":
        return f'[TOOL_CALLS] [{{"name": {json.dumps(name)}, "arguments": {args}}}]'
    if fmt == "pythonic":
        try:
            kwargs = ", ".join(f"{k}={v!r}" for k, v in json.loads(args).items())
        except (ValueError, AttributeError):
            kwargs = ""
        return f"[{name}({kwargs})]"
    return f'{{"name": {json.dumps(name)}, "parameters": {args}}}'


def instructions(plan: ToolPlan, tools: List[Any]) -> str:
    """The system-prompt text for templates that do not render tools."""
    specs = "\n".join(json.dumps({"type": "function", "function": t.function.model_dump(exclude_none=True)}) for t in tools)
    if plan.fmt == "hermes":
        return ("You may call one or more functions to assist with the user query. The functions are listed "
                f"within <tools></tools> XML tags:\n<tools>\n{specs}\n</tools>\n\nFor each function call, return a "
                "json object with function name and arguments within <tool_call></tool_call> XML tags:\n"
                '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>')
    if plan.fmt == "llama3":
        return ("You have access to the following functions. To call a function, respond only with a JSON object "
                'of the form {"name": function name, "parameters": dictionary of argument name and its value}. '
                f"Do not use variables.\n\n{specs}")
    if plan.fmt == "mistral":
        return ("You have access to the following functions. To call functions, respond only with [TOOL_CALLS] "
                'followed by a JSON array of calls, each of the form {"name": function name, "arguments": '
                f"dictionary of argument name and its value}}.\n\n{specs}")
    if plan.fmt == "pythonic":
        return ("You have access to the following functions. To call functions, respond only with a Python list "
                "of calls with keyword arguments, like [func_name1(param1=value1, param2=value2), "
                f"func_name2(param=value)].\n\n{specs}")
    if plan.fmt == "json_array":
        return ("You have access to the following functions. Respond with a JSON array of the function calls to "
                'make, each of the form {"name": function name, "parameters": dictionary of argument name and its '
                f"value}}.\n\n{specs}")
    return f"Call the function {plan.named}. Respond with its arguments as a JSON object.\n\n{specs}"


def prepare_messages(messages: List[Dict[str, Any]], plan: Optional[ToolPlan], tools: Optional[List[Any]],
                     native: bool) -> List[Dict[str, Any]]:
    """Assistant tool calls and tool results in the shape the template expects."""
    fmt = plan.fmt if plan is not None and plan.fmt in ("hermes", "llama3", "mistral", "pythonic") else "llama3"
    out = []
    for msg in messages:
        msg = dict(msg)
        calls = msg.get("tool_calls")
        if msg.get("role") == "assistant" and calls:
            if native:  # templates index arguments as a mapping
                msg["tool_calls"] = [_with_object_args(c) for c in calls]
            else:
                text = "\n".join(_call_text(fmt, c.get("function", {}).get("name", ""), c.get("function", {}).get("arguments", "{}"))
                                 for c in calls)
                msg["content"] = f"{msg.get('content') or ''}{text}" if not msg.get("content") else f"{msg['content']}\n{text}"
                del msg["tool_calls"]
        out.append(msg)
    if plan is not None and tools and not native:
        text = instructions(plan, tools)
        if out and out[0].get("role") == "system":
            out[0] = {**out[0], "content": f"{out[0].get('content') or ''}\n\n{text}".lstrip()}
        else:
            out.insert(0, {"role": "system", "content": text})
    return out


def _with_object_args(call: Dict[str, Any]) -> Dict[str, Any]:
    fn = dict(call.get("function") or {})
    if isinstance(fn.get("arguments"), str):
        try:
            fn["arguments"] = json.loads(fn["arguments"])
        except ValueError:
            pass
    return {**call, "function": fn}
