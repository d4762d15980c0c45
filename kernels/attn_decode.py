"""Decode attention over the paged KV pool: one new query token per request.

Flash-decoding in two launches:
  stage 1: grid (batch, kv head x head block, kv split). Each program walks one slice of
           the request's KV (addressed token by token through req_to_token, so any page
           size works) and writes a partial, already-normalised output plus its
           log-sum-exp.
  stage 2: grid (batch, q head). Merges the splits of one head.
           For the W8A8 o_proj at decode batch sizes (out_fp8): grid (batch,), the merge of
           attn_decode_fp8.py, which hands the row on in FP8.

GQA/MQA: a stage-1 program holds all the q heads that share one kv head (up to 64 of
them), so K and V are read from HBM once per group; the group is one tl.dot operand
padded to 16 rows (Hopper's minimum). Plain MHA (group of 1) takes a dot-free path.

The number of splits is per request, a device tensor from `decode_kv_splits` (no host
sync, CUDA-graph safe); the grid always has `max_kv_splits` along axis 2 and the
programs past a request's split count exit at once.

FP8 pool (float8_e4m3fn, KV_FP8): K/V tiles are loaded as one byte each and widened to
q's dtype (exact: E4M3 fits in bf16/fp16), so the dots run in q's dtype and the bytes
read halve against bf16. The scales never touch the tiles: k_scale folds into the
softmax scale (q . (k8 * ks) = ks * (q . k8)) and v_scale into each split's output.
"""

from __future__ import annotations

import os

import math
from typing import Optional, Union

import torch
import triton
import triton.language as tl

from ._utils import device_sms, dot_precision, next_pow2
from .attn_decode_fp8 import merge_splits_fp8
from .attn_merge import merge_splits
from .kv_store import is_fp8_kv
from .numerics import Fp8Rows
from .pdl import pdl_args, pdl_wait

LOG2E = 1.4426950408889634
# A split shorter than this is not worth its stage-2 cost.
MIN_TOKENS_PER_SPLIT = 64
DEFAULT_MAX_KV_SPLITS = 16


