"""The scheduler's grammar queue: constrained requests wait here while their grammar compiles.

A request with json_schema / regex / ebnf goes to `queue` instead of the waiting queue; its
grammar compiles on the backend's thread pool (or is a cache hit, done at once). Every
scheduler step `pop_ready` moves requests whose grammar is done to the waiting queue with
a fresh matcher, so compiling never blocks the requests that are decoding.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Iterable, List, Optional, Tuple

from sglserve.constrained import create_backend
from sglserve.constrained.base import BaseGrammarBackend, fill_vocab_mask, grammar_key
from sglserve.constrained.xgrammar_backend import clean_error

logger = logging.getLogger(__name__)


class GrammarManager:
    def __init__(self, tokenizer: Any, vocab_size: int, eos_token_ids: Iterable[int], backend_name: str,
                 agree: Optional[Callable[[int], int]] = None) -> None:
        # Tensor parallelism: each rank compiles on its own thread, so "done" differs between ranks;
        # agree(n) returns the smallest n over the ranks, and only that many (from the head) move on
        self.agree = agree
        self.backend: Optional[BaseGrammarBackend] = None
        self.disabled_reason = ""
        if backend_name == "none":
            self.disabled_reason = "the server runs with --grammar-backend none"
        elif tokenizer is None:
            self.disabled_reason = "the server runs with --skip-tokenizer-init"
        else:
            self.backend = create_backend(backend_name, tokenizer, vocab_size, eos_token_ids)
        self.queue: List[Any] = []

    def __len__(self) -> int:
        return len(self.queue)

    def add(self, req: Any) -> Optional[str]:
        """Queue `req` if it has a grammar. Returns an error message if it cannot be served."""
        key = grammar_key(req.sampling_params)
        if self.backend is None:
            return f"Constrained decoding is not available: {self.disabled_reason}."
        req.grammar_key = key
        req.grammar_future = self.backend.get_future(key)
        self.queue.append(req)
        return None

    def pop_ready(self) -> Tuple[List[Any], List[Tuple[Any, str]]]:
        """(requests whose grammar is ready, with a matcher; (request, error) for failures)."""
        if not self.queue:
            return [], []
        ready, failed, still = [], [], []
        queue = self.queue
        if self.agree is not None:
            n = 0
            while n < len(queue) and queue[n].grammar_future.done():
                n += 1
            n = self.agree(n)
            queue, still = queue[:n], queue[n:]
        for req in queue:
            fut = req.grammar_future
            if not fut.done():
                still.append(req)
                continue
            req.grammar_future = None
            try:
                req.grammar = self.backend.new_matcher(fut.result())
                ready.append(req)
            except Exception as e:  # validated in the HTTP process, so this is rare
                self.backend.forget(req.grammar_key)
                logger.warning("Grammar compilation failed for %s: %s", req.rid, e)
                failed.append((req, f"Invalid {req.grammar_key[0]} grammar: {clean_error(e)}"))
        self.queue = still
        return ready, failed

    def remove(self, rid: str) -> List[Any]:
        """Take requests out of the queue (abort); "" takes all."""
        gone = [r for r in self.queue if rid == "" or r.rid == rid]
        self.queue = [r for r in self.queue if r not in gone]
        return gone

    def vocab_mask(self, reqs: List[Any], device) -> Any:
        """The bitmask for one sampling step (None when no request is constrained)."""
        if self.backend is None:
            return None
        return fill_vocab_mask(self.backend, [r.grammar for r in reqs], device)

    @staticmethod
    def accept(req: Any, token: int) -> Optional[str]:
        """Advance req's matcher; returns an error when the grammar rejects the token. The token
        was sampled under the grammar's mask, so a rejection means the mask allowed no token: the
        constraint cannot be met with this model's vocabulary (e.g. regex "\x04+")."""
        if req.grammar is None or req.grammar.is_terminated():
            return None
        if not req.grammar.accept_token(token):
            return (f"The constraint (json_schema / regex / ebnf) admits no token of this model's vocabulary here "
                    f"(the grammar rejected token {token}).")
        return None
