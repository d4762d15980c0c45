"""Decode many id sequences in one tokenizer call.

transformers' `batch_decode` loops in Python: per sequence a recursive `to_py_obj` walk and
a `_decode` call (about 2 µs per sequence on SmolLM2, most of the detokenizer's time). A
stock fast tokenizer without clean-up does exactly `backend.decode(ids, skip_special_tokens)`
per sequence, so for it we call the Rust `decode_batch` once instead; any other tokenizer
(slow, custom `_decode`, clean-up on) keeps its own `batch_decode`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

Key = Tuple[bool, bool]  # (skip_special_tokens, spaces_between_special_tokens)
Decoder = Callable[[List[List[int]], bool, bool], List[str]]


def make_decoder(tokenizer: Any) -> Decoder:
    """(seqs, skip_special_tokens, spaces_between_special_tokens) -> texts, as batch_decode."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is not None and _is_stock_fast(tokenizer) and not getattr(tokenizer, "clean_up_tokenization_spaces", True):
        # spaces_between_special_tokens only means something to slow tokenizers
        return lambda seqs, skip, spaces: backend.decode_batch(seqs, skip_special_tokens=skip)
    return lambda seqs, skip, spaces: tokenizer.batch_decode(
        seqs, skip_special_tokens=skip, spaces_between_special_tokens=spaces)


def is_concatenative(tokenizer: Any) -> bool:
    """True when decode(a + b) == decode(a) + decode(b) wherever decode(a) ends on a whole
    character: a stock fast tokenizer whose decoder is ByteLevel (GPT-2, Llama 3, Qwen,
    SmolLM2) joins the tokens' bytes and decodes them as UTF-8. Not so for sentencepiece's
    Metaspace, which drops the leading space of a sequence."""
    backend = getattr(tokenizer, "_tokenizer", None)
    return (backend is not None and _is_stock_fast(tokenizer) and type(backend.decoder).__name__ == "ByteLevel"
            and not getattr(tokenizer, "clean_up_tokenization_spaces", True))


def _is_stock_fast(tokenizer: Any) -> bool:
    try:
        from transformers import PreTrainedTokenizerFast
    except ImportError:  # pragma: no cover - transformers is a dependency
        return False
    return isinstance(tokenizer, PreTrainedTokenizerFast) and type(tokenizer)._decode is PreTrainedTokenizerFast._decode


def decode_grouped(decode: Decoder, seqs: List[List[int]], keys: List[Key], uniform: bool) -> List[str]:
    """Decode `seqs`, each with its own flags; one call per distinct flag pair (one when uniform)."""
    if not seqs:
        return []
    if uniform:
        return decode(seqs, *keys[0])
    out: List[str] = [""] * len(seqs)
    groups: Dict[Key, List[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    for (skip, spaces), idx in groups.items():
        for i, text in zip(idx, decode([seqs[i] for i in idx], skip, spaces)):
            out[i] = text
    return out
