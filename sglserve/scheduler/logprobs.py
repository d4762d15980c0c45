"""Logprobs in the scheduler: of each sampled token, top-k alternatives, and input tokens.

Values are the log-softmax of the model's RAW logits (before temperature, penalties,
logit_bias and grammar masks), as vLLM returns them by default: the model's own
distribution, comparable with transformers. Only rows that asked pay for it (one extra
host read per step for them).

Input logprobs (`logprob_start_len` >= 0): entry i is log p(input[i] | input[:i]) for
i >= logprob_start_len (None for i = 0). They need the logits of every prompt position,
so such a request's prefix-cache match stops before logprob_start_len - 1 and its extend
runs with `return_all_logits`; chunked prefill collects them chunk by chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, List, Optional, Sequence, Tuple

import torch

Entry = Tuple[Optional[float], int]  # (logprob, token id)


@dataclass
class LogprobState:
    top_num: int = 0
    token_ids: Optional[List[int]] = None  # token_ids_logprob: these ids' logprobs at every output position
    start_len: int = -1  # -1: no input logprobs
    input_done: bool = True
    output: List[Entry] = field(default_factory=list)
    output_top: List[List[Entry]] = field(default_factory=list)
    output_ids: List[List[Entry]] = field(default_factory=list)  # per position, one entry per token_ids
    input: List[Entry] = field(default_factory=list)
    input_top: List[List[Entry]] = field(default_factory=list)
    sent_output: int = 0  # output entries already streamed
    sent_input: bool = False

    @classmethod
    def create(cls, top_num: int, start_len: int, input_ids: Sequence[int],
               token_ids: Optional[List[int]] = None) -> "LogprobState":
        start = -1 if start_len is None or start_len < 0 else min(start_len, len(input_ids))
        st = cls(top_num=top_num, token_ids=token_ids or None, start_len=start, input_done=start < 0 or start >= len(input_ids))
        if start == 0:
            st.input.append((None, input_ids[0]))
            if top_num:
                st.input_top.append([])
            st.start_len = 1
        return st

    def match_limit(self) -> Optional[int]:
        """How many prompt tokens the prefix match may cover (None: no limit)."""
        if self.input_done:
            return None
        return max(self.start_len - 1, 0)


def _top(lp: torch.Tensor, k: int) -> List[List[Entry]]:
    if k <= 0:
        return [[] for _ in range(lp.shape[0])]
    vals, ids = lp.topk(k, dim=-1)
    return [list(zip(v, i)) for v, i in zip(vals.tolist(), ids.tolist())]


def output_logprobs_begin(reqs: Sequence[Any], logits: torch.Tensor) -> Optional[Tuple[List[int], torch.Tensor]]:
    """Before sampling (the sampler may mask the logits in place): log-softmax of the rows
    whose request wants logprobs."""
    rows = [i for i, r in enumerate(reqs) if r.logprobs is not None]
    if not rows:
        return None
    idx = torch.tensor(rows, dtype=torch.long, device=logits.device)
    return rows, torch.log_softmax(logits[idx].float(), dim=-1)


def output_logprobs_end(reqs: Sequence[Any], pending, next_ids: Sequence[int]) -> None:
    if pending is None:
        return
    rows, lp = pending
    chosen_ids = torch.tensor([next_ids[i] for i in rows], dtype=torch.long, device=lp.device)
    chosen = lp.gather(1, chosen_ids[:, None]).squeeze(1).tolist()
    k = max(reqs[i].logprobs.top_num for i in rows)
    tops = _top(lp, k)
    for j, i in enumerate(rows):
        st = reqs[i].logprobs
        st.output.append((chosen[j], next_ids[i]))
        if st.top_num:
            st.output_top.append(tops[j][: st.top_num])
        if st.token_ids:
            st.output_ids.append(list(zip(lp[j, st.token_ids].tolist(), st.token_ids)))


def wants_input_logprobs(reqs: Sequence[Any]) -> bool:
    return any(r.logprobs is not None and not r.logprobs.input_done for r in reqs)


def record_input_logprobs(reqs: Sequence[Any], prefix_lens: List[int], seq_lens: List[int], all_logits: torch.Tensor) -> None:
    """After an extend with all logits: position j's logits score input token j + 1."""
    offset = 0
    for req, p, s in zip(reqs, prefix_lens, seq_lens):
        st = req.logprobs
        n_in = len(req.origin_input_ids)
        if st is not None and not st.input_done:
            # Tokens i in [max(start, p + 1), min(s + 1, n_in)) are scored by positions i - 1
            lo, hi = max(st.start_len, p + 1), min(s + 1, n_in)
            if hi > lo:
                rows = torch.arange(lo - 1 - p + offset, hi - 1 - p + offset, device=all_logits.device)
                lp = torch.log_softmax(all_logits[rows].float(), dim=-1)
                targets = req.origin_input_ids[lo:hi]
                tgt = torch.tensor(targets, dtype=torch.long, device=lp.device)
                vals = lp.gather(1, tgt[:, None]).squeeze(1).tolist()
                st.input.extend(zip(vals, targets))
                if st.top_num:
                    st.input_top.extend(_top(lp, st.top_num))
            if not req.is_chunked:
                st.input_done = True
        offset += s - p


def take_new(req: Any) -> Tuple[Optional[list], ...]:
    """The logprob entries not yet streamed: (output, output_top, input, input_top, output_ids)."""
    st = req.logprobs
    if st is None:
        return None, None, None, None, None
    sent = st.sent_output
    out, out_top = st.output[sent:], st.output_top[sent:] if st.top_num else []
    out_ids = st.output_ids[sent:] if st.token_ids else []
    st.sent_output = len(st.output)
    inp = inp_top = None
    if not st.sent_input and st.input_done:
        inp, inp_top = st.input, st.input_top
        st.sent_input = True
    return out, out_top, inp, inp_top, out_ids
