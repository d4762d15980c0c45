"""Tokenizer loading: a Hugging Face folder (or hub id) or a single .gguf file."""

from __future__ import annotations

import os

from transformers import AutoTokenizer, PreTrainedTokenizerBase


def get_tokenizer(tokenizer_path: str, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    """Load the tokenizer; the chat template comes with it (tokenizer.chat_template).

    A .gguf file carries its vocabulary and chat template in its metadata; transformers
    reads them with `gguf_file=` relative to the file's folder.
    """
    if str(tokenizer_path).endswith(".gguf"):
        folder, name = os.path.split(os.path.abspath(tokenizer_path))
        return AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=trust_remote_code)
    return AutoTokenizer.from_pretrained(tokenizer_path, trust_remote_code=trust_remote_code)
