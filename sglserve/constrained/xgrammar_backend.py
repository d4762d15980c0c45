"""Constrained decoding with xgrammar (`--grammar-backend xgrammar`, the default): JSON schema,
regex and EBNF (xgrammar's GBNF dialect, `root ::= ...`) grammars.

- `validate` runs in the HTTP process: it parses the grammar without a tokenizer (cheap) so
  an invalid schema / regex / EBNF is a 400 with xgrammar's message and never reaches the
  scheduler.
- `XGrammarBackend` lives in the scheduler (base.py: thread pool, cache, bitmask).

JSON grammars use compact whitespace (`any_whitespace=False`): a small model cannot wander
into endless spaces and newlines, and the output is still any valid instance of the schema.
"""

from __future__ import annotations

import re
from typing import Any, Iterable

from sglserve.constrained import structural_tag
from sglserve.constrained.base import NAMES, BaseGrammarBackend, GrammarKey, check_text

# xgrammar prefixes its messages with "[time] /path/file.cc:line: "
_XGR_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")


def clean_error(e: BaseException) -> str:
    return _XGR_PREFIX.sub("", str(e).strip()).strip()


def validate(key: GrammarKey) -> None:
    """Raises ValueError with xgrammar's message when the grammar does not parse."""
    import xgrammar as xgr

    check_text(key)
    kind, text = key
    try:
        if kind == "json":
            xgr.Grammar.from_json_schema(text, any_whitespace=False)
        elif kind == "regex":
            xgr.Grammar.from_regex(text)
        elif kind == "structural_tag":
            xgr.Grammar.from_structural_tag(structural_tag.to_xgrammar(text))
        else:
            xgr.Grammar.from_ebnf(text)
    except ValueError as e:
        if str(e).startswith("Invalid structural_tag"):  # our own shape check: its message as is
            raise
        raise ValueError(f"Invalid {NAMES[kind]}: {clean_error(e)}") from None
    except Exception as e:  # xgrammar raises RuntimeError / InvalidJSONError with its parser's message
        raise ValueError(f"Invalid {NAMES[kind]}: {clean_error(e)}") from None


class XGrammarBackend(BaseGrammarBackend):
    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int], max_threads: int = 2) -> None:
        import xgrammar as xgr

        super().__init__(vocab_size, stop_token_ids, max_threads)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids)
        self.compiler = xgr.GrammarCompiler(info, max_threads=max_threads)

    def _compile(self, key: GrammarKey) -> Any:
        kind, text = key
        if kind == "json":
            return self.compiler.compile_json_schema(text, any_whitespace=False)
        if kind == "regex":
            return self.compiler.compile_regex(text)
        if kind == "structural_tag":
            return self.compiler.compile_structural_tag(structural_tag.to_xgrammar(text))
        return self.compiler.compile_grammar(text)

    def new_matcher(self, compiled: Any) -> Any:
        import xgrammar as xgr

        return xgr.GrammarMatcher(compiled)
