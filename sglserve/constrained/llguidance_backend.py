"""Constrained decoding with llguidance (`--grammar-backend llguidance`): the same JSON schema,
regex and EBNF requests as xgrammar.

EBNF: llguidance's native grammar language is Lark (`start: "a" | "b"`). An `ebnf` request
may be written in either dialect: GBNF (`root ::= ...`, what xgrammar takes, so one request
works on both backends) is translated to Lark by llguidance's converter; Lark is used as is.

JSON grammars use compact separators and no free whitespace, and object schemas admit no keys
beyond their `properties` unless they say `additionalProperties` (`strict_objects`):
what xgrammar's strict mode does, so one request gives the same kind of output on both.

llguidance's matcher stops by itself once the grammar is complete and then allows only the
stop tokens; `_Matcher` reports termination only once a stop token was accepted, which is
when xgrammar reports it too, so the scheduler treats both backends alike.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

from sglserve.constrained import structural_tag
from sglserve.constrained.base import NAMES, BaseGrammarBackend, GrammarKey, check_text

JSON_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}  # as xgrammar writes JSON


def strict_objects(schema: Any) -> Any:
    """A copy of `schema` where every object schema (type object, or with properties) that does not
    say additionalProperties / unevaluatedProperties / patternProperties gets additionalProperties: false."""
    if isinstance(schema, list):
        return [strict_objects(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_objects(v) for k, v in schema.items()}
    is_object = "properties" in out or out.get("type") == "object"
    if is_object and not {"additionalProperties", "unevaluatedProperties", "patternProperties"} & set(out):
        out["additionalProperties"] = False
    return out


def _serialize(key: GrammarKey) -> str:
    """The request's grammar as llguidance's grammar text; ValueError when it cannot be converted."""
    import llguidance as llg

    kind, text = key
    if kind == "json":
        try:
            schema = json.loads(text)
        except ValueError as e:
            raise ValueError(f"not JSON: {e}") from None
        return llg.LLMatcher.grammar_from_json_schema(json.dumps(strict_objects(schema)), defaults=JSON_OPTIONS)
    if kind == "regex":
        return llg.LLMatcher.grammar_from_regex(text)
    if kind == "structural_tag":
        return llg.LLMatcher.grammar_from_lark(structural_tag.to_lark(text))
    if "::=" in text:  # GBNF
        return llg.grammar_from("gbnf", text)
    return llg.LLMatcher.grammar_from_lark(text)


def validate(key: GrammarKey) -> None:
    """Raises ValueError with llguidance's message when the grammar does not parse."""
    import llguidance as llg

    check_text(key)
    try:
        error = llg.LLMatcher.validate_grammar(_serialize(key), None)
    except ValueError as e:  # not JSON, or GBNF that does not convert, or a malformed structural_tag
        if str(e).startswith("Invalid structural_tag"):
            raise
        error = str(e)
    if error:
        raise ValueError(f"Invalid {NAMES[key[0]]}: {error.strip()}")


class _Matcher:
    """An LLMatcher with xgrammar's matcher interface."""

    def __init__(self, matcher: Any, stop_token_ids: frozenset) -> None:
        self.m, self.stop_token_ids = matcher, stop_token_ids
        self.done = False

    def accept_token(self, token: int) -> bool:
        ok = self.m.consume_token(token)
        if ok and token in self.stop_token_ids and self.m.is_stopped():
            self.done = True
        return ok and not self.m.is_error()

    def is_terminated(self) -> bool:
        return self.done

    def fill_next_token_bitmask(self, mask: Any, row: int) -> None:
        from llguidance.torch import fill_next_token_bitmask

        fill_next_token_bitmask(self.m, mask, row)


class LLGuidanceBackend(BaseGrammarBackend):
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int], max_threads: int = 2) -> None:
        import llguidance.hf

        super().__init__(vocab_size, stop_token_ids, max_threads)
        self.tokenizer = llguidance.hf.from_tokenizer(tokenizer, vocab_size, eos_token=self.stop_token_ids or None)
        self.stops = frozenset(self.stop_token_ids)

    def _compile(self, key: GrammarKey) -> Any:
        """A matcher in its start state; each request gets a copy (the compiled grammar is shared)."""
        import llguidance as llg

        matcher = llg.LLMatcher(self.tokenizer, _serialize(key), log_level=0)
        if matcher.is_error():
            raise ValueError(matcher.get_error())
        return matcher

    def new_matcher(self, compiled: Any) -> _Matcher:
        return _Matcher(compiled.deep_copy(), self.stops)
