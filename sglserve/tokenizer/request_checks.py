"""The rules InputProcessor applies to a request (cheap checks, before or instead of tokenizing it),
and the n > 1 fan-out and count of a request's sequences."""

from __future__ import annotations

import dataclasses
from typing import Any, List, Optional

import msgspec

from sglserve.io_struct import GenerateReqInput, TokenizedGenerateReqInput


def check_shape(obj: GenerateReqInput) -> None:
    """Types of a native request body (the OpenAI routes arrive here already well-formed)."""

    def is_ids(v: Any) -> bool:  # type() is int: no bools; set(map(...)) keeps the loop in C (a prompt has 1000s)
        return isinstance(v, list) and set(map(type, v)) <= {int}

    if obj.text is not None and not (
        isinstance(obj.text, str) or (isinstance(obj.text, list) and all(isinstance(t, str) for t in obj.text))
    ):
        raise ValueError("text must be a string or a list of strings.")
    if obj.input_ids is not None and not (
        is_ids(obj.input_ids) or (isinstance(obj.input_ids, list) and all(is_ids(x) for x in obj.input_ids))
    ):
        raise ValueError("input_ids must be a list of integers or a list of lists of integers.")
    n = None if obj.is_single else obj.batch_size
    for name, kind in (("sampling_params", dict), ("rid", str), ("cache_salt", str)):
        v = getattr(obj, name)
        if v is None or isinstance(v, kind):
            continue
        if n is None or not isinstance(v, list) or len(v) != n or not all(isinstance(x, kind) for x in v):
            what = "an object" if kind is dict else "a string"
            raise ValueError(f"{name} must be {what}, or for a batch a list of {n or 'N'} such values (one per prompt).")
    for name in ("stream", "return_logprob"):
        if not isinstance(getattr(obj, name), bool):
            raise ValueError(f"{name} must be a boolean.")


MAX_N = 128  # the most sequences (n) one prompt may ask for


def expand_n(tokenized: List[TokenizedGenerateReqInput]) -> List[TokenizedGenerateReqInput]:
    """n > 1: n copies of each prompt (rid-0 .. rid-{n-1}, seed + i) in one prefix group, so
    the scheduler computes the prompt's KV once and the copies share it (radix cache)."""
    out: List[TokenizedGenerateReqInput] = []
    for t in tokenized:
        n = t.sampling_params.n
        if n == 1:
            out.append(t)
            continue
        for i in range(n):
            sp = t.sampling_params
            sp = dataclasses.replace(sp, n=1, seed=None if sp.seed is None else sp.seed + i)
            out.append(msgspec.structs.replace(t, rid=f"{t.rid}-{i}", sampling_params=sp, prefix_group=t.rid))
    return out


def requested_count(obj: GenerateReqInput) -> int:
    """How many sequences the request will run (prompts x n), from the raw body, before any work."""
    params = obj.sampling_params if isinstance(obj.sampling_params, list) else [obj.sampling_params] * obj.batch_size
    total = 0
    for p in params:
        n = p.get("n", 1) if isinstance(p, dict) else 1
        total += n if isinstance(n, int) and not isinstance(n, bool) and n > 1 else 1
    return total


def max_token_chars(tokenizer: Any) -> Optional[int]:
    """The longest vocabulary entry in characters: a text of C characters has at least
    C / max_token_chars tokens, so a text that long cannot fit the context (byte-level and
    sentencepiece vocab entries are at least as long as the text they decode to)."""
    try:
        return max(len(t) for t in tokenizer.get_vocab())
    except Exception:  # no get_vocab: no pre-check
        return None


def check_text_size(num_chars: int, max_chars: Optional[int], context_len: int) -> None:
    """Refuse a prompt that cannot fit the context before spending time tokenizing it."""
    if max_chars is not None and num_chars > max_chars:
        raise ValueError(
            f"The input ({num_chars} characters) is longer than the model's context length ({context_len} tokens)."
        )


def out_of_vocab(ids: List[int], vocab_size: int, name: str) -> Optional[str]:
    """The 400 message for token ids outside [0, vocab_size), or None when all are inside."""
    if not ids or (min(ids) >= 0 and max(ids) < vocab_size):  # min/max loop in C; the ids are fine
        return None
    bad = [t for t in ids if not 0 <= t < vocab_size]
    return f"The {name} {bad[:8]} are outside the model's vocabulary [0, {vocab_size})."
