"""Flatten the KV slots of a batch's requests for attention libraries that take a CSR page
table (FlashInfer): out[indptr[i] : indptr[i] + seq_lens[i]] = req_to_token[req_pool_indices[i], :seq_lens[i]].

One launch per pass, on the device, from device tensors: no host sync, so it can sit in front
of a captured CUDA graph. Slots are token indices (pages of one token), which is how the pool
is addressed whatever its allocation page size.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _build_kv_indices(req_to_token, req_pool_indices, seq_lens, indptr, out, stride_r2t, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    row = tl.load(req_pool_indices + i).to(tl.int64)
    n = tl.load(seq_lens + i)
    start = tl.load(indptr + i).to(tl.int64)
    for off in range(0, n, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        mask = offs < n
        slots = tl.load(req_to_token + row * stride_r2t + offs, mask=mask)
        tl.store(out + start + offs, slots.to(out.dtype.element_ty), mask=mask)


def build_kv_indices(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                     indptr: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """req_to_token: [rows, max_context] (int32/int64, last dim contiguous); req_pool_indices,
    seq_lens: [bs]; indptr: [bs + 1] exclusive prefix sum of seq_lens; out: [>= indptr[-1]].
    Returns out (the first indptr[-1] entries written)."""
    bs = req_pool_indices.shape[0]
    if bs == 0:
        return out
    assert req_to_token.stride(1) == 1
    _build_kv_indices[(bs,)](req_to_token, req_pool_indices, seq_lens, indptr, out, req_to_token.stride(0),
                             BLOCK=512, num_warps=4)
    return out


def build_kv_indices_ref(req_to_token, req_pool_indices, seq_lens, indptr, out) -> torch.Tensor:
    for i, (row, n) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist())):
        start = int(indptr[i])
        out[start:start + n] = req_to_token[row, :n].to(out.dtype)
    return out
