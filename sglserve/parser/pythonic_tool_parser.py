"""The pythonic tool-call format (Llama-3.2 / Llama-4, `--tool-call-parser pythonic`): the output is
a Python list of calls, `[get_weather(city="Paris", unit="celsius"), get_time(timezone="UTC")]`,
optionally inside `<|python_start|>` ... `<|python_end|>` (Llama 4).

Argument values are Python literals (strings, numbers, True/False/None, lists, dicts), turned
into a JSON object with `ast.literal_eval`. Streaming: a call is reported whole once its
closing parenthesis arrives (a Python literal is not a JSON prefix, so its arguments cannot be
streamed as JSON text piece by piece), which keeps the parse monotonic. Output that is not a
call list is plain content; a list that turns invalid after valid calls keeps those calls.
"""

from __future__ import annotations

import ast
import json
import re
from typing import List, Optional, Tuple

PY_START, PY_END = "<|python_start|>", "<|python_end|>"
_NAME = re.compile(r"\s*([A-Za-z_][\w.]*)\s*\(")
_WS = " \t\n\r"


def _close(s: str, i: int) -> Optional[int]:
    """Index after the parenthesis closing the one before s[i] (strings and brackets skipped), or None."""
    depth, quote = 1, None
    while i < len(s):
        c = s[i]
        if quote:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'":
            quote = c
        elif c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _arguments(call: str) -> Optional[Tuple[str, str]]:
    """(name, JSON arguments) of one complete call text `name(k=v, ...)`, or None if it is not one."""
    try:
        node = ast.parse(call.strip(), mode="eval").body
    except SyntaxError:
        return None
    if not isinstance(node, ast.Call) or node.args or not isinstance(node.func, (ast.Name, ast.Attribute)):
        return None
    try:
        args = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg is not None}
        text = json.dumps(args, ensure_ascii=False)
    except (ValueError, TypeError, SyntaxError):
        return None
    return ast.unparse(node.func), text


def parse_pythonic(text: str, final: bool, draft_cls) -> Tuple[Optional[str], List]:
    """(content or None when the text is a call list, calls as draft_cls(name, arguments, complete))."""
    body = text.lstrip(_WS)
    if body.startswith(PY_START):
        body = body[len(PY_START):].lstrip(_WS)
    elif not final and PY_START.startswith(body):  # nothing yet, or maybe the tag
        return None, []
    if not body:
        return (text if final else None), []
    if body[0] != "[":
        return text, []
    calls, j = [], 1
    while True:
        while j < len(body) and body[j] in _WS + ",":
            j += 1
        if j >= len(body) or body[j] == "]":
            break
        m = _NAME.match(body, j)
        if m is None:
            if not calls and (final or not re.fullmatch(r"\s*[A-Za-z_][\w.]*\s*", body[j:])):
                return text, []
            break
        end = _close(body, m.end())
        if end is None:
            break
        parsed = _arguments(body[j:end])
        if parsed is None:
            return (text, []) if final and not calls else (None, calls)
        calls.append(draft_cls(parsed[0], parsed[1], True))
        j = end
    if final and not calls:
        return text, []
    return None, calls
