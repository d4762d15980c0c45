"""Store the new tokens' K and V into one layer of the paged pool at out_cache_loc.

One launch writes both K and V (casting to the pool dtype); plain indexing
(`k_buffer[loc] = k; v_buffer[loc] = v`) is two index_put launches plus a cast copy each
when dtypes differ. The work is pure bandwidth either way, so the gain is launch count:
it matters for decode (a few KB per layer), not for prefill.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import next_pow2


@triton.jit
def _store_kv(K, V, K_buf, V_buf, loc, stride_k, stride_v, stride_kb, stride_vb,
              ROW: tl.constexpr, BLOCK: tl.constexpr):
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < ROW
    slot = tl.load(loc + t).to(tl.int64)
    k = tl.load(K + t * stride_k + offs, mask=mask)
    v = tl.load(V + t * stride_v + offs, mask=mask)
    tl.store(K_buf + slot * stride_kb + offs, k.to(K_buf.dtype.element_ty), mask=mask)
    tl.store(V_buf + slot * stride_vb + offs, v.to(V_buf.dtype.element_ty), mask=mask)


def store_kv_cache(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor) -> None:
    """k_buffer[loc] = k; v_buffer[loc] = v in one launch.

    k_buffer, v_buffer: [num_slots, num_kv_heads, head_dim] (rows contiguous);
    loc: [num_tokens] int64/int32; k, v: [num_tokens, num_kv_heads, head_dim] or
    [num_tokens, num_kv_heads * head_dim], each token's row contiguous.
    """
    n = loc.shape[0]
    if n == 0:
        return
    row = k_buffer.shape[1] * k_buffer.shape[2]
    k2, v2 = k.reshape(n, row), v.reshape(n, row)
    assert k_buffer.stride(1) * k_buffer.shape[1] == k_buffer.stride(0) and k_buffer.stride(2) == 1
    assert v_buffer.stride(1) * v_buffer.shape[1] == v_buffer.stride(0) and v_buffer.stride(2) == 1
    assert k2.stride(1) == 1 and v2.stride(1) == 1
    block = min(next_pow2(row), 4096)
    _store_kv[(n, triton.cdiv(row, block))](
        k2, v2, k_buffer, v_buffer, loc, k2.stride(0), v2.stride(0), k_buffer.stride(0), v_buffer.stride(0),
        ROW=row, BLOCK=block, num_warps=4,
    )


def store_kv_cache_ref(k_buffer, v_buffer, loc, k, v) -> None:
    k_buffer[loc.long()] = k.reshape(-1, *k_buffer.shape[1:]).to(k_buffer.dtype)
    v_buffer[loc.long()] = v.reshape(-1, *v_buffer.shape[1:]).to(v_buffer.dtype)
