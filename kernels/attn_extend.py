"""Extend (prefill) attention: new tokens attend to their cached prefix and causally to
themselves, every request of the batch in one launch.

Grid (request, q head, block of BLOCK_M new tokens). A program first walks the prefix,
whose K/V it reads from the paged pool token by token through req_to_token (any page
size), with no mask; then the new tokens' own K/V from the contiguous k/v inputs with the
causal mask, stopping at the diagonal of its query block. Online softmax in fp32, scores
in the log2 domain. Programs past a request's extend length exit at once, so requests of
any lengths share the launch (the grid is sized by the longest).

FP8 pool (float8_e4m3fn, KV_FP8): prefix K/V are loaded as one byte each and widened to
q's dtype; the new tokens' K/V are rounded through the same store (x / scale -> E4M3) so
a token's K/V read the same in its own prefill as in every later step (the result does
not depend on whether a prefix came from the cache, and matches the torch_native
backend, which reads everything back from the pool). k_scale folds into the softmax
scale and v_scale into the output, so the tiles are never multiplied.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from ._utils import dot_precision, is_interpret, next_pow2
from .kv_store import is_fp8_kv, quant_fp8, quantize_fp8_ref

LOG2E = 1.4426950408889634


@triton.jit
def _online_block(q, k, v, mask, m_i, l_i, acc, sm_scale_log2, DOT_PREC: tl.constexpr):
    qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    qk = tl.where(mask, qk * sm_scale_log2, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(qk - m_new[:, None])
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    l_i = l_i * alpha + tl.sum(p, 1)
    return m_new, l_i, acc


@triton.jit
def _extend_attn(
    Q, K, V, O, K_buf, V_buf, req_to_token, req_pool_indices, prefix_lens, extend_lens, start_loc,
    sm_scale_log2, k_scale, v_scale,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_ot, stride_oh,
    stride_kbt, stride_kbh, stride_vbt, stride_vbh, stride_rt,
    KV_GROUP: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, DOT_PREC: tl.constexpr,
    KV_FP8: tl.constexpr,
):
    b = tl.program_id(0)
    h = tl.program_id(1)
    mb = tl.program_id(2)
    ext_len = tl.load(extend_lens + b)
    if mb * BLOCK_M >= ext_len:
        return
    prefix = tl.load(prefix_lens + b)
    start = tl.load(start_loc + b).to(tl.int64)
    row = tl.load(req_pool_indices + b)
    kvh = h // KV_GROUP

    offs_m = mb * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < ext_len
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    q = tl.load(Q + (start + offs_m)[:, None] * stride_qt + h * stride_qh + offs_d[None, :],
                mask=mask_m[:, None] & mask_d[None, :], other=0.0)
    # Everything meets in the pool's dtype (new k/v and q cast on load; a no-op normally),
    # except that an FP8 pool is widened to q's dtype.
    if not KV_FP8:
        q = q.to(K_buf.dtype.element_ty)

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)

    # Cached prefix: every new token sees all of it.
    for n0 in range(0, prefix, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < prefix
        slot = tl.load(req_to_token + row * stride_rt + offs_n, mask=mask_n, other=0).to(tl.int64)
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K_buf + slot[:, None] * stride_kbt + kvh * stride_kbh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V_buf + slot[:, None] * stride_vbt + kvh * stride_vbh + offs_d[None, :], mask=kv_mask, other=0.0)
        k = k.to(q.dtype)
        v = v.to(q.dtype)
        m_i, l_i, acc = _online_block(q, k, v, mask_n[None, :], m_i, l_i, acc, sm_scale_log2, DOT_PREC)

    # The new tokens themselves, causal; blocks past this query block's diagonal are skipped.
    end_n = tl.minimum(ext_len, (mb + 1) * BLOCK_M)
    for n0 in range(0, end_n, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mask_n = offs_n < ext_len
        kv_mask = mask_n[:, None] & mask_d[None, :]
        k = tl.load(K + (start + offs_n)[:, None] * stride_kt + kvh * stride_kh + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(V + (start + offs_n)[:, None] * stride_vt + kvh * stride_vh + offs_d[None, :], mask=kv_mask, other=0.0)
        if KV_FP8:
            k = quant_fp8(k, k_scale)
            v = quant_fp8(v, v_scale)
        k = k.to(q.dtype)
        v = v.to(q.dtype)
        causal = mask_n[None, :] & (offs_m[:, None] >= offs_n[None, :])
        m_i, l_i, acc = _online_block(q, k, v, causal, m_i, l_i, acc, sm_scale_log2, DOT_PREC)

    out = acc / l_i[:, None]
    if KV_FP8:
        out = out * v_scale
    tl.store(O + (start + offs_m)[:, None] * stride_ot + h * stride_oh + offs_d[None, :],
             out.to(O.dtype.element_ty), mask=mask_m[:, None] & mask_d[None, :])


def _extend_config(head_dim: int, dtype: torch.dtype):
    """(BLOCK_M, BLOCK_N, num_warps, num_stages): Hopper-sized tiles, smaller in fp32."""
    if is_interpret():
        return 32, 32, 4, 1
    if dtype == torch.float32:
        return 64, 32, 4, 2
    if head_dim <= 64:
        return 128, 64, 4, 2
    if head_dim <= 128:
        return 128, 64, 8, 2
    return 64, 32, 8, 2


def extend_attention_fwd(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    o: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    extend_prefix_lens: torch.Tensor,
    extend_seq_lens: torch.Tensor,
    extend_start_loc: torch.Tensor,
    max_extend_len: int,
    sm_scale: Optional[float] = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Writes into o the attention of the new tokens; allocation free.

    q, o: [num_tokens, num_heads, head_dim]; k, v: [num_tokens, num_kv_heads, head_dim] (the
    new tokens, request after request, request i at extend_start_loc[i] for
    extend_seq_lens[i] tokens); k_buffer, v_buffer: [num_slots, num_kv_heads, head_dim] hold
    each request's first extend_prefix_lens[i] tokens at req_to_token[req_pool_indices[i]].
    max_extend_len: a host int >= every extend_seq_lens[i] (sizes the grid).
    k_scale, v_scale: the scales of a float8_e4m3fn pool (ignored otherwise).
    """
    num_tokens, num_heads, head_dim = q.shape
    num_kv_heads = k.shape[1]
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    bs = extend_seq_lens.shape[0]
    if bs == 0 or num_tokens == 0 or max_extend_len <= 0:
        return o
    for t in (q, k, v, o, k_buffer, v_buffer):
        assert t.stride(-1) == 1, "last dim must be contiguous"
    assert req_to_token.stride(1) == 1
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    fp8 = is_fp8_kv(k_buffer)
    if fp8 and not (k_scale > 0 and v_scale > 0):
        raise ValueError(f"FP8 KV scales must be > 0, got k_scale={k_scale}, v_scale={v_scale}")
    if not fp8:
        k_scale = v_scale = 1.0
    compute_dtype = q.dtype if fp8 else k_buffer.dtype
    block_m, block_n, warps, stages = _extend_config(head_dim, compute_dtype)
    grid = (bs, num_heads, triton.cdiv(max_extend_len, block_m))
    _extend_attn[grid](
        q, k, v, o, k_buffer, v_buffer, req_to_token, req_pool_indices,
        extend_prefix_lens, extend_seq_lens, extend_start_loc, sm_scale * k_scale * LOG2E,
        float(k_scale), float(v_scale),
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1), o.stride(0), o.stride(1),
        k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1), req_to_token.stride(0),
        KV_GROUP=num_heads // num_kv_heads, HEAD_DIM=head_dim,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=max(16, next_pow2(head_dim)),
        DOT_PREC=dot_precision(compute_dtype), KV_FP8=fp8, num_warps=warps, num_stages=stages,
    )
    return o


