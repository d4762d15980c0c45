"""Grammar backends for constrained decoding, chosen by --grammar-backend (see base.py)."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any, Iterable, Optional

if TYPE_CHECKING:  # base imports torch: the launcher checks --grammar-backend before it spawns, without it
    from sglserve.constrained.base import GrammarKey

# backend -> the module it needs (and the pip package that provides it)
BACKEND_MODULES = {"xgrammar": ("xgrammar", "xgrammar"), "llguidance": ("llguidance", "llguidance")}
UNSUPPORTED = {"outlines": "sglserve does not implement the outlines backend"}


def backend_problem(name: str) -> Optional[str]:
    """Why --grammar-backend `name` cannot run here (one line), or None."""
    if name in UNSUPPORTED:
        return (f"--grammar-backend={name} is not supported: {UNSUPPORTED[name]}; "
                f"use one of {sorted(BACKEND_MODULES)} or none")
    if name in BACKEND_MODULES:
        module, package = BACKEND_MODULES[name]
        if importlib.util.find_spec(module) is None:
            return f"--grammar-backend={name} needs the {package} package, which is not installed: pip install {package}"
    return None


def validate_grammar(backend: str, key: GrammarKey) -> None:
    """The HTTP process's check of a request's grammar (ValueError -> 400), with the backend's parser."""
    if backend == "llguidance":
        from sglserve.constrained.llguidance_backend import validate
    else:
        from sglserve.constrained.xgrammar_backend import validate
    validate(key)


def create_backend(name: str, tokenizer: Any, vocab_size: int, stop_token_ids: Iterable[int]) -> Any:
    if name == "llguidance":
        from sglserve.constrained.llguidance_backend import LLGuidanceBackend

        return LLGuidanceBackend(tokenizer, vocab_size, stop_token_ids)
    from sglserve.constrained.xgrammar_backend import XGrammarBackend

    return XGrammarBackend(tokenizer, vocab_size, stop_token_ids)
