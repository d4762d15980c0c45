"""ForwardBatch: the tensors one forward pass needs, built once per scheduler step."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING, Any, Callable, List, Optional

import numpy as np
import torch

from sglserve.mem_cache.memory_pool import aligned_len, to_device_async

if TYPE_CHECKING:
    from sglserve.layers.attention.base import AttentionBackend
    from sglserve.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool


class ForwardMode(IntEnum):
    EXTEND = 1  # prefill, chunked prefill, or prefill after a radix hit
    DECODE = 2  # one new token per request

    def is_extend(self) -> bool:
        return self == ForwardMode.EXTEND

    def is_decode(self) -> bool:
        return self == ForwardMode.DECODE


@dataclass
class ForwardBatch:
    forward_mode: ForwardMode
    batch_size: int
    input_ids: torch.Tensor  # [num_tokens] int64
    positions: torch.Tensor  # [num_tokens] int64
    req_pool_indices: torch.Tensor  # [bs] int64, rows in req_to_token
    seq_lens: torch.Tensor  # [bs] int32: tokens in KV once this pass has run (prefix + new)
    out_cache_loc: torch.Tensor  # [num_tokens] int64: KV slots the new tokens are written to
    seq_lens_cpu: List[int]
    # EXTEND only: per request, tokens already in KV (prefix) and tokens computed now
    extend_prefix_lens: Optional[torch.Tensor] = None  # [bs] int32
    extend_seq_lens: Optional[torch.Tensor] = None  # [bs] int32
    extend_start_loc: Optional[torch.Tensor] = None  # [bs] int32: offset of each request in input_ids
    extend_prefix_lens_cpu: Optional[List[int]] = None
    extend_seq_lens_cpu: Optional[List[int]] = None
    # Logits for every input position (input logprobs, parity tests), not just the last
    return_all_logits: bool = False
    # EXTEND only: the last num_decoding requests are running ones extending by one token (a
    # mixed step); a backend may send them through its decode kernel
    num_decoding: int = 0
    # Pools and backend, set by the model runner
    req_to_token_pool: Optional["ReqToTokenPool"] = None
    token_to_kv_pool: Optional["MHATokenToKVPool"] = None
    attn_backend: Optional["AttentionBackend"] = None
    # Per-step scratch the attention backend fills in init_forward_metadata
    attn_metadata: Any = None
    # Called after each decoder layer is enqueued (eager forwards only), with True after the last:
    # the scheduler resolves the step before this one there (Scheduler._resolve_when_done)
    between_layers: Optional[Callable[[bool], None]] = None
    extra: dict = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.input_ids.shape[0])

    @classmethod
    def build(
        cls,
        mode: ForwardMode,
        input_ids: List[int],
        req_pool_indices: List[int],
        prefix_lens: List[int],
        seq_lens: List[int],
        out_cache_loc: torch.Tensor,
        device: torch.device | str,
        return_all_logits: bool = False,
        num_decoding: int = 0,
    ) -> "ForwardBatch":
        """From per-request host lists: request i computes positions prefix_lens[i]..seq_lens[i]-1."""
        prefix = np.asarray(prefix_lens, dtype=np.int64)
        lens = np.asarray(seq_lens, dtype=np.int64) - prefix
        starts = np.cumsum(lens) - lens
        # Position of each token: its request's prefix length plus its offset in the request's run
        positions = np.arange(int(lens.sum()), dtype=np.int64) + np.repeat(prefix - starts, lens)
        # Every int column in one pinned host buffer and one queued copy: the host never waits
        # here for the forwards still running (a pageable or blocking copy would). Columns start
        # 16-aligned: Triton specializes kernels on pointer alignment, so unaligned views would
        # compile new variants mid-run.
        cols = [input_ids, positions, out_cache_loc.to("cpu").numpy(), req_pool_indices, seq_lens]
        if mode.is_extend():
            cols += [prefix, lens, starts]
        arrays = [np.asarray(c, dtype=np.int64) for c in cols]
        offsets = [0]
        for a in arrays:
            offsets.append(offsets[-1] + aligned_len(len(a)))
        host = np.zeros(offsets[-1], dtype=np.int64)
        for a, o in zip(arrays, offsets):
            host[o:o + len(a)] = a
        dev = to_device_async(torch.from_numpy(host), device)
        col = [dev[o:o + len(a)] for a, o in zip(arrays, offsets)]
        fb = cls(
            forward_mode=mode,
            batch_size=len(seq_lens),
            input_ids=col[0],
            positions=col[1],
            req_pool_indices=col[3],
            seq_lens=col[4].to(torch.int32),
            out_cache_loc=col[2],
            seq_lens_cpu=list(seq_lens),
            return_all_logits=return_all_logits,
            num_decoding=num_decoding if mode.is_extend() else 0,
        )
        if mode.is_extend():
            fb.extend_prefix_lens = col[5].to(torch.int32)
            fb.extend_seq_lens = col[6].to(torch.int32)
            fb.extend_start_loc = col[7].to(torch.int32)
            fb.extend_prefix_lens_cpu = list(prefix_lens)
            fb.extend_seq_lens_cpu = lens.tolist()
        return fb