@triton.jit
def _decode_stage1(
    Q, K, V, req_to_token, req_pool_indices, seq_lens, num_kv_splits, sm_scale_log2, v_scale,
    Mid_O, Mid_LSE,
    stride_qb, stride_qh, stride_kt, stride_kh, stride_vt, stride_vh, stride_rt,
    stride_mob, stride_moh, stride_mos, stride_lb, stride_lh,
    KV_GROUP: tl.constexpr, NUM_H_BLOCKS: tl.constexpr, HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    USE_DOT: tl.constexpr, DOT_PREC: tl.constexpr, KV_FP8: tl.constexpr, PDL: tl.constexpr,
):
    pdl_wait(PDL)
    b = tl.program_id(0)
    kv_head = tl.program_id(1) // NUM_H_BLOCKS
    h_block = tl.program_id(1) % NUM_H_BLOCKS
    split = tl.program_id(2)

    seq_len = tl.load(seq_lens + b)
    n_split = tl.maximum(tl.load(num_kv_splits + b), 1)
    split_len = tl.cdiv(seq_len, n_split)
    start = split * split_len
    end = tl.minimum(start + split_len, seq_len)
    if end > start:
        offs_g = h_block * BLOCK_H + tl.arange(0, BLOCK_H)
        mask_h = offs_g < KV_GROUP
        heads = kv_head * KV_GROUP + offs_g
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
                    mask=mask_h[:, None] & mask_d[None, :], other=0.0)
        if not KV_FP8:  # everything meets in the pool's dtype; an FP8 pool is widened to q's
            q = q.to(K.dtype.element_ty)
        row = tl.load(req_pool_indices + b)

        m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_H], tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], tl.float32)
        for n0 in range(start, end, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            mask_n = offs_n < end
            slot = tl.load(req_to_token + row * stride_rt + offs_n, mask=mask_n, other=0).to(tl.int64)
            kv_mask = mask_n[:, None] & mask_d[None, :]
            k = tl.load(K + slot[:, None] * stride_kt + kv_head * stride_kh + offs_d[None, :],
                        mask=kv_mask, other=0.0).to(q.dtype)
            if USE_DOT:
                qk = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
            else:
                qk = tl.sum(q[:, None, :].to(tl.float32) * k[None, :, :].to(tl.float32), axis=2)
            # Scores in the log2 domain; padded kv columns get -inf, padded head rows stay
            # finite (q = 0) and are simply never stored.
            qk = tl.where(mask_n[None, :], qk * sm_scale_log2, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(qk - m_new[:, None])
            v = tl.load(V + slot[:, None] * stride_vt + kv_head * stride_vh + offs_d[None, :],
                        mask=kv_mask, other=0.0).to(q.dtype)
            if USE_DOT:
                pv = tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
            else:
                pv = tl.sum(p[:, :, None] * v[None, :, :].to(tl.float32), axis=1)
            acc = acc * alpha[:, None] + pv
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new

        out_mask = mask_h[:, None] & mask_d[None, :]
        part = acc / l_i[:, None]
        if KV_FP8:
            part = part * v_scale
        tl.store(Mid_O + b * stride_mob + heads[:, None] * stride_moh + split * stride_mos + offs_d[None, :],
                 part, mask=out_mask)
        tl.store(Mid_LSE + b * stride_lb + heads * stride_lh + split, m_i + tl.log2(l_i), mask=mask_h)


@triton.jit
def _decode_stage2(
    Mid_O, Mid_LSE, O, seq_lens, num_kv_splits,
    stride_mob, stride_moh, stride_mos, stride_lb, stride_lh, stride_ob, stride_oh,
    HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr,
):
    pdl_wait(PDL)
    b = tl.program_id(0)
    head = tl.program_id(1) + tl.zeros([1], tl.int32)  # this program's one head, as a [1] block
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    n_split = tl.maximum(tl.load(num_kv_splits + b), 1)
    out = merge_splits(Mid_O, Mid_LSE, b, head, head >= 0, offs_d, mask_d, tl.load(seq_lens + b), n_split,
                       stride_mob, stride_moh, stride_mos, stride_lb, stride_lh)
    tl.store(O + b * stride_ob + head[:, None] * stride_oh + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=mask_d[None, :])


def decode_max_splits(bs: int, num_kv_heads: int, max_kv_splits: int, num_sms: int) -> int:
    """Most splits any request of a batch of `bs` gets (host int, a function of shapes only):
    about two waves of stage-1 programs, within [1, max_kv_splits]. Scratch sized with it
    keeps the stage-1 grid free of programs that can never have work."""
    return max(1, min(max_kv_splits, -(-2 * num_sms // max(1, bs * num_kv_heads))))


def decode_kv_splits(
    seq_lens: torch.Tensor,
    num_kv_heads: int,
    max_kv_splits: int = DEFAULT_MAX_KV_SPLITS,
    out: Optional[torch.Tensor] = None,
    num_sms: Optional[int] = None,
) -> torch.Tensor:
    """Per-request split count, computed on the device (no host sync).

    Enough splits that stage 1 fills about two waves of SMs (batch x kv heads x splits
    programs), never more than one split per MIN_TOKENS_PER_SPLIT tokens of that request,
    at least 1, at most max_kv_splits. Writes into `out` when given (CUDA-graph buffers).
    """
    bs = seq_lens.shape[0]
    sms = num_sms if num_sms is not None else device_sms(seq_lens)
    by_occupancy = decode_max_splits(bs, num_kv_heads, max_kv_splits, sms)
    splits = torch.clamp((seq_lens.to(torch.int32) + MIN_TOKENS_PER_SPLIT - 1) // MIN_TOKENS_PER_SPLIT,
                         min=1, max=by_occupancy)
    if out is None:
        return splits.to(torch.int32)
    out[:bs].copy_(splits)
    return out[:bs]


def _tuning_override():
    """SGLSERVE_DECODE_CFG="BLOCK_N,num_warps,num_stages" overrides the grouped stage-1 tile
    (used by benchmarks/kernels/sweep_decode.py to pick the defaults below on a GPU)."""
    raw = os.environ.get("SGLSERVE_DECODE_CFG")
    if not raw:
        return None
    block_n, warps, stages = (int(x) for x in raw.split(","))
    return block_n, warps, stages


def _stage1_config(kv_group: int, head_dim: int):
    """(BLOCK_H, NUM_H_BLOCKS, USE_DOT, BLOCK_N, num_warps, num_stages)."""
    if kv_group == 1:
        return 1, 1, False, 64, 4, 2
    block_h = max(16, min(64, next_pow2(kv_group)))
    # Swept on an H100 at Llama-3.1-8B shapes (benchmarks/kernels/sweep_decode.py): all tiles were
    # within ~5 %, 32 x 4 warps x 3 stages the best (2.45-2.75 TB/s at bs 256-768, ctx 512)
    block_n, warps, stages = 32, 4, 3
    override = _tuning_override()
    if override is not None:
        block_n, warps, stages = override
    return block_h, triton.cdiv(kv_group, block_h), True, block_n, warps, stages


def decode_attention_fwd(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    o: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    num_kv_splits: torch.Tensor,
    mid_o: torch.Tensor,
    mid_lse: torch.Tensor,
    sm_scale: float,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    out_fp8: Optional[Fp8Rows] = None,
    out_fp8_static: Optional[torch.Tensor] = None,
) -> Union[torch.Tensor, Fp8Rows]:
    """Writes attention of q over each request's KV into o; allocation free.

    q, o: [bs, num_heads, head_dim]; k_buffer, v_buffer: [num_slots, num_kv_heads, head_dim];
    req_to_token: [rows, max_ctx] int32; req_pool_indices: [bs] int64; seq_lens: [bs] int32;
    num_kv_splits: [>= bs] int32 (decode_kv_splits); mid_o: [>= bs, num_heads, max_kv_splits,
    head_dim] fp32 and mid_lse: [>= bs, num_heads, max_kv_splits] fp32 scratch.
    k_scale, v_scale: the dequantization scales of a float8_e4m3fn pool (ignored otherwise).
    out_fp8 (q [bs, num_heads * head_dim] float8_e4m3fn, scale [bs, 1]): the output goes there
    instead, as quantize_rows(o) per token (or with the static out_fp8_static [1]), and is
    returned; o is then not written. If that stage does not build here, o is written and returned.
    """
    bs, num_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    if num_heads % num_kv_heads != 0:
        raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    if bs == 0:
        return o
    assert q.stride(2) == 1 and k_buffer.stride(2) == 1 and v_buffer.stride(2) == 1 and o.stride(2) == 1
    assert req_to_token.stride(1) == 1 and mid_o.stride(3) == 1 and mid_lse.stride(2) == 1
    max_kv_splits = mid_lse.shape[2]
    fp8 = is_fp8_kv(k_buffer)
    if not fp8:
        k_scale = v_scale = 1.0
    compute_dtype = q.dtype if fp8 else k_buffer.dtype
    kv_group = num_heads // num_kv_heads
    block_d = max(16, next_pow2(head_dim))
    block_h, n_hb, use_dot, block_n, warps, stages = _stage1_config(kv_group, head_dim)
    _decode_stage1[(bs, num_kv_heads * n_hb, max_kv_splits)](
        q, k_buffer, v_buffer, req_to_token, req_pool_indices, seq_lens, num_kv_splits,
        sm_scale * k_scale * LOG2E, float(v_scale), mid_o, mid_lse,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        req_to_token.stride(0),
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        KV_GROUP=kv_group, NUM_H_BLOCKS=n_hb, HEAD_DIM=head_dim,
        BLOCK_H=block_h, BLOCK_N=block_n, BLOCK_D=block_d, USE_DOT=use_dot,
        DOT_PREC=dot_precision(compute_dtype), KV_FP8=fp8, num_warps=warps, num_stages=stages, **pdl_args(q),
    )
    if out_fp8 is not None and merge_splits_fp8(mid_o, mid_lse, o, seq_lens, num_kv_splits, out_fp8, out_fp8_static):
        return out_fp8
    _decode_stage2[(bs, num_heads)](
        mid_o, mid_lse, o, seq_lens, num_kv_splits,
        mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1),
        o.stride(0), o.stride(1),
        HEAD_DIM=head_dim, BLOCK_D=block_d, num_warps=4 if block_d <= 128 else 8, **pdl_args(q),
    )
    return o


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: Optional[float] = None,
    max_kv_splits: int = DEFAULT_MAX_KV_SPLITS,
    num_kv_splits: Optional[torch.Tensor] = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Allocating convenience wrapper of decode_attention_fwd; returns [bs, num_heads, head_dim]."""
    bs, num_heads, head_dim = q.shape
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    if num_kv_splits is None:
        num_kv_splits = decode_kv_splits(seq_lens, k_buffer.shape[1], max_kv_splits)
    mid_o = torch.empty((bs, num_heads, max_kv_splits, head_dim), dtype=torch.float32, device=q.device)
    mid_lse = torch.empty((bs, num_heads, max_kv_splits), dtype=torch.float32, device=q.device)
    o = torch.empty_like(q)
    return decode_attention_fwd(q, k_buffer, v_buffer, o, req_to_token, req_pool_indices, seq_lens,
                                num_kv_splits, mid_o, mid_lse, sm_scale, k_scale, v_scale)


def decode_attention_ref(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    seq_lens: torch.Tensor,
    sm_scale: Optional[float] = None,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
) -> torch.Tensor:
    """Torch reference: per request, gather its KV through req_to_token (an FP8 pool
    dequantized: stored * scale), softmax in fp32."""
    bs, num_heads, head_dim = q.shape
    group = num_heads // k_buffer.shape[1]
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(head_dim)
    out = torch.zeros_like(q)
    for i in range(bs):
        n = int(seq_lens[i])
        if n == 0:
            continue
        slots = req_to_token[int(req_pool_indices[i]), :n].long()
        k = k_buffer[slots].float().repeat_interleave(group, dim=1)  # [n, H, D]
        v = v_buffer[slots].float().repeat_interleave(group, dim=1)
        if is_fp8_kv(k_buffer):
            k, v = k * k_scale, v * v_scale
        scores = torch.einsum("hd,nhd->hn", q[i].float(), k) * sm_scale
        out[i] = torch.einsum("hn,nhd->hd", scores.softmax(-1), v).to(q.dtype)
    return out
