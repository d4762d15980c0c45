"""SGLang's `stop_regex` sampling parameter: the output stops where one of the patterns matches.

The patterns use Python's `re` syntax (the `regex` package, a superset, runs them because it
can also report a *partial* match at the end of a text, which `re` cannot).

- The scheduler (Req.check_finished) searches the text of the last TAIL_TOKENS output
  tokens after every token: a match must end in the newest token and begin within that
  window (SGLang bounds its search the same way).
- The detokenizer, while a request streams, holds back the text from the start of the
  earliest partial match (text that could still become a match), as it holds back a possible
  stop string; on the finish the text is cut at the first match (unless no_stop_trim).
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence

import regex

TAIL_TOKENS = 64


class StopRegexError(ValueError):
    pass


@functools.lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> "regex.Pattern":
    try:
        rx = regex.compile(pattern)
    except regex.error as e:
        raise StopRegexError(f"stop_regex {pattern!r} is not a valid regular expression: {e}") from None
    if rx.fullmatch(""):
        raise StopRegexError(f"stop_regex {pattern!r} matches the empty string, so it would stop every output at once.")
    return rx


def first_match(text: str, patterns: Sequence[str]) -> Optional["regex.Match"]:
    """The match that starts first in `text` (ties: the longer), or None."""
    best = None
    for p in patterns:
        m = compile_pattern(p).search(text)
        if m is not None and (best is None or (m.start(), -m.end()) < (best.start(), -best.end())):
            best = m
    return best


def hold_start(text: str, patterns: Sequence[str]) -> int:
    """Where the text that could still become a match begins (len(text): nothing to hold)."""
    start = len(text)
    for p in patterns:
        m = compile_pattern(p).search(text, partial=True)
        if m is not None:
            start = min(start, m.start())
    return start


def as_list(value) -> List[str]:
    """The parameter (a string or a list of strings) as a list of patterns; StopRegexError if malformed."""
    patterns = [value] if isinstance(value, str) else value
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise StopRegexError(f"stop_regex must be a non-empty string or a list of them, got {value!r}.")
    for p in patterns:
        compile_pattern(p)
    return patterns
