"""Logit adjustments applied before sampling: penalties, logit_bias, min_tokens.

Built per step for the rows that need them only (a batch where nobody asks costs nothing):

- frequency / presence penalty (OpenAI): logit -= count * frequency + (count > 0) * presence,
  counted over the OUTPUT tokens so far.
- repetition penalty (CTRL / transformers / vLLM): for every token seen in the prompt or the
  output, logit / penalty when positive, logit * penalty when negative.
- logit_bias (OpenAI): added to the logits; -100 effectively bans a token.
- min_tokens: EOS and stop_token_ids are masked to -inf until min_new_tokens are out.

The sampler applies `LogitAdjust.apply` to the raw logits; greedy rows see it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence

import torch

from sglserve.sampling.sampling_params import SamplingParams


@dataclass
class LogitAdjust:
    additive: Optional[torch.Tensor] = None  # [bs, V]: logit_bias and -inf masks
    counts: Optional[torch.Tensor] = None  # [bs, V] output token counts
    frequency: Optional[torch.Tensor] = None  # [bs, 1]
    presence: Optional[torch.Tensor] = None  # [bs, 1]
    seen: Optional[torch.Tensor] = None  # [bs, V] bool: token in prompt or output
    repetition: Optional[torch.Tensor] = None  # [bs, 1]

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        if self.repetition is not None:
            penalized = torch.where(logits > 0, logits / self.repetition, logits * self.repetition)
            logits = torch.where(self.seen, penalized, logits)
        if self.counts is not None:
            logits = logits - self.counts * self.frequency - (self.counts > 0).to(logits.dtype) * self.presence
        if self.additive is not None:
            logits = logits + self.additive
        return logits


def needs_adjust(sp: SamplingParams, num_output: int) -> bool:
    return bool(
        sp.frequency_penalty or sp.presence_penalty or sp.repetition_penalty != 1.0 or sp.logit_bias
        or num_output < sp.min_new_tokens
    )


def build_logit_adjust(
    params: Sequence[SamplingParams],
    input_ids: Sequence[Sequence[int]],
    output_ids: Sequence[Sequence[int]],
    eos_token_ids: Iterable[int],
    vocab_size: int,
    device,
) -> Optional[LogitAdjust]:
    """One row per sampled request (same order as the logits); None when no row needs anything."""
    bs = len(params)
    rows = [i for i in range(bs) if needs_adjust(params[i], len(output_ids[i]))]
    if not rows:
        return None
    out = LogitAdjust()
    eos = [t for t in eos_token_ids if t is not None and 0 <= t < vocab_size]

    bias_r: List[int] = []
    bias_t: List[int] = []
    bias_v: List[float] = []
    for i in rows:
        sp = params[i]
        for tok, v in (sp.logit_bias or {}).items():
            bias_r.append(i), bias_t.append(tok), bias_v.append(v)
        if len(output_ids[i]) < sp.min_new_tokens:
            banned = set(sp.stop_token_ids or [])
            if not sp.ignore_eos:
                banned.update(eos)
            for tok in banned:
                bias_r.append(i), bias_t.append(tok), bias_v.append(float("-inf"))
    if bias_r:
        add = torch.zeros(bs, vocab_size, dtype=torch.float32)
        add.index_put_((torch.tensor(bias_r), torch.tensor(bias_t)), torch.tensor(bias_v), accumulate=True)
        out.additive = add.to(device, non_blocking=True)

    freq_rows = [i for i in rows if params[i].frequency_penalty or params[i].presence_penalty]
    if freq_rows:
        r = [i for i in freq_rows for _ in output_ids[i]]
        t = [tok for i in freq_rows for tok in output_ids[i]]
        counts = torch.zeros(bs, vocab_size, dtype=torch.float32)
        if r:
            counts.index_put_((torch.tensor(r), torch.tensor(t)), torch.ones(len(r)), accumulate=True)
        out.counts = counts.to(device, non_blocking=True)
        out.frequency = _column([p.frequency_penalty for p in params], device)
        out.presence = _column([p.presence_penalty for p in params], device)

    rep_rows = [i for i in rows if params[i].repetition_penalty != 1.0]
    if rep_rows:
        r, t = [], []
        for i in rep_rows:
            toks = set(input_ids[i]) | set(output_ids[i])
            r.extend([i] * len(toks))
            t.extend(toks)
        seen = torch.zeros(bs, vocab_size, dtype=torch.bool)
        seen[torch.tensor(r, dtype=torch.long), torch.tensor(t, dtype=torch.long)] = True
        out.seen = seen.to(device, non_blocking=True)
        out.repetition = _column([p.repetition_penalty for p in params], device)
    return out


def _column(values: List[float], device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32).unsqueeze(1).to(device, non_blocking=True)
