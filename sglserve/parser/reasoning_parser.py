"""Reasoning parsers: split `<think>...</think>` reasoning from the answer.

- qwen3: reasoning only when the output starts with `<think>` (Qwen3 writes the tag
  itself; with enable_thinking=False its template puts an empty think block in the prompt
  and the output is all answer).
- deepseek-r1: the template opens `<think>` in the prompt, so the output starts inside the
  reasoning (a leading `<think>` is tolerated) and the answer starts after `</think>`.

`reasoning_tokens(ids, decode)` counts the output tokens spent reasoning (usage's
completion_tokens_details.reasoning_tokens): those up to and including the one that
completes `</think>`, or every one when the block never closes; 0 without a think block.

`split(text, final)` works on the whole text so far and is monotonic: what it returns for
a prefix of the text is a prefix of what it returns later, so a stream can send the
difference each time. While not final, a trailing piece that could be the start of a tag
is held back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

THINK_START, THINK_END = "<think>", "</think>"
REASONING_PARSERS = ("qwen3", "deepseek-r1")


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of text that is a proper prefix of tag."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if tag.startswith(text[-n:]):
            return n
    return 0


@dataclass
class ReasoningParser:
    name: str

    def __post_init__(self) -> None:
        if self.name not in REASONING_PARSERS:
            raise ValueError(f"Unknown reasoning parser {self.name!r}; allowed: {list(REASONING_PARSERS)}")
        self.starts_inside = self.name == "deepseek-r1"

    def split(self, text: str, final: bool) -> Tuple[str, str]:
        """(reasoning, content) of the text so far."""
        body = text.lstrip()
        if body.startswith(THINK_START):
            body = body[len(THINK_START):].lstrip("\n")
        elif not self.starts_inside:
            if not final and THINK_START.startswith(body):  # maybe a tag to come
                return "", ""
            return "", text
        elif not final and body and THINK_START.startswith(body):
            return "", ""
        end = body.find(THINK_END)
        if end == -1:
            hold = 0 if final else _partial_suffix(body, THINK_END)
            return body[: len(body) - hold], ""
        return body[:end], body[end + len(THINK_END):].lstrip("\n")

    def reasoning_tokens(self, output_ids: Sequence[int], decode: Callable[[List[int]], str]) -> int:
        """How many of the output tokens are reasoning (see the module docstring). The first
        prefix whose text holds the end tag is found by bisection: log2(n) decodes."""
        ids = list(output_ids)
        text = decode(ids)
        body = text.lstrip()
        if not (body.startswith(THINK_START) or self.starts_inside) or not ids:
            return 0
        if THINK_END not in body:
            return len(ids)
        lo, hi = 1, len(ids)  # the answer is in [lo, hi]: decode(ids[:hi]) holds the tag
        while lo < hi:
            mid = (lo + hi) // 2
            if THINK_END in decode(ids[:mid]):
                hi = mid
            else:
                lo = mid + 1
        return lo
