"""Where a GGUF file's converted config and tokenizer folders are cached, and whether they are.

Importing nothing heavy (no transformers, no torch), so a server process can ask, before it
imports transformers, whether start-up will have to convert a GGUF's metadata
(utils/optional_imports.import_transformers_without_torch: transformers converts GGUF only with
torch). The conversions themselves are in utils/hf_transformers_utils.py.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from typing import Any, Iterator, Optional, Tuple

GGUF_KINDS = ("config", "tokenizer")


def cache_root() -> Optional[str]:
    """Where GGUF conversions (tokenizer, config) are kept: $SGLSERVE_CACHE_DIR, else
    ~/.cache/sglserve ("" or "none" in the variable turns the cache off)."""
    root = os.environ.get("SGLSERVE_CACHE_DIR")
    if root is not None:
        return None if root.strip().lower() in ("", "none") else root
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "sglserve")


def _cache_key(path: str) -> str:
    """Changes when the file does (size, mtime) or the converter does (transformers' version,
    read from its metadata: the same string as transformers.__version__, without the import)."""
    st = os.stat(path)
    raw = f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0{importlib.metadata.version('transformers')}"
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def gguf_cache_dir(path: str, kind: str) -> Optional[str]:
    """The cache folder of `path`'s (absolute) conversion of `kind` ("config" or "tokenizer")."""
    root = cache_root()
    return os.path.join(root, "gguf", _cache_key(path), kind) if root else None


def split_model_path(model_path: str, load_format: str) -> Tuple[str, Optional[str]]:
    """(folder or config path, gguf file name or None). A GGUF folder must hold exactly one .gguf."""
    if model_path.endswith(".gguf"):
        if not os.path.isfile(model_path):
            raise ValueError(f"--model-path={model_path!r}: GGUF file not found")
        return os.path.dirname(os.path.abspath(model_path)), os.path.basename(model_path)
    if load_format == "gguf":
        ggufs = sorted(f for f in os.listdir(model_path) if f.endswith(".gguf")) if os.path.isdir(model_path) else []
        if len(ggufs) != 1:
            raise ValueError(f"--load-format gguf needs a .gguf file or a folder with exactly one; {model_path!r} has {ggufs}")
        return model_path, ggufs[0]
    return model_path, None


def _server_ggufs(server_args: Any) -> Iterator[Tuple[str, str]]:
    """(absolute .gguf path, kind) for each conversion a server's start-up reads."""
    folder, name = split_model_path(server_args.model_path, server_args.load_format)
    if name is not None:
        yield os.path.abspath(os.path.join(folder, name)), "config"
    tok = server_args.tokenizer_path
    if not getattr(server_args, "skip_tokenizer_init", False) and tok and str(tok).endswith(".gguf"):
        yield os.path.abspath(tok), "tokenizer"


def server_gguf_conversions_cached(server_args: Any) -> bool:
    """True when every GGUF conversion the server's start-up reads is already in the cache
    (trivially so without GGUF files); False when one is missing, or its file or path is bad
    (start-up then reports that the usual way)."""
    try:
        for path, kind in _server_ggufs(server_args):
            folder = gguf_cache_dir(path, kind)
            if folder is None or not os.path.isdir(folder):
                return False
    except (OSError, ValueError, importlib.metadata.PackageNotFoundError):
        return False
    return True
