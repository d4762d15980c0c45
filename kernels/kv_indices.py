"""Flatten the KV pages of a batch's requests for attention libraries that take a CSR page table
(FlashInfer): with pages of P tokens and n_i = ceil(seq_lens[i] / P),
out[indptr[i] + j] = req_to_token[req_pool_indices[i], j * P] // P for j < n_i.

P = 1 gives the token slots themselves. P > 1 is the allocator's page size: a request's position p
lives at slot page(p // P) * P + p % P (pages are filled in order and never shared mid-page), so the
first slot of each page names it.

One launch per pass, on the device, from device tensors: no host sync, so it can sit in front
of a captured CUDA graph.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _build_kv_indices(req_to_token, req_pool_indices, seq_lens, indptr, out, stride_r2t,
                      PAGE: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0)
    row = tl.load(req_pool_indices + i).to(tl.int64)
    n = (tl.load(seq_lens + i) + PAGE - 1) // PAGE
    start = tl.load(indptr + i).to(tl.int64)
    for off in range(0, n, BLOCK):
        offs = off + tl.arange(0, BLOCK)
        mask = offs < n
        slots = tl.load(req_to_token + row * stride_r2t + offs.to(tl.int64) * PAGE, mask=mask)
        tl.store(out + start + offs, (slots // PAGE).to(out.dtype.element_ty), mask=mask)


def build_kv_indices(req_to_token: torch.Tensor, req_pool_indices: torch.Tensor, seq_lens: torch.Tensor,
                     indptr: torch.Tensor, out: torch.Tensor, page_size: int = 1) -> torch.Tensor:
    """req_to_token: [rows, max_context] (int32/int64, last dim contiguous); req_pool_indices,
    seq_lens: [bs]; indptr: [bs + 1] exclusive prefix sum of ceil(seq_lens / page_size);
    out: [>= indptr[-1]]. Returns out (the first indptr[-1] entries written)."""
    bs = req_pool_indices.shape[0]
    if bs == 0:
        return out
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    assert req_to_token.stride(1) == 1
    _build_kv_indices[(bs,)](req_to_token, req_pool_indices, seq_lens, indptr, out, req_to_token.stride(0),
                             PAGE=page_size, BLOCK=512, num_warps=4)
    return out


def build_kv_indices_ref(req_to_token, req_pool_indices, seq_lens, indptr, out, page_size: int = 1) -> torch.Tensor:
    for i, (row, n) in enumerate(zip(req_pool_indices.tolist(), seq_lens.tolist())):
        start, pages = int(indptr[i]), -(-n // page_size)
        out[start:start + pages] = (req_to_token[row, :n:page_size] // page_size).to(out.dtype)
    return out
