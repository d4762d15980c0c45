"""Sampler: next token ids from logits on the logits' device, one host read per step.

Greedy rows take the argmax of their own logits only, so greedy output does not depend on
what else is in the batch. Rows with a seed draw from their own generator, seeded by
(seed, output position), so the same seed gives the same output. Before any of that the
logits get the request's penalties / logit_bias / min_tokens masks and its grammar mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import torch

from sglserve.sampling.penalties import LogitAdjust
from sglserve.sampling.sampling_params import SamplingParams


@dataclass
class SamplingBatchInfo:
    temperatures: Optional[torch.Tensor]  # [bs, 1] float32 (1.0 for greedy rows); None when all greedy
    top_ps: Optional[torch.Tensor]  # [bs]
    top_ks: Optional[torch.Tensor]  # [bs] int64, vocab size when disabled
    min_ps: Optional[torch.Tensor]  # [bs]
    greedy: Optional[torch.Tensor]  # [bs] bool
    is_all_greedy: bool
    need_top_p: bool
    need_top_k: bool
    need_min_p: bool
    seeds: List[Optional[int]]  # per row: seed + output position, or None
    # Set by the scheduler after from_params when some row needs them (None: nothing to do)
    adjust: Optional["LogitAdjust"] = None  # penalties, logit_bias, min_tokens (sampling/penalties.py)
    vocab_mask: Optional[torch.Tensor] = None  # xgrammar token bitmask [bs, ceil(V/32)] int32, on the logits' device

    @classmethod
    def from_params(cls, params: List[SamplingParams], output_lens: List[int], vocab_size: int, device) -> "SamplingBatchInfo":
        greedy = [p.is_greedy for p in params]
        if all(greedy):  # the common fast path: argmax needs no per-row tensors (no host->device copies)
            return cls(None, None, None, None, None, True, False, False, False, [None] * len(params))
        temps = [1.0 if g else p.temperature for p, g in zip(params, greedy)]
        top_ks = [vocab_size if (p.top_k < 0 or p.top_k > vocab_size) else p.top_k for p in params]
        seeds = [None if (p.seed is None or g) else (p.seed * 1_000_003 + n) & 0x7FFFFFFFFFFFFFFF
                 for p, g, n in zip(params, greedy, output_lens)]

        def t(x, dtype):
            return torch.tensor(x, dtype=dtype).to(device, non_blocking=True)

        return cls(
            temperatures=t(temps, torch.float32).unsqueeze(1),
            top_ps=t([p.top_p for p in params], torch.float32),
            top_ks=t(top_ks, torch.int64),
            min_ps=t([p.min_p for p in params], torch.float32),
            greedy=t(greedy, torch.bool),
            is_all_greedy=all(greedy),
            need_top_p=any(p.top_p < 1.0 for p in params),
            need_top_k=any(k < vocab_size for k in top_ks),
            need_min_p=any(p.min_p > 0 for p in params),
            seeds=seeds,
        )


def top_k_top_p_min_p_filter(probs: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
    """Zeroes probabilities outside each row's top-k / top-p / min-p set (renormalized later)."""
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
    if info.need_top_k:
        ranks = torch.arange(probs.shape[-1], device=probs.device)[None, :]
        sorted_probs = sorted_probs.masked_fill(ranks >= info.top_ks[:, None], 0.0)
    if info.need_top_p:
        cum = sorted_probs.cumsum(dim=-1)
        # keep a token if the mass before it is below top_p (the first token always stays)
        sorted_probs = sorted_probs.masked_fill((cum - sorted_probs) > info.top_ps[:, None], 0.0)
    if info.need_min_p:
        threshold = sorted_probs[:, :1] * info.min_ps[:, None]
        sorted_probs = sorted_probs.masked_fill(sorted_probs < threshold, 0.0)
    return torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)


class Sampler:
    def __call__(self, logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        logits = self.process_logits(logits, info)
        greedy_ids = torch.argmax(logits, dim=-1)
        if info.is_all_greedy:
            return greedy_ids
        probs = torch.softmax(logits / info.temperatures, dim=-1)
        probs = top_k_top_p_min_p_filter(probs, info)
        sampled = self._multinomial(probs, info.seeds)
        return torch.where(info.greedy, greedy_ids, sampled)

    @staticmethod
    def process_logits(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """Penalties / bias, then the grammar mask (disallowed tokens -> -inf). May work in place."""
        logits = logits.float()
        if info.adjust is not None:
            logits = info.adjust.apply(logits)
        if info.vocab_mask is not None:
            from sglserve.constrained.xgrammar_backend import apply_vocab_mask

            apply_vocab_mask(logits, info.vocab_mask)
        return logits

    @staticmethod
    def _multinomial(probs: torch.Tensor, seeds: List[Optional[int]]) -> torch.Tensor:
        # Exponential-race sampling (argmax p / E) avoids a host sync and accepts per-row generators
        noise = torch.empty_like(probs).exponential_()
        for i, seed in enumerate(seeds):
            if seed is not None:
                g = torch.Generator(device=probs.device).manual_seed(seed)
                noise[i] = torch.empty(probs.shape[-1], device=probs.device).exponential_(generator=g)
        return torch.argmax(probs / noise, dim=-1)
