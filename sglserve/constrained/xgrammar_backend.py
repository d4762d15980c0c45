"""Constrained decoding with xgrammar: JSON schema, regex and EBNF grammars.

- `validate_grammar` runs in the HTTP process: it parses the grammar without a tokenizer
  (cheap) so an invalid schema / regex / EBNF is a 400 with xgrammar's message and never
  reaches the scheduler.
- `GrammarBackend` lives in the scheduler: compiles grammars against the tokenizer on a
  thread pool (off the scheduler loop) and caches the compiled grammar by key, so the
  same schema compiles once. `new_matcher` gives a request its own matcher state.
- Each step the scheduler fills one bitmask row per constrained request on the CPU
  (`fill_vocab_mask`), moves it to the logits' device, and the sampler applies it
  (`apply_vocab_mask`: disallowed tokens -> -inf; xgrammar's kernel on CUDA, torch on CPU).

JSON grammars use compact whitespace (`any_whitespace=False`): a small model cannot wander
into endless spaces and newlines, and the output is still any valid instance of the schema.
"""

from __future__ import annotations

import collections
import logging
import re
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterable, Optional, Tuple

import torch

logger = logging.getLogger(__name__)

GrammarKey = Tuple[str, str]  # ("json" | "regex" | "ebnf", the grammar text)
CACHE_SIZE = 1024
# xgrammar prefixes its messages with "[time] /path/file.cc:line: "
_XGR_PREFIX = re.compile(r"^\[[\d:]+\] \S+:\d+: (Check failed: \(.*?\) is false: )?")


def grammar_key(sp: Any) -> Optional[GrammarKey]:
    """The grammar a SamplingParams asks for, or None."""
    if sp.json_schema is not None:
        return ("json", sp.json_schema)
    if sp.regex is not None:
        return ("regex", sp.regex)
    if sp.ebnf is not None:
        return ("ebnf", sp.ebnf)
    return None


def clean_error(e: BaseException) -> str:
    return _XGR_PREFIX.sub("", str(e).strip()).strip()


def validate_grammar(key: GrammarKey) -> None:
    """Raises ValueError with xgrammar's message when the grammar does not parse."""
    import xgrammar as xgr

    kind, text = key
    if not isinstance(text, str):
        raise ValueError(f"{_NAMES[kind]} must be a string, got {type(text).__name__}.")
    try:
        if kind == "json":
            xgr.Grammar.from_json_schema(text, any_whitespace=False)
        elif kind == "regex":
            xgr.Grammar.from_regex(text)
        else:
            xgr.Grammar.from_ebnf(text)
    except Exception as e:  # xgrammar raises RuntimeError / InvalidJSONError with its parser's message
        raise ValueError(f"Invalid {_NAMES[kind]}: {clean_error(e)}") from None


_NAMES = {"json": "json_schema", "regex": "regex", "ebnf": "ebnf"}


class GrammarBackend:
    """Compiles grammars on a thread pool; compiled grammars are cached by key (LRU)."""

    def __init__(self, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int], max_threads: int = 2) -> None:
        import xgrammar as xgr

        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(t for t in stop_token_ids if t is not None)
        info = xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size, stop_token_ids=self.stop_token_ids)
        self.compiler = xgr.GrammarCompiler(info, max_threads=max_threads)
        self.executor = ThreadPoolExecutor(max_workers=max_threads, thread_name_prefix="grammar")
        self.cache: "collections.OrderedDict[GrammarKey, Future]" = collections.OrderedDict()

    def get_future(self, key: GrammarKey) -> Future:
        """A future of the compiled grammar; done at once on a cache hit."""
        fut = self.cache.get(key)
        if fut is not None:
            self.cache.move_to_end(key)
            return fut
        fut = self.executor.submit(self._compile, key)
        self.cache[key] = fut
        while len(self.cache) > CACHE_SIZE:
            self.cache.popitem(last=False)
        return fut

    def forget(self, key: GrammarKey) -> None:
        """Drop a failed compilation so a later request tries again."""
        self.cache.pop(key, None)

    def _compile(self, key: GrammarKey) -> Any:
        kind, text = key
        if kind == "json":
            return self.compiler.compile_json_schema(text, any_whitespace=False)
        if kind == "regex":
            return self.compiler.compile_regex(text)
        return self.compiler.compile_grammar(text)

    def new_matcher(self, compiled: Any) -> Any:
        import xgrammar as xgr

        return xgr.GrammarMatcher(compiled)

    def allocate_vocab_mask(self, rows: int) -> torch.Tensor:
        import xgrammar as xgr

        return xgr.allocate_token_bitmask(rows, self.vocab_size)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def fill_vocab_mask(backend: GrammarBackend, matchers: list, device) -> Optional[torch.Tensor]:
    """One bitmask row per sampled row; rows without a matcher (None) allow every token."""
    if not any(m is not None for m in matchers):
        return None
    mask = backend.allocate_vocab_mask(len(matchers))  # all ones: everything allowed
    for i, m in enumerate(matchers):
        if m is not None and not m.is_terminated():
            m.fill_next_token_bitmask(mask, i)
    return mask.to(device, non_blocking=True)


def apply_vocab_mask(logits: torch.Tensor, mask: torch.Tensor) -> None:
    """In place: logits of tokens whose bit is 0 become -inf (columns past the mask stay)."""
    import xgrammar as xgr

    xgr.apply_token_bitmask_inplace(logits, mask.to(logits.device))
