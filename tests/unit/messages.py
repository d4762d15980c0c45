"""Build the columnar BatchTokenIDOut from per-request rows, as tests think of them."""

from __future__ import annotations

from typing import List, Optional, Sequence

from sglserve.io_struct import BatchTokenIDOut, ReqInfo


def token_ids_out(rids: Sequence[str], ids: Sequence[Sequence[int]], finished: Sequence[Optional[dict]],
                  prompt_tokens: Sequence[int], completion_tokens: Sequence[int],
                  cached_tokens: Optional[Sequence[int]] = None, stop_strs: Optional[Sequence[Sequence[str]]] = None,
                  skip: Optional[Sequence[bool]] = None, no_stop_trim: Optional[Sequence[bool]] = None,
                  first: Optional[Sequence[bool]] = None) -> BatchTokenIDOut:
    """Request i: new `ids[i]`, finish reason `finished[i]` (None: running); its ReqInfo goes
    along when `first[i]` (default: always; the detokenizer reads it only on a request's first)."""
    n = len(rids)
    offsets: List[int] = [0]
    for seq in ids:
        offsets.append(offsets[-1] + len(seq))
    firsts = [i for i in range(n) if first is None or first[i]]
    infos = [ReqInfo(prompt_tokens=prompt_tokens[i], cached_tokens=cached_tokens[i] if cached_tokens else 0,
                     skip_special_tokens=skip[i] if skip else True,
                     no_stop_trim=no_stop_trim[i] if no_stop_trim else False,
                     stop_strs=list(stop_strs[i]) if stop_strs else []) for i in firsts]
    done = [i for i in range(n) if finished[i] is not None]
    return BatchTokenIDOut(rids=list(rids), offsets=offsets, ids=[t for seq in ids for t in seq],
                           completion_tokens=list(completion_tokens), first=firsts, infos=infos,
                           finished=done, finished_reasons=[finished[i] for i in done])
