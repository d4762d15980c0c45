"""What the grammar backends share (`--grammar-backend xgrammar | llguidance`).

- `grammar_key(sp)`: the grammar a request asks for, ("json" | "regex" | "ebnf" | "structural_tag", text).
- `BaseGrammarBackend` lives in the scheduler: it compiles grammars on a thread pool (off
  the scheduler loop) and caches the compiled grammar by key (LRU), so the same schema
  compiles once; `new_matcher` gives a request its own matcher state. A matcher has
  `accept_token(tok) -> bool`, `is_terminated()` (it accepted a stop token) and
  `fill_next_token_bitmask(mask, row)`.
- Both backends use the same token bitmask: int32 [rows, ceil(V/32)], bit set = allowed.
  Each step the scheduler fills one row per constrained request on the CPU
  (`fill_vocab_mask`) and the sampler applies it (`apply_vocab_mask`: disallowed -> -inf).
"""

from __future__ import annotations

import collections
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, Iterable, Optional, Tuple

if TYPE_CHECKING:  # imported where used: the HTTP processes need grammar_key only, not torch
    import torch

GrammarKey = Tuple[str, str]  # ("json" | "regex" | "ebnf" | "structural_tag", the grammar text)
CACHE_SIZE = 1024
NAMES = {"json": "json_schema", "regex": "regex", "ebnf": "ebnf", "structural_tag": "structural_tag"}


def grammar_key(sp: Any) -> Optional[GrammarKey]:
    """The grammar a SamplingParams asks for, or None."""
    if sp.json_schema is not None:
        return ("json", sp.json_schema)
    if sp.regex is not None:
        return ("regex", sp.regex)
    if sp.ebnf is not None:
        return ("ebnf", sp.ebnf)
    if sp.structural_tag is not None:
        return ("structural_tag", sp.structural_tag)
    return None


def check_text(key: GrammarKey) -> None:
    kind, text = key
    if not isinstance(text, str):
        raise ValueError(f"{NAMES[kind]} must be a string, got {type(text).__name__}.")


class BaseGrammarBackend:
    """Compiles grammars on a thread pool; compiled grammars are cached by key (LRU).
    Subclasses implement `_compile(key)` and `new_matcher(compiled)`."""

    def __init__(self, vocab_size: int, stop_token_ids: Iterable[int], max_threads: int = 2) -> None:
        self.vocab_size = vocab_size
        self.stop_token_ids = sorted(t for t in stop_token_ids if t is not None)
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
        raise NotImplementedError

    def new_matcher(self, compiled: Any) -> Any:
        raise NotImplementedError

    def allocate_vocab_mask(self, rows: int) -> torch.Tensor:
        """All ones (every token allowed), on the CPU."""
        import torch

        return torch.full((rows, (self.vocab_size + 31) // 32), -1, dtype=torch.int32)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)


def fill_vocab_mask(backend: BaseGrammarBackend, matchers: list, device) -> Optional[torch.Tensor]:
    """One bitmask row per sampled row; rows without a matcher (None) allow every token."""
    if not any(m is not None for m in matchers):
        return None
    mask = backend.allocate_vocab_mask(len(matchers))
    for i, m in enumerate(matchers):
        if m is not None and not m.is_terminated():
            m.fill_next_token_bitmask(mask, i)
    return mask.to(device, non_blocking=True)


def apply_vocab_mask(logits: torch.Tensor, mask: torch.Tensor) -> None:
    """In place: logits of tokens whose bit is 0 become -inf (columns past the mask stay).
    xgrammar's kernel when it is installed (CUDA), else the same in torch."""
    import torch

    mask = mask.to(logits.device)
    try:
        import xgrammar as xgr
    except ImportError:
        xgr = None
    if xgr is not None:
        xgr.apply_token_bitmask_inplace(logits, mask)
        return
    cols = min(logits.shape[1], mask.shape[1] * 32)
    bits = torch.arange(32, device=logits.device, dtype=torch.int32)
    allowed = ((mask.unsqueeze(-1) >> bits) & 1).reshape(mask.shape[0], -1)[:, :cols].bool()
    logits[:, :cols].masked_fill_(~allowed, float("-inf"))
