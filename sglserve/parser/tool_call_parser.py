"""Tool-call parsers: model text -> (content, tool calls), streaming-aware.

Formats (`--tool-call-parser`, or forced by tool_choice):
- llama3: the output is one or more JSON objects `{"name": ..., "parameters": {...}}`
  (or "arguments"), optionally after `<|python_tag|>`, separated by `;` or whitespace.
  Output that does not start with `{` / `<|python_tag|>` is plain content.
- hermes (= qwen25): `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` blocks;
  text outside the blocks is content.
- mistral: `[TOOL_CALLS] [{"name": ..., "arguments": {...}}, ...]`; text before the tag is content.
- pythonic (Llama-3.2 / Llama-4): `[f(a=1), g(b="x")]` (pythonic_tool_parser.py).
- json_array (tool_choice "required", grammar-enforced): `[{"name": ..., "parameters": {...}}, ...]`.
- named (tool_choice naming one function, grammar-enforced): the output is its arguments.

`parse(text, final)` looks at the whole text so far and is monotonic: content, the list of
named calls and each call's arguments only grow as the text grows, so a stream sends the
difference. Arguments are the model's own JSON text of the value (a slice of the output),
so streamed argument deltas concatenate to exactly the non-streaming `arguments` string.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from sglserve.parser.pythonic_tool_parser import parse_pythonic

TOOL_CALL_PARSERS = ("llama3", "qwen25", "hermes", "mistral", "pythonic")
PYTHON_TAG = "<|python_tag|>"
MISTRAL_TAG = "[TOOL_CALLS]"
HERMES_START, HERMES_END = "<tool_call>", "</tool_call>"
_WS = " \t\n\r"


@dataclass
class ToolCallDraft:
    name: Optional[str]
    arguments: str  # raw JSON text of the arguments so far
    complete: bool = False


@dataclass
class ToolParse:
    content: str
    calls: List[ToolCallDraft] = field(default_factory=list)


# ---- a tiny JSON scanner that knows where values start and end --------------------------


def _skip(s: str, i: int, chars: str = _WS) -> int:
    while i < len(s) and s[i] in chars:
        i += 1
    return i


def _scan_string(s: str, i: int) -> Optional[int]:
    j = i + 1
    while j < len(s):
        if s[j] == "\\":
            j += 2
            continue
        if s[j] == '"':
            return j + 1
        j += 1
    return None


def _scan_value(s: str, i: int) -> Optional[int]:
    """End index of the JSON value starting at s[i], or None if the text ends inside it."""
    if s[i] == '"':
        return _scan_string(s, i)
    if s[i] in "{[":
        depth, j = 0, i
        while j < len(s):
            c = s[j]
            if c == '"':
                end = _scan_string(s, j)
                if end is None:
                    return None
                j = end
                continue
            if c in "{[":
                depth += 1
            elif c in "}]":
                depth -= 1
                if depth == 0:
                    return j + 1
            j += 1
        return None
    j = i
    while j < len(s) and s[j] not in ",}]" + _WS:
        j += 1
    return j if j < len(s) else None


def scan_object(s: str, i: int) -> Tuple[Optional[int], Dict[str, Tuple[int, Optional[int]]], bool]:
    """Scan the object at s[i] == '{': (end or None, key -> (value start, value end or None), valid)."""
    fields: Dict[str, Tuple[int, Optional[int]]] = {}
    j = i + 1
    while True:
        j = _skip(s, j)
        if j >= len(s):
            return None, fields, True
        if s[j] == "}":
            return j + 1, fields, True
        if s[j] == ",":
            j += 1
            continue
        if s[j] != '"':
            return None, fields, False
        key_end = _scan_string(s, j)
        if key_end is None:
            return None, fields, True
        try:
            key = json.loads(s[j:key_end])
        except ValueError:
            return None, fields, False
        j = _skip(s, key_end)
        if j >= len(s):
            return None, fields, True
        if s[j] != ":":
            return None, fields, False
        j = _skip(s, j + 1)
        if j >= len(s):
            return None, fields, True
        end = _scan_value(s, j)
        fields[key] = (j, end)
        if end is None:
            return None, fields, True
        j = end


def _draft(s: str, start: int) -> Tuple[Optional[ToolCallDraft], Optional[int], bool]:
    """The call object at s[start] == '{': (draft or None if nameless, end, valid)."""
    end, fields, ok = scan_object(s, start)
    name = None
    if "name" in fields and fields["name"][1] is not None:
        try:
            value = json.loads(s[fields["name"][0]: fields["name"][1]])
            name = value if isinstance(value, str) else None
        except ValueError:
            name = None
    if name is None:
        return None, end, ok
    key = "parameters" if "parameters" in fields else "arguments" if "arguments" in fields else None
    args = ""
    if key is not None:
        v0, v1 = fields[key]
        args = s[v0: len(s) if v1 is None else v1]
    return ToolCallDraft(name, args, end is not None), end, ok


def _partial_suffix(text: str, tag: str) -> int:
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


class ToolCallParser:
    def __init__(self, fmt: str, named: Optional[str] = None) -> None:
        if fmt == "qwen25":
            fmt = "hermes"
        if fmt not in ("llama3", "hermes", "mistral", "pythonic", "json_array", "named"):
            raise ValueError(f"Unknown tool-call format {fmt!r}")
        self.fmt, self.named = fmt, named

    def parse(self, text: str, final: bool) -> ToolParse:
        return getattr(self, f"_parse_{self.fmt}")(text, final)

    def _parse_named(self, text: str, final: bool) -> ToolParse:
        return ToolParse("", [ToolCallDraft(self.named, text.lstrip(), final)])

    def _objects(self, s: str, j: int, seps: str) -> List[ToolCallDraft]:
        """Call objects from s[j] on, separated by whitespace and `seps`."""
        calls = []
        while True:
            j = _skip(s, j, _WS + seps)
            if j >= len(s) or s[j] != "{":
                return calls
            draft, end, ok = _draft(s, j)
            if draft is not None:
                calls.append(draft)
            if end is None or not ok:
                return calls
            j = end

    def _parse_llama3(self, text: str, final: bool) -> ToolParse:
        j = _skip(text, 0)
        rest = text[j:]
        if rest.startswith(PYTHON_TAG):
            j += len(PYTHON_TAG)
        elif not final and PYTHON_TAG.startswith(rest):  # nothing yet, or maybe the tag
            return ToolParse("")
        elif not rest.startswith("{"):
            return ToolParse(text)
        calls = self._objects(text, j, ";,")
        if final and not calls:
            return ToolParse(text)  # not a tool call after all
        return ToolParse("", calls)

    def _parse_mistral(self, text: str, final: bool) -> ToolParse:
        start = text.find(MISTRAL_TAG)
        if start == -1:
            hold = 0 if final else _partial_suffix(text, MISTRAL_TAG)
            return ToolParse(text[: len(text) - hold])
        content = text[:start]
        j = _skip(text, start + len(MISTRAL_TAG))
        if j >= len(text):
            return ToolParse(text if final else content)
        if text[j] == "{":  # a single call without the list
            calls = self._objects(text, j, ",")
        elif text[j] == "[":
            calls = self._objects(text, j + 1, ",")
        else:
            calls = []
        if final and not calls:
            return ToolParse(text)
        return ToolParse(content, calls)

    def _parse_pythonic(self, text: str, final: bool) -> ToolParse:
        content, calls = parse_pythonic(text, final, ToolCallDraft)
        return ToolParse(content if content is not None else "", calls)

    def _parse_json_array(self, text: str, final: bool) -> ToolParse:
        j = _skip(text, 0)
        if j >= len(text):
            return ToolParse(text if final else "")
        if text[j] != "[":
            return ToolParse(text)
        calls = self._objects(text, j + 1, ",")
        if final and not calls:
            return ToolParse(text)
        return ToolParse("", calls)

    def _parse_hermes(self, text: str, final: bool) -> ToolParse:
        content, calls, pos = [], [], 0
        while True:
            start = text.find(HERMES_START, pos)
            if start == -1:
                tail = text[pos:]
                hold = 0 if final else _partial_suffix(tail, HERMES_START)
                content.append(tail[: len(tail) - hold])
                break
            content.append(text[pos:start])
            body = start + len(HERMES_START)
            close = text.find(HERMES_END, body)
            block = text[body: len(text) if close == -1 else close]
            j = _skip(block, 0)
            draft = _draft(block, j)[0] if j < len(block) and block[j] == "{" else None
            if close == -1:  # the block is still being written
                if draft is not None:
                    calls.append(draft)
                elif final:
                    content.append(text[start:])
                break
            if draft is not None:
                draft.complete = True
                calls.append(draft)
            else:  # not a valid call: show it as text
                content.append(text[start: close + len(HERMES_END)])
            pos = close + len(HERMES_END)
        return ToolParse("".join(content), calls)
