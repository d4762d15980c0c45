"""A Responses request -> chat messages and a ChatCompletionRequest (the chat path does the rest).

- `input`: a string (one user message) or a list of items: messages ({role, content} with
  content a string or input_text / output_text parts), `function_call` items (an assistant
  tool call) and `function_call_output` items (a tool message). `reasoning` items are dropped,
  as chat templates drop earlier reasoning. Any other item or part type is a 400 naming it.
- Output items of a stored response become the assistant turn of the next request
  (`output_messages`), so previous_response_id continues the conversation.
- tools are flat in the Responses API ({type: function, name, parameters}); chat nests them.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from sglserve.entrypoints.openai.protocol import ChatCompletionRequest
from sglserve.entrypoints.openai.protocol_responses import SAMPLING_EXTRAS, ResponsesRequest
from sglserve.entrypoints.openai.serving_utils import OpenAIError

ROLES = ("user", "system", "developer", "assistant")
TEXT_PARTS = ("input_text", "output_text", "text")


def _text_of(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise OpenAIError(f"{param} must be a string or a list of text parts.", param=param)
    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in TEXT_PARTS or not isinstance(part.get("text"), str):
            raise OpenAIError(f"{param}[{j}]: only text parts ({', '.join(TEXT_PARTS)}) are supported, got type "
                              f"{kind!r}.", param=f"{param}.{j}")
        texts.append(part["text"])
    return "".join(texts)


def _add_call(messages: List[Dict[str, Any]], call: Dict[str, Any]) -> None:
    """An assistant tool call joins the assistant message right before it, or starts one."""
    last = messages[-1] if messages else None
    if last is None or last["role"] != "assistant":
        last = {"role": "assistant", "content": None}
        messages.append(last)
    last.setdefault("tool_calls", []).append(call)


def input_messages(items: Any) -> List[Dict[str, Any]]:
    """`input` -> chat messages (dicts as ChatCompletionMessageParam takes them)."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: List[Dict[str, Any]] = []
    for i, item in enumerate(items):
        param = f"input.{i}"
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise OpenAIError(f"{param}.role must be one of {list(ROLES)}, got {role!r}.", param=f"{param}.role")
            messages.append({"role": role, "content": _text_of(item.get("content", ""), f"{param}.content")})
        elif kind == "function_call":
            if not isinstance(item.get("name"), str) or not isinstance(item.get("call_id"), str):
                raise OpenAIError(f"{param}: a function_call item needs name and call_id.", param=param)
            arguments = item.get("arguments", "{}")
            _add_call(messages, {"id": item["call_id"], "type": "function",
                                 "function": {"name": item["name"], "arguments": arguments}})
        elif kind == "function_call_output":
            if not isinstance(item.get("call_id"), str):
                raise OpenAIError(f"{param}: a function_call_output item needs call_id.", param=param)
            messages.append({"role": "tool", "tool_call_id": item["call_id"],
                             "content": _text_of(item.get("output", ""), f"{param}.output")})
        elif kind == "reasoning":
            continue
        else:
            raise OpenAIError(f"{param}: input items of type {kind!r} are not supported (message, function_call, "
                              "function_call_output, reasoning).", param=param)
    return messages


def output_messages(output: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """A response's output items -> the assistant turn as chat messages."""
    messages: List[Dict[str, Any]] = []
    for item in output:
        if item["type"] == "message":
            text = "".join(part.get("text", "") for part in item["content"])
            messages.append({"role": "assistant", "content": text})
        elif item["type"] == "function_call":
            _add_call(messages, {"id": item["call_id"], "type": "function",
                                 "function": {"name": item["name"], "arguments": item["arguments"]}})
    return messages


def _tools(req: ResponsesRequest) -> Optional[List[Dict[str, Any]]]:
    if not req.tools:
        return None
    tools = []
    for i, tool in enumerate(req.tools):
        if tool.type != "function":
            raise OpenAIError(f"tools[{i}]: tools of type {tool.type!r} are not supported; only function tools.",
                              param=f"tools.{i}.type")
        if not tool.name:
            raise OpenAIError(f"tools[{i}]: a function tool needs a name.", param=f"tools.{i}.name")
        fn = {"name": tool.name, "description": tool.description, "parameters": tool.parameters, "strict": tool.strict}
        tools.append({"type": "function", "function": {k: v for k, v in fn.items() if v is not None}})
    return tools


def _tool_choice(choice: Any) -> Any:
    if choice is None or isinstance(choice, str):
        return choice
    if choice.get("type") == "function" and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise OpenAIError(f"tool_choice {choice!r} is not supported; use none, auto, required or "
                      '{"type": "function", "name": ...}.', param="tool_choice")


def _response_format(req: ResponsesRequest) -> Optional[Dict[str, Any]]:
    fmt = req.text.format if req.text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None:
        raise OpenAIError("text.format json_schema needs a schema.", param="text.format.schema")
    return {"type": "json_schema", "json_schema": {"name": fmt.name or "response", "schema": fmt.schema_,
                                                   "strict": bool(fmt.strict)}}


def to_chat_request(req: ResponsesRequest, messages: List[Dict[str, Any]]) -> ChatCompletionRequest:
    """The chat request that serves this Responses request (messages: instructions, history, input)."""
    extra = {k: v for k, v in (req.model_extra or {}).items() if k in SAMPLING_EXTRAS}
    kwargs = extra.get("chat_template_kwargs")
    if req.reasoning is not None and req.reasoning.effort is not None and isinstance(kwargs, (dict, type(None))):
        extra["chat_template_kwargs"] = {"reasoning_effort": req.reasoning.effort, **(kwargs or {})}  # for templates that read it
    return ChatCompletionRequest(
        model=req.model, messages=messages, max_tokens=req.max_output_tokens, temperature=req.temperature,
        top_p=req.top_p, stream=req.stream, tools=_tools(req), tool_choice=_tool_choice(req.tool_choice),
        parallel_tool_calls=req.parallel_tool_calls, response_format=_response_format(req), **extra,
    )
