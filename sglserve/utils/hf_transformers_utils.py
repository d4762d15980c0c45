"""Tokenizer and config loading: a Hugging Face folder (or hub id) or a single .gguf file."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import TYPE_CHECKING, Any, Optional

from transformers import AutoConfig, PretrainedConfig

from sglserve.utils.gguf_cache import gguf_cache_dir

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def auto_tokenizer_class() -> Any:
    """transformers' AutoTokenizer, imported on first use: where transformers sees torch, its module
    pulls in auto_factory and, through it, transformers' generation, masking and FSDP modules (sympy,
    torch._dynamo, torch.distributed.tensor, and sklearn where installed): 4.8 s of the scheduler's
    9.1 s of imports on the H100 host (RESULTS.md V5). The server's processes import transformers
    without torch (utils/optional_imports.py); a library user's process may not, so it is still
    imported when a tokenizer is first needed rather than with this module."""
    from transformers import AutoTokenizer

    return AutoTokenizer


def get_tokenizer(tokenizer_path: str, trust_remote_code: bool = False) -> "PreTrainedTokenizerBase":
    """Load the tokenizer; the chat template comes with it (tokenizer.chat_template).

    A .gguf file carries its vocabulary and chat template in its metadata; transformers
    reads them with `gguf_file=` relative to the file's folder. Building a fast tokenizer from
    that metadata takes seconds (7 s for SmolLM2 on one core) and every server process needs
    one, so the result is saved once as a tokenizer folder and loaded from there afterwards
    (0.3 s), keyed by the file's path, size and mtime and transformers' version.
    """
    if str(tokenizer_path).endswith(".gguf"):
        return _gguf_tokenizer(os.path.abspath(tokenizer_path), trust_remote_code)
    return auto_tokenizer_class().from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)


def _load_cached(loader, cached: Optional[str], trust_remote_code: bool):
    if cached and os.path.isdir(cached):
        try:
            return loader.from_pretrained(cached, trust_remote_code=trust_remote_code)
        except Exception as e:  # a damaged cache entry: convert again
            logger.warning("Ignoring the cached conversion %s: %s", cached, e)
            shutil.rmtree(cached, ignore_errors=True)
    return None


def _gguf_converted(loader: Any, path: str, kind: str, trust_remote_code: bool) -> Any:
    """loader (AutoTokenizer / AutoConfig) built from the GGUF's metadata: from the cache folder
    when it is there, else converted and saved there."""
    cached = gguf_cache_dir(path, kind)
    folder, name = os.path.split(path)
    obj = _load_cached(loader, cached, trust_remote_code)
    if obj is None:
        obj = loader.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
        if cached:
            _save_atomically(obj, cached)
    return obj


def _gguf_tokenizer(path: str, trust_remote_code: bool) -> "PreTrainedTokenizerBase":
    tokenizer = _gguf_converted(auto_tokenizer_class(), path, "tokenizer", trust_remote_code)
    tokenizer.name_or_path = os.path.dirname(path)  # as a direct load names it, not the cache folder
    return tokenizer


def get_gguf_config(path: str, trust_remote_code: bool = False) -> PretrainedConfig:
    """The model config in a .gguf's metadata (transformers parses the whole metadata block for
    it: 3.7 s for SmolLM2), converted once and cached like the tokenizer."""
    path = os.path.abspath(path)
    config = _gguf_converted(AutoConfig, path, "config", trust_remote_code)
    config._name_or_path = os.path.dirname(path)  # as a direct load names it, not the cache folder
    return config


def _save_atomically(obj: "PreTrainedTokenizerBase | PretrainedConfig", dest: str) -> None:
    """Write into a temp folder beside dest, then rename: a concurrent reader sees all or nothing,
    and of two processes converting at once the second rename simply loses."""
    parent = os.path.dirname(dest)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
        obj.save_pretrained(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:  # another process got there first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as e:  # a read-only home, a full disk: the cache is only an optimisation
        logger.warning("Could not cache the GGUF conversion in %s: %s", parent, e)
