"""One chat choice's output: text -> reasoning_content, content and tool_calls, as deltas.

`ChoiceOutput.update(text, final)` takes the cumulative text, runs the reasoning parser and
then the tool-call parser on the answer part, and returns the delta since the previous
call (reasoning, content, tool-call pieces as OpenAI streams them: the first piece of a
call carries index, id, type and the function name; later pieces carry argument text).
Non-streaming responses call it once with final=True; the parsers are monotonic, so the
streamed deltas concatenate to the non-streaming message.
"""

from __future__ import annotations

import uuid
from typing import Any, Dict, List, Optional

from sglserve.parser.reasoning_parser import ReasoningParser
from sglserve.parser.tool_call_parser import ToolCallParser


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ChoiceOutput:
    def __init__(self, reasoning: Optional[ReasoningParser], tools: Optional[ToolCallParser]) -> None:
        self.reasoning_parser, self.tool_parser = reasoning, tools
        self.reasoning = ""
        self.content = ""
        self.calls: List[Dict[str, Any]] = []  # {"id", "type", "function": {"name", "arguments"}}
        self.sent_logprobs = 0  # output positions whose logprobs were streamed

    def update(self, text: str, final: bool) -> Dict[str, Any]:
        """The delta: a dict with any of reasoning_content, content, tool_calls."""
        if self.reasoning_parser is not None:
            reasoning, answer = self.reasoning_parser.split(text, final)
        else:
            reasoning, answer = "", text
        calls = []
        if self.tool_parser is not None:
            parsed = self.tool_parser.parse(answer, final)
            answer, calls = parsed.content, parsed.calls
            # whitespace around tool calls is not worth a content delta: hold it until text follows
            # (rstrip keeps the text monotonic: a prefix's rstrip is a prefix of the whole's)
            answer = answer.rstrip() if (calls or not final) else answer
        delta: Dict[str, Any] = {}
        if len(reasoning) > len(self.reasoning):
            delta["reasoning_content"] = reasoning[len(self.reasoning):]
            self.reasoning = reasoning
        if len(answer) > len(self.content):
            delta["content"] = answer[len(self.content):]
            self.content = answer
        pieces = []
        for k, call in enumerate(calls):
            args = call.arguments or ("{}" if final else "")
            if k == len(self.calls):
                self.calls.append({"id": new_call_id(), "type": "function", "function": {"name": call.name, "arguments": ""}})
                pieces.append({"index": k, "id": self.calls[k]["id"], "type": "function",
                               "function": {"name": call.name, "arguments": args}})
            else:
                sent = self.calls[k]["function"]["arguments"]
                if len(args) > len(sent):
                    pieces.append({"index": k, "function": {"arguments": args[len(sent):]}})
            self.calls[k]["function"]["arguments"] = args
        if pieces:
            delta["tool_calls"] = pieces
        return delta

    def message(self) -> Dict[str, Any]:
        """The whole message once final (non-streaming)."""
        return {
            # no answer text next to tool calls or reasoning: null, as OpenAI / vLLM send it
            "content": self.content if (self.content or not (self.calls or self.reasoning)) else None,
            "reasoning_content": self.reasoning or None,
            "tool_calls": self.calls or None,
        }

    def finish_reason(self, reason: Optional[str]) -> Optional[str]:
        return "tool_calls" if reason == "stop" and self.calls else reason