def extend_attention(
    q, k, v, k_buffer, v_buffer, req_to_token, req_pool_indices,
    extend_prefix_lens, extend_seq_lens, extend_start_loc, max_extend_len: int, sm_scale: Optional[float] = None,
    k_scale: float = 1.0, v_scale: float = 1.0,
) -> torch.Tensor:
    """Allocating wrapper of extend_attention_fwd."""
    o = torch.empty_like(q)
    return extend_attention_fwd(q, k, v, o, k_buffer, v_buffer, req_to_token, req_pool_indices,
                                extend_prefix_lens, extend_seq_lens, extend_start_loc, max_extend_len, sm_scale,
                                k_scale, v_scale)


def extend_attention_ref(
    q, k, v, k_buffer, v_buffer, req_to_token, req_pool_indices,
    extend_prefix_lens, extend_seq_lens, extend_start_loc, sm_scale: Optional[float] = None,
    k_scale: float = 1.0, v_scale: float = 1.0,
) -> torch.Tensor:
    """Torch reference: per request, keys = prefix (from the pool) + new; causal softmax in fp32.
    An FP8 pool is dequantized (stored * scale) and the new K/V go through the same rounding."""
    num_heads, head_dim = q.shape[1], q.shape[2]
    group = num_heads // k.shape[1]
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    out = torch.zeros_like(q)
    for i in range(extend_seq_lens.shape[0]):
        p, n, s = int(extend_prefix_lens[i]), int(extend_seq_lens[i]), int(extend_start_loc[i])
        if n == 0:
            continue
        slots = req_to_token[int(req_pool_indices[i]), :p].long()
        new_k, new_v = k[s:s + n], v[s:s + n]
        if is_fp8_kv(k_buffer):
            new_k, new_v = quantize_fp8_ref(new_k, k_scale), quantize_fp8_ref(new_v, v_scale)
        keys = torch.cat([k_buffer[slots].float(), new_k.float()]).repeat_interleave(group, dim=1)
        vals = torch.cat([v_buffer[slots].float(), new_v.float()]).repeat_interleave(group, dim=1)
        if is_fp8_kv(k_buffer):
            keys, vals = keys * k_scale, vals * v_scale
        scores = torch.einsum("qhd,khd->hqk", q[s:s + n].float(), keys) * sm_scale
        allowed = torch.arange(p + n)[None, :] <= (p + torch.arange(n))[:, None]
        scores = scores.masked_fill(~allowed.to(scores.device), float("-inf"))
        out[s:s + n] = torch.einsum("hqk,khd->qhd", scores.softmax(-1), vals).to(q.dtype)
    return out
