"""Sampling on the device: temperature, top-k, top-p, min-p per row, no host sync.

Plain torch (no Triton), so it also runs on the CPU and inside CUDA graphs: nothing here
reads a value back to the host (.item(), .tolist(), boolean-mask indexing, nonzero).
The draw is the exponential race argmax(p / E), E ~ Exp(1), which samples from p exactly
and takes a torch.Generator.

Filter conventions (same as SGLang / the torch sampler in sglserve/layers/sampler.py):
  top_k <= 0 or >= vocab: off;  top_p >= 1: off;  min_p <= 0: off.
  top-p keeps a token while the mass strictly before it (in descending order) is <= top_p,
  so the most likely token always stays. min-p keeps tokens with p >= min_p * p_max.
  All three apply to the temperature-scaled softmax, then the kept set is renormalised.
"""

from __future__ import annotations

from typing import Optional

import torch


def filter_probs(
    probs: torch.Tensor, top_ps: torch.Tensor, top_ks: torch.Tensor, min_ps: torch.Tensor
) -> torch.Tensor:
    """probs [bs, V] -> probs with the tokens outside each row's kept set zeroed (not renormalised)."""
    vocab = probs.shape[-1]
    sorted_probs, sorted_idx = probs.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=probs.device)[None, :]
    k = top_ks.to(torch.int64)
    k = torch.where((k <= 0) | (k > vocab), torch.full_like(k, vocab), k)
    drop = ranks >= k[:, None]
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop |= mass_before > top_ps.to(probs.dtype)[:, None]
    drop |= sorted_probs < sorted_probs[:, :1] * min_ps.to(probs.dtype)[:, None]
    drop[:, 0] = False
    sorted_probs = sorted_probs.masked_fill(drop, 0.0)
    return torch.zeros_like(probs).scatter_(-1, sorted_idx, sorted_probs)


def sampling_probs(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: torch.Tensor,
    top_ks: torch.Tensor,
    min_ps: torch.Tensor,
    need_filter: bool = True,
) -> torch.Tensor:
    """The distribution sample() draws from for non-greedy rows (unnormalised after filtering)."""
    t = temperatures.reshape(-1, 1).to(torch.float32).clamp_min(1e-6)
    probs = torch.softmax(logits.float() / t, dim=-1)
    return filter_probs(probs, top_ps, top_ks, min_ps) if need_filter else probs


def sample(
    logits: torch.Tensor,
    temperatures: torch.Tensor,
    top_ps: torch.Tensor,
    top_ks: torch.Tensor,
    min_ps: torch.Tensor,
    greedy_mask: torch.Tensor,
    generator: Optional[torch.Generator] = None,
    need_filter: bool = True,
) -> torch.Tensor:
    """Next token ids [bs] int64 from logits [bs, V].

    temperatures [bs] or [bs, 1]; top_ps, min_ps [bs] float; top_ks [bs] int; greedy_mask [bs]
    bool (argmax rows: their temperature is ignored). need_filter=False (a host-side fact
    the caller knows from the sampling params) skips the sort when no row uses
    top-k/top-p/min-p. The exponential noise comes from `generator` when given.
    """
    logits = logits.float()
    greedy_ids = torch.argmax(logits, dim=-1)
    temps = torch.where(greedy_mask.reshape(-1, 1), torch.ones_like(temperatures.reshape(-1, 1).float()),
                        temperatures.reshape(-1, 1).float())
    probs = sampling_probs(logits, temps, top_ps, top_ks, min_ps, need_filter)
    noise = torch.empty_like(probs).exponential_(generator=generator)
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
