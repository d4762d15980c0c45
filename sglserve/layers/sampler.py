"""Sampler: next token ids from logits on the logits' device, one host read per step.

Greedy rows take the argmax of their own logits only, so greedy output does not depend on
what else is in the batch. Rows with a seed draw from their own generator, seeded by
(seed, output position), so the same seed gives the same output. Before any of that the
logits get the request's penalties / logit_bias / min_tokens masks and its grammar mask.

The draw itself (`sample`) is plain torch, no Triton, so it also runs on the CPU and inside
CUDA graphs: nothing in it reads a value back to the host (.item(), .tolist(), boolean-mask
indexing, nonzero). It is the exponential race argmax(p / E), E ~ Exp(1), which samples
from p exactly and takes a torch.Generator. Next to it, as for every kernel, a reference
written from the definitions (`sampling_probs_ref`, `sample_ref`; tests/kernels/test_sampling.py).

Filter conventions (as SGLang's):
  top_k <= 0 or >= vocab: off;  top_p >= 1: off;  min_p <= 0: off.
  top-p keeps a token while the mass strictly before it (in descending order) is <= top_p,
  so the most likely token always stays. min-p keeps tokens with p >= min_p * p_max.
  All three apply to the temperature-scaled softmax, then the kept set is renormalised.
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
    vocab_mask: Optional[torch.Tensor] = None  # grammar token bitmask [bs, ceil(V/32)] int32, on the logits' device

    @classmethod
    def all_greedy(cls, bs: int) -> "SamplingBatchInfo":
        return cls(None, None, None, None, None, True, False, False, False, [None] * bs)

    @classmethod
    def from_params(cls, params: List[SamplingParams], output_lens: List[int], vocab_size: int, device) -> "SamplingBatchInfo":
        greedy = [p.is_greedy for p in params]
        if all(greedy):  # the common fast path: argmax needs no per-row tensors (no host->device copies)
            return cls.all_greedy(len(params))
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


class Sampler:
    def __call__(self, logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        logits = self.process_logits(logits, info)
        if info.is_all_greedy:
            return torch.argmax(logits, dim=-1)
        return sample(logits, info.temperatures, info.top_ps if info.need_top_p else None,
                      info.top_ks if info.need_top_k else None, info.min_ps if info.need_min_p else None,
                      info.greedy, seeds=info.seeds)

    @staticmethod
    def process_logits(logits: torch.Tensor, info: SamplingBatchInfo) -> torch.Tensor:
        """Penalties / bias, then the grammar mask (disallowed tokens -> -inf). May work in place."""
        logits = logits.float()
        if info.adjust is not None:
            logits = info.adjust.apply(logits)
        if info.vocab_mask is not None:
            from sglserve.constrained.base import apply_vocab_mask

            apply_vocab_mask(logits, info.vocab_mask)
        return logits


def filter_probs(probs: torch.Tensor, top_ps: Optional[torch.Tensor], top_ks: Optional[torch.Tensor],
                 min_ps: Optional[torch.Tensor]) -> torch.Tensor:
    """probs [bs, V] -> probs with the tokens outside each row's kept set zeroed (not renormalised).
    A filter given as None is off for every row (the Sampler knows that on the host)."""
    vocab = probs.shape[-1]
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
    drop = torch.zeros_like(sorted_probs, dtype=torch.bool)
    if top_ks is not None:
        ranks = torch.arange(vocab, device=probs.device)[None, :]
        k = top_ks.to(torch.int64)
        k = torch.where((k <= 0) | (k > vocab), torch.full_like(k, vocab), k)
        drop |= ranks >= k[:, None]
    if top_ps is not None:
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        drop |= mass_before > top_ps.to(probs.dtype)[:, None]
    if min_ps is not None:
        drop |= sorted_probs < sorted_probs[:, :1] * min_ps.to(probs.dtype)[:, None]
    drop[:, 0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)


def sampling_probs(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: Optional[torch.Tensor],
    top_ks: Optional[torch.Tensor],
    min_ps: Optional[torch.Tensor],
    need_filter: bool = True,
) -> torch.Tensor:
    """The distribution sample() draws from for non-greedy rows (unnormalised after filtering)."""
    t = temperatures.reshape(-1, 1).to(torch.float32).clamp_min(1e-6)
    probs = torch.softmax(logits.float() / t, dim=-1)
    if not need_filter or (top_ps is None and top_ks is None and min_ps is None):
        return probs
    return filter_probs(probs, top_ps, top_ks, min_ps)


def sample(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: Optional[torch.Tensor],
    top_ks: Optional[torch.Tensor],
    min_ps: Optional[torch.Tensor],
    greedy_mask: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    need_filter: bool = True,
    seeds: Optional[List[Optional[int]]] = None,
) -> torch.Tensor:
    """Next token ids [bs] int64 from logits [bs, V].

    temperatures [bs] or [bs, 1]; top_ps, min_ps [bs] float; top_ks [bs] int (None: that filter
    is off); greedy_mask [bs] bool (argmax rows: their temperature is ignored). need_filter=False
    (a host-side fact the caller knows from the sampling params) skips the sort when no row uses
    top-k/top-p/min-p. The exponential noise comes from `generator` when given; a row with a
    seed in `seeds` draws its noise from a generator of its own seeded so.
    """
    logits = logits.float()
    greedy_ids = torch.argmax(logits, dim=-1)
    temps = torch.where(greedy_mask.reshape(-1, 1), torch.ones_like(temperatures.reshape(-1, 1).float()),
                        temperatures.reshape(-1, 1).float())
    probs = sampling_probs(logits, temps, top_ps, top_ks, min_ps, need_filter)
    noise = torch.empty_like(probs).exponential_(generator=generator)
    for i, seed in enumerate(seeds or ()):
        if seed is not None:
            g = torch.Generator(device=probs.device).manual_seed(seed)
            noise[i] = torch.empty(probs.shape[-1], device=probs.device).exponential_(generator=g)
    sampled = torch.argmax(probs / noise, dim=-1)
    return torch.where(greedy_mask, greedy_ids, sampled)


def sampling_probs_ref(logits, temperatures, top_ps, top_ks, min_ps) -> torch.Tensor:
    """Row-by-row reference of sampling_probs (renormalised), written from the definitions.

    Walks each row's tokens from most to least likely and stops at the first one a filter
    drops: every filter is monotone along that order, so the kept set is a prefix.
    """
    out = torch.zeros(logits.shape, dtype=torch.float32)
    vocab = logits.shape[-1]
    for i in range(logits.shape[0]):
        p = torch.softmax(logits[i].detach().cpu().double() / max(float(temperatures.reshape(-1)[i]), 1e-6), -1)
        order = torch.argsort(p, descending=True).tolist()
        k = int(top_ks[i])
        k = vocab if k <= 0 or k > vocab else k
        top_p, min_p, p_max = float(top_ps[i]), float(min_ps[i]), float(p[order[0]])
        keep = torch.zeros(vocab, dtype=torch.bool)
        mass = 0.0
        for rank, tok in enumerate(order):
            p_tok = float(p[tok])
            if rank > 0 and (rank >= k or mass > top_p or p_tok < min_p * p_max):
                break  # the most likely token always stays
            keep[tok] = True
            mass += p_tok
        q = torch.where(keep, p, torch.zeros_like(p))
        out[i] = (q / q.sum()).float()
    return out.to(logits.device)


def sample_ref(logits, temperatures, top_ps, top_ks, min_ps, greedy_mask, generator=None) -> torch.Tensor:
    """Reference draw: torch.multinomial over sampling_probs_ref; argmax for greedy rows."""
    probs = sampling_probs_ref(logits, temperatures, top_ps, top_ks, min_ps)
    ids = torch.multinomial(probs, 1, generator=generator).squeeze(1)
    return torch.where(greedy_mask.to(ids.device), logits.argmax(-1), ids)
