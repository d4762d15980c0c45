"""Rotary position embedding applied in place to q and k.

cos_sin_cache: [max_position, rotary_dim], cos in the first rotary_dim/2 columns and sin
in the second (vLLM/SGLang layout). is_neox=True rotates halves (transformers' Llama
rotate_half: pairs (i, i + rotary_dim/2)); False rotates interleaved pairs (2i, 2i+1),
GPT-J style. Only the first rotary_dim dims of each head rotate (partial rotary).
One program per token handles every q and k head of that token. With a KVStore it also writes
the rotated k and the token's v into the KV pool (store_kv_cache's values, FP8 pools included):
the attention backend then skips its own store launch.

Rounding points are transformers' Llama ones (`q * cos + rotate_half(q) * sin` with cos/sin
computed in fp32 and cast to the activation dtype): cos and sin are rounded to the dtype of
q, each product is rounded, then the sum. In fp32 every rounding is the identity; in bf16 the
output is bit-exact with transformers given the same q, k and table. In bf16 the roundings are
integer operations: written as casts (fp32 -> bf16 -> fp32), the compiler may narrow a product
of two bf16 values to a bf16 multiply and fuse it with the following add into one FMA, a single
rounding where transformers has two (the H100 gave 18-23 % of elements off, RESULTS.md V5).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._utils import next_pow2, run_guarded
from .gemv import sum_splits
from .kv_store import is_fp8_kv, quant_fp8, store_kv_cache
from .numerics import SplitSums
from .pdl import pdl_args, pdl_wait


@dataclass(frozen=True)
class KVStore:
    """Where rotary_embedding also writes the layer's new K and V: the pool's buffers
    [slots, kv heads, head_dim], each token's slot, the FP8 scales (ignored for other dtypes)."""

    value: torch.Tensor
    k_buffer: torch.Tensor
    v_buffer: torch.Tensor
    loc: torch.Tensor
    k_scale: float = 1.0
    v_scale: float = 1.0


