"""Logprobs in the HTTP process: accumulate what the scheduler streams, shape it for users.

/generate's meta_info gets SGLang's lists of (logprob, token_id, text) tuples (text is None
unless return_text_in_logprobs): output_token_logprobs, output_top_logprobs (one list per
position), input_token_logprobs, input_top_logprobs. The OpenAI handlers turn those into
chat `logprobs.content` and completions `logprobs` (tokens / token_logprobs / top_logprobs
/ text_offset) with the helpers below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from sglserve.io_struct import LogprobNews

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat top_logprobs; we apply it everywhere


@dataclass
class LogprobAccumulator:
    return_text: bool = False
    output: List[tuple] = field(default_factory=list)
    output_top: List[list] = field(default_factory=list)
    input: List[tuple] = field(default_factory=list)
    input_top: List[list] = field(default_factory=list)
    output_ids: List[list] = field(default_factory=list)  # token_ids_logprob: one list per position

    def add(self, news: LogprobNews, k: int) -> None:
        """Entry k of a message's LogprobNews (one request's new entries)."""
        self.output.extend(news.output[k])
        if news.output_top[k]:
            self.output_top.extend(news.output_top[k])
        if k < len(news.output_ids) and news.output_ids[k]:
            self.output_ids.extend(news.output_ids[k])
        if news.input[k] is not None:
            self.input = list(news.input[k])
            self.input_top = list(news.input_top[k] or [])

    def meta(self, tokenizer: Any) -> Dict[str, Any]:
        texts = _texts(tokenizer, self) if self.return_text and tokenizer is not None else {}

        def fmt(entries) -> list:
            return [(lp, tok, texts.get(tok)) for lp, tok in entries]

        return {
            "output_token_logprobs": fmt(self.output),
            "output_top_logprobs": [fmt(top) for top in self.output_top],
            "input_token_logprobs": fmt(self.input),
            "input_top_logprobs": [fmt(top) for top in self.input_top],
            "output_token_ids_logprobs": [fmt(entries) for entries in self.output_ids] if self.output_ids else None,
        }


def _texts(tokenizer: Any, acc: LogprobAccumulator) -> Dict[int, str]:
    ids = {t for _, t in acc.output} | {t for _, t in acc.input}
    for tops in (acc.output_top, acc.input_top, acc.output_ids):
        for top in tops:
            ids.update(t for _, t in top)
    ids = sorted(ids)
    return dict(zip(ids, tokenizer.batch_decode([[t] for t in ids]))) if ids else {}


def validate_logprob_args(return_logprob: bool, top_logprobs_num: Any, logprob_start_len: Any) -> None:
    """Without return_logprob the other two are ignored, as SGLang ignores them (InputProcessor drops them)."""
    if not return_logprob:
        return
    if not isinstance(top_logprobs_num, int) or isinstance(top_logprobs_num, bool) or not 0 <= top_logprobs_num <= MAX_TOP_LOGPROBS:
        raise ValueError(f"top_logprobs_num must be an integer in [0, {MAX_TOP_LOGPROBS}], got {top_logprobs_num!r}.")
    if not isinstance(logprob_start_len, int) or isinstance(logprob_start_len, bool) or logprob_start_len < -1:
        raise ValueError(f"logprob_start_len must be -1 (no input logprobs) or a non-negative integer, got {logprob_start_len!r}.")


def checked_token_ids_logprob(return_logprob: bool, token_ids: Any, vocab_size: int) -> Optional[List[int]]:
    """SGLang's token_ids_logprob (ignored without return_logprob, like its other logprob fields there):
    the ids whose logprobs every output position reports, or None."""
    if not return_logprob or token_ids is None:
        return None
    if not isinstance(token_ids, list) or set(map(type, token_ids)) - {int}:
        raise ValueError(f"token_ids_logprob must be a list of token ids, got {token_ids!r}.")
    bad = [t for t in token_ids if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token_ids_logprob has ids outside the vocabulary [0, {vocab_size}): {bad[:8]}.")
    return token_ids or None


# ---- OpenAI shapes -----------------------------------------------------------------------


def _token_bytes(text: str) -> List[int]:
    return list(text.encode("utf-8"))


def chat_logprobs(meta: Dict[str, Any], start: int = 0, end: Optional[int] = None) -> Dict[str, Any]:
    """Chat `logprobs` of output positions [start, end): {"content": [{token, logprob, bytes, top_logprobs}]}."""
    toks = meta.get("output_token_logprobs") or []
    tops = meta.get("output_top_logprobs") or []
    content = []
    for k in range(start, len(toks) if end is None else end):
        lp, _, text = toks[k]
        top = tops[k] if k < len(tops) else []
        content.append({
            "token": text, "logprob": lp, "bytes": _token_bytes(text),
            "top_logprobs": [{"token": t, "logprob": v, "bytes": _token_bytes(t)} for v, _, t in top],
        })
    return {"content": content}


def completion_logprobs(meta: Dict[str, Any], echo: bool, start: int = 0, text_offset: int = 0) -> Dict[str, Any]:
    """Legacy completions `logprobs` of output positions from `start` (with the prompt's
    tokens first when echo): tokens, token_logprobs, top_logprobs (dicts), text_offset."""
    def pairs(entries, tops):
        return [(e, tops[k] if k < len(tops) else []) for k, e in enumerate(entries)]

    items = pairs(meta.get("input_token_logprobs") or [], meta.get("input_top_logprobs") or []) if echo else []
    items += pairs((meta.get("output_token_logprobs") or [])[start:], (meta.get("output_top_logprobs") or [])[start:])
    result: Dict[str, Any] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    offset = text_offset
    for (lp, _, text), top in items:
        result["tokens"].append(text)
        result["token_logprobs"].append(lp)
        result["top_logprobs"].append({t: v for v, _, t in top} if top else None)
        result["text_offset"].append(offset)
        offset += len(text)
    return result