@triton.jit
def _round_bf16(x):
    """fp32 x rounded to the nearest-even bf16 value, still fp32 (NaN stays NaN)."""
    bits = x.to(tl.uint32, bitcast=True)
    r = ((bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000).to(tl.float32, bitcast=True)
    return tl.where(x == x, r, x)


@triton.jit
def _round(x, dt: tl.constexpr, BF16: tl.constexpr):
    if BF16:
        return _round_bf16(x)
    else:
        return x.to(dt).to(tl.float32)


@triton.jit
def _load_rows(X, P, B, row, stride_split, cols, mask, SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Token values at X + row + cols as fp32; SPLITS > 0: X is not written yet, and they are the
    split-K partials P (same layout, splits stride_split apart) added in split order, + the bias B
    (its index = cols: heads are head_dim apart), rounded to X's dtype: the reduce kernel's bits."""
    if SPLITS > 0:
        acc = sum_splits(P, B, row + cols, mask, cols, stride_split, SPLITS, HAS_BIAS)
        return acc.to(X.dtype.element_ty).to(tl.float32)
    else:
        return tl.load(X + row + cols, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _rotate(X, P, B, t, stride_t, stride_h, stride_split, n_heads, cos, sin, offs_r, mask_r,
            HALF: tl.constexpr, HEAD: tl.constexpr, ROTARY: tl.constexpr, BLOCK_H: tl.constexpr,
            BLOCK_D: tl.constexpr, IS_NEOX: tl.constexpr, BF16: tl.constexpr, SPLITS: tl.constexpr,
            HAS_BIAS: tl.constexpr):
    """Rotates token t's heads in place (SPLITS > 0: read from the partials P, written to X with the
    unrotated tail); returns the rotated halves (fp32, rounded as stored), their dim indexes and mask,
    for the KV store."""
    offs_h = tl.arange(0, BLOCK_H)
    mask = (offs_h < n_heads)[:, None] & mask_r[None, :]
    if IS_NEOX:
        i1 = offs_r
        i2 = offs_r + HALF
    else:
        i1 = offs_r * 2
        i2 = offs_r * 2 + 1
    row = t * stride_t
    heads = offs_h[:, None] * stride_h
    dt = X.dtype.element_ty
    x1 = _load_rows(X, P, B, row, stride_split, heads + i1[None, :], mask, SPLITS, HAS_BIAS)
    x2 = _load_rows(X, P, B, row, stride_split, heads + i2[None, :], mask, SPLITS, HAS_BIAS)
    c = _round(cos, dt, BF16)
    s = _round(sin, dt, BF16)
    # round(round(x1*c) - round(x2*s)): transformers' x1*cos + (-x2)*sin in the activation dtype
    y1 = _round(_round(x1 * c, dt, BF16) - _round(x2 * s, dt, BF16), dt, BF16)
    y2 = _round(_round(x2 * c, dt, BF16) + _round(x1 * s, dt, BF16), dt, BF16)
    tl.store(X + row + heads + i1[None, :], y1.to(dt), mask=mask)
    tl.store(X + row + heads + i2[None, :], y2.to(dt), mask=mask)
    if SPLITS > 0 and ROTARY < HEAD:  # partial rotary: the dims past rotary_dim, summed, as they are
        offs_d = tl.arange(0, BLOCK_D)
        tail = (offs_h < n_heads)[:, None] & ((offs_d >= ROTARY) & (offs_d < HEAD))[None, :]
        x = _load_rows(X, P, B, row, stride_split, heads + offs_d[None, :], tail, SPLITS, HAS_BIAS)
        tl.store(X + row + heads + offs_d[None, :], x.to(dt), mask=tail)
    return y1, y2, i1, i2, mask


@triton.jit
def _cache_value(x, scale, BUF, KV_FP8: tl.constexpr):
    if KV_FP8:
        return quant_fp8(x, scale)
    return x.to(BUF.dtype.element_ty)


@triton.jit
def _store_kv_row(K, V, PK, PV, BK, BV, K_buf, V_buf, loc, k_scale, v_scale, t, stride_kt, stride_kh, stride_vt,
                  stride_kb, stride_vb, stride_split, n_k, y1, y2, i1, i2, mask, HEAD: tl.constexpr,
                  ROTARY: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr, KV_FP8: tl.constexpr,
                  STORE_KV: tl.constexpr, SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr):
    """Token t's rotated k (y1, y2 at dims i1, i2; the unrotated tail from K) and its v into the pool
    slot loc[t] (STORE_KV), as store_kv_cache would write them. SPLITS > 0: v comes from the
    partials PV and goes to V as well, for the attention."""
    offs_h = tl.arange(0, BLOCK_HK)
    offs_d = tl.arange(0, BLOCK_D)
    heads = (offs_h < n_k)[:, None]
    row = heads & (offs_d < HEAD)[None, :]
    v_cols = offs_h[:, None] * HEAD + offs_d[None, :]
    v = _load_rows(V, PV, BV, t * stride_vt, stride_split, v_cols, row, SPLITS, HAS_BIAS)
    if SPLITS > 0:
        tl.store(V + t * stride_vt + v_cols, v.to(V.dtype.element_ty), mask=row)
    if STORE_KV:
        slot = tl.load(loc + t).to(tl.int64)
        kb = K_buf + slot * stride_kb + offs_h[:, None] * HEAD
        tl.store(kb + i1[None, :], _cache_value(y1, k_scale, K_buf, KV_FP8), mask=mask)
        tl.store(kb + i2[None, :], _cache_value(y2, k_scale, K_buf, KV_FP8), mask=mask)
        if ROTARY < HEAD:  # partial rotary: the dims past rotary_dim go to the cache as they are
            tail = heads & ((offs_d >= ROTARY) & (offs_d < HEAD))[None, :]
            k = _load_rows(K, PK, BK, t * stride_kt, stride_split, offs_h[:, None] * stride_kh + offs_d[None, :], tail,
                           SPLITS, HAS_BIAS)
            tl.store(kb + offs_d[None, :], _cache_value(k, k_scale, K_buf, KV_FP8), mask=tail)
        tl.store(V_buf + slot * stride_vb + v_cols, _cache_value(v, v_scale, V_buf, KV_FP8), mask=row)


@triton.jit
def _rope(Q, K, V, PQ, PK, PV, BQ, BK, BV, K_buf, V_buf, loc, k_scale, v_scale, positions, cos_sin, stride_qt, stride_qh,
          stride_kt, stride_kh, stride_vt, stride_kb, stride_vb, stride_cs, stride_split, n_q, n_k,
          HALF: tl.constexpr, HEAD: tl.constexpr, ROTARY: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_HQ: tl.constexpr,
          BLOCK_HK: tl.constexpr, BLOCK_D: tl.constexpr, IS_NEOX: tl.constexpr, BF16: tl.constexpr,
          STORE_KV: tl.constexpr, KV_FP8: tl.constexpr, SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr,
          PDL: tl.constexpr):
    """SPLITS > 0: q, k and v are first summed from qkv_proj's split-K partials (PQ, PK, PV and the
    bias BQ, BK, BV: views of numerics.SplitSums) and written to Q, K, V."""
    pdl_wait(PDL)
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(positions + t).to(tl.int64)
    offs_r = tl.arange(0, BLOCK_R)
    mask_r = offs_r < HALF
    cos = tl.load(cos_sin + pos * stride_cs + offs_r, mask=mask_r, other=0.0).to(tl.float32)[None, :]
    sin = tl.load(cos_sin + pos * stride_cs + HALF + offs_r, mask=mask_r, other=0.0).to(tl.float32)[None, :]
    _rotate(Q, PQ, BQ, t, stride_qt, stride_qh, stride_split, n_q, cos, sin, offs_r, mask_r, HALF, HEAD, ROTARY, BLOCK_HQ,
            BLOCK_D, IS_NEOX, BF16, SPLITS, HAS_BIAS)
    y1, y2, i1, i2, mask = _rotate(K, PK, BK, t, stride_kt, stride_kh, stride_split, n_k, cos, sin, offs_r, mask_r, HALF,
                                   HEAD, ROTARY, BLOCK_HK, BLOCK_D, IS_NEOX, BF16, SPLITS, HAS_BIAS)
    if STORE_KV or SPLITS > 0:
        _store_kv_row(K, V, PK, PV, BK, BV, K_buf, V_buf, loc, k_scale, v_scale, t, stride_kt, stride_kh, stride_vt,
                      stride_kb, stride_vb, stride_split, n_k, y1, y2, i1, i2, mask, HEAD, ROTARY, BLOCK_HK, BLOCK_D,
                      KV_FP8, STORE_KV, SPLITS, HAS_BIAS)


def _sum_slices(sums: SplitSums, views: Tuple[torch.Tensor, ...]) -> Tuple:
    """The partials' (and the bias's) column slices under each view of the [T, N] buffer the sums
    fill (q, k, v: column slices of it, first q), and the splits' stride."""
    width = sums.partial.shape[-1]
    if not all(t.stride(0) == width for t in views) or sums.partial.stride(1) != width:
        raise ValueError("rotary_embedding from split sums takes q, k, v as column slices of one [T, N] buffer")
    cols = [((t.data_ptr() - views[0].data_ptr()) // t.element_size(), t[0].numel()) for t in views]
    parts = tuple(sums.partial[..., o:o + w] for o, w in cols)
    biases = tuple(None if sums.bias is None else sums.bias[o:o + w] for o, w in cols)
    return (*parts, *biases, sums.partial.stride(0))


def rotary_embedding(
    positions: torch.Tensor,
    query: torch.Tensor,
    key: torch.Tensor,
    head_size: int,
    cos_sin_cache: torch.Tensor,
    is_neox: bool = True,
    kv_store: Optional[KVStore] = None,
    sums: Optional[SplitSums] = None,
    value: Optional[torch.Tensor] = None,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """In place. positions [T] int64; query [T, Hq * head_size] or [T, Hq, head_size]; key likewise
    with Hk heads (last dim contiguous); cos_sin_cache [max_pos, rotary_dim]. Returns (query, key).
    kv_store: also write the rotated key and kv_store.value into the pool, as store_kv_cache would
    (one launch less per layer). sums: qkv_proj's split-K partials (numerics.SplitSums, [S, T, N]);
    query, key and value are then the q, k, v column slices of an unwritten [T, N] buffer, which the
    kernel fills with the summed (and q, k rotated) values: the GEMM's reduce launch goes away."""
    n = positions.shape[0]
    if n == 0:
        return query, key
    if sums is not None and (value is None or kv_store is not None and kv_store.value is not value):
        raise ValueError("rotary_embedding from split sums needs value (kv_store's), the v slice of the buffer")
    q = query.view(n, -1, head_size)
    k = key.view(n, -1, head_size)
    rotary_dim = cos_sin_cache.shape[1]
    if rotary_dim % 2 or rotary_dim > head_size:
        raise ValueError(f"rotary_dim {rotary_dim} must be even and <= head_size {head_size}")
    assert q.stride(2) == 1 and k.stride(2) == 1 and cos_sin_cache.stride(1) == 1
    half = rotary_dim // 2
    store = kv_store is not None
    if store:
        kb, vb, loc, fp8 = kv_store.k_buffer, kv_store.v_buffer, kv_store.loc, is_fp8_kv(kv_store.k_buffer)
        v = kv_store.value.view(n, -1, head_size)
        if fp8 and not (kv_store.k_scale > 0 and kv_store.v_scale > 0):
            raise ValueError(f"FP8 KV scales must be > 0, got {kv_store.k_scale}, {kv_store.v_scale}")
        assert kb.shape[1:] == k.shape[1:] and vb.shape[1:] == v.shape[1:] and v.stride(1) == head_size
        assert kb.stride(1) == head_size and kb.stride(2) == 1 and vb.stride(1) == head_size and vb.stride(2) == 1
        k_scale, v_scale = float(kv_store.k_scale), float(kv_store.v_scale)
    else:
        kb = vb = loc = v = k if value is None else value.view(n, -1, head_size)
        fp8, k_scale, v_scale = False, 1.0, 1.0

    def launch(store_kv: bool, parts: Optional[Tuple[torch.Tensor, ...]] = None) -> bool:
        """parts: the partials' q, k, v slices, their bias slices (or None) and the splits' stride."""
        pq, pk, pv, bq, bk, bv, stride_split = parts if parts is not None else (q, k, v, None, None, None, 0)
        _rope[(n,)](
            q, k, v, pq, pk, pv, bq if bq is not None else q, bk if bk is not None else q, bv if bv is not None else q,
            kb, vb, loc, k_scale, v_scale, positions, cos_sin_cache, q.stride(0), q.stride(1), k.stride(0),
            k.stride(1), v.stride(0), kb.stride(0), vb.stride(0), cos_sin_cache.stride(0), stride_split, q.shape[1],
            k.shape[1], HALF=half, HEAD=head_size, ROTARY=rotary_dim, BLOCK_R=next_pow2(half),
            BLOCK_HQ=next_pow2(q.shape[1]), BLOCK_HK=next_pow2(k.shape[1]), BLOCK_D=next_pow2(head_size),
            IS_NEOX=is_neox, BF16=query.dtype == torch.bfloat16, STORE_KV=store_kv, KV_FP8=fp8 and store_kv,
            SPLITS=0 if parts is None else pq.shape[0], HAS_BIAS=bq is not None, num_warps=4, **pdl_args(query),
        )
        return True

    if sums is not None:  # the summing variant is new on a GPU: one that does not build sums in torch first
        parts = _sum_slices(sums, (query, key, value))
        guard = ("rope_from_sums", head_size, rotary_dim, query.dtype, kb.dtype, store, sums.partial.shape[0])
        if run_guarded(guard, lambda: launch(store, parts), query.is_cuda, "qkv_proj's sums added in torch") is not None:
            return query, key
        sums.total_into(query, key, value)

    # the storing variant is new on a GPU: one that does not build stores with the store kernel instead
    if not store or run_guarded(("rope_kv_store", head_size, rotary_dim, query.dtype, kb.dtype), lambda: launch(True),
                                query.is_cuda, "RoPE and the KV store run apart") is None:
        launch(False)
        if store:
            store_kv_cache(kb, vb, loc, k, v, k_scale, v_scale)
    return query, key


def rotary_embedding_ref(positions, query, key, head_size, cos_sin_cache, is_neox=True):
    """Out of place torch reference, same layout conventions and rounding points (module
    docstring): the arithmetic runs in the activation dtype with cos/sin cast to it."""
    n = positions.shape[0]
    rotary_dim = cos_sin_cache.shape[1]
    half = rotary_dim // 2
    cos_sin = cos_sin_cache[positions.long()].float()

    def apply(x):
        x = x.reshape(n, -1, head_size)
        cos, sin = cos_sin[:, None, :half].to(x.dtype), cos_sin[:, None, half:].to(x.dtype)
        rot, rest = x[..., :rotary_dim], x[..., rotary_dim:]
        if is_neox:
            x1, x2 = rot[..., :half], rot[..., half:]
            out = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        else:
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).flatten(-2)
        return torch.cat([out.to(x.dtype), rest], dim=-1)

    return apply(query).view(query.shape), apply(key).view(key.shape)


def build_cos_sin_cache(rotary_dim: int, max_position: int, base: float = 10000.0,
                        dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """Plain (unscaled) RoPE table in this layout: [max_position, rotary_dim], cos | sin."""
    inv_freq = 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32, device=device) / rotary_dim))
    freqs = torch.outer(torch.arange(max_position, dtype=torch.float32, device=device), inv_freq)
    return torch.cat([freqs.cos(), freqs.sin()], dim=-1).to(dtype)
