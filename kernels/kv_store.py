"""Store the new tokens' K and V into one layer of the paged pool at out_cache_loc.

One launch writes both K and V (casting to the pool dtype); plain indexing
(`k_buffer[loc] = k; v_buffer[loc] = v`) is two index_put launches plus a cast copy each
when dtypes differ. The work is pure bandwidth either way, so the gain is launch count:
it matters for decode (a few KB per layer), not for prefill.

FP8 pool (float8_e4m3fn buffers, --kv-cache-dtype fp8_e4m3): a value x is stored as
x / scale (fp32, correctly rounded), saturated to +-448 and rounded to nearest E4M3, and
reads back as stored * scale; `scale` is the layer's k_scale or v_scale (SGLang's meaning:
1.0 unless the checkpoint calibrated one). Saturating rather than casting keeps an
outlier from turning into NaN (E4M3 has no infinity).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import is_interpret, next_pow2
from .numerics import exact_div
from .pdl import pdl_args, pdl_wait

FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_KV_MAX = torch.finfo(FP8_KV_DTYPE).max  # 448


def is_fp8_kv(buffer: torch.Tensor) -> bool:
    return buffer.dtype == FP8_KV_DTYPE


# Triton 3.9's CPU interpreter rounds fp32 -> E4M3 wrongly (no carry into the exponent:
# 1.97 -> 1.0; subnormals off), so under TRITON_INTERPRET the value is first rounded onto the
# E4M3 grid in fp32 and the cast is exact. Compiled code casts directly (cvt.rn.satfinite).
_ROUND_IN_FP32 = tl.constexpr(is_interpret())


@triton.jit
def _round_to_e4m3_grid(y):
    """y (fp32, |y| <= 448) rounded to nearest-even E4M3, still in fp32."""
    a = tl.abs(y)
    bits = a.to(tl.uint32, bitcast=True)
    # Normal range: keep 3 mantissa bits, round half to even (a carry moves into the exponent).
    bits = (bits + 0x7FFFF + ((bits >> 20) & 1)) & 0xFFF00000
    normal = bits.to(tl.float32, bitcast=True)
    # Subnormals (< 2^-6) are multiples of 2^-9: a * 512 is exact, + 2^23 rounds it to an integer.
    sub = ((a * 512.0 + 8388608.0) - 8388608.0) * (1.0 / 512.0)
    r = tl.where(a < 0.015625, sub, normal)
    sign = y.to(tl.uint32, bitcast=True) & 0x80000000  # keeps -0.0 (byte 0x80), as torch does
    return (r.to(tl.uint32, bitcast=True) | sign).to(tl.float32, bitcast=True)


@triton.jit
def quant_fp8(x, scale):
    """x / scale saturated to E4M3 (float8_e4m3fn), the pool's store; shared with attn_extend."""
    y = tl.math.div_rn(x.to(tl.float32), scale)
    y = tl.minimum(tl.maximum(y, -448.0), 448.0)
    if _ROUND_IN_FP32:
        y = _round_to_e4m3_grid(y)
    return y.to(tl.float8e4nv)


@triton.jit
def _store_kv(K, V, K_buf, V_buf, loc, k_scale, v_scale, stride_k, stride_v, stride_kb, stride_vb,
              ROW: tl.constexpr, BLOCK: tl.constexpr, KV_FP8: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    t = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < ROW
    slot = tl.load(loc + t).to(tl.int64)
    k = tl.load(K + t * stride_k + offs, mask=mask)
    v = tl.load(V + t * stride_v + offs, mask=mask)
    if KV_FP8:
        k = quant_fp8(k, k_scale)
        v = quant_fp8(v, v_scale)
    tl.store(K_buf + slot * stride_kb + offs, k.to(K_buf.dtype.element_ty), mask=mask)
    tl.store(V_buf + slot * stride_vb + offs, v.to(V_buf.dtype.element_ty), mask=mask)


def store_kv_cache(k_buffer: torch.Tensor, v_buffer: torch.Tensor, loc: torch.Tensor,
                   k: torch.Tensor, v: torch.Tensor, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    """k_buffer[loc] = k; v_buffer[loc] = v in one launch (quantized with k_scale / v_scale
    when the buffers are float8_e4m3fn; the scales are ignored otherwise).

    k_buffer, v_buffer: [num_slots, num_kv_heads, head_dim] (rows contiguous);
    loc: [num_tokens] int64/int32; k, v: [num_tokens, num_kv_heads, head_dim] or
    [num_tokens, num_kv_heads * head_dim], each token's row contiguous.
    """
    n = loc.shape[0]
    if n == 0:
        return
    if k_buffer.dtype != v_buffer.dtype:
        raise ValueError(f"k_buffer is {k_buffer.dtype} but v_buffer is {v_buffer.dtype}")
    fp8 = is_fp8_kv(k_buffer)
    if fp8 and not (k_scale > 0 and v_scale > 0):
        raise ValueError(f"FP8 KV scales must be > 0, got k_scale={k_scale}, v_scale={v_scale}")
    row = k_buffer.shape[1] * k_buffer.shape[2]
    k2, v2 = k.reshape(n, row), v.reshape(n, row)
    assert k_buffer.stride(1) * k_buffer.shape[1] == k_buffer.stride(0) and k_buffer.stride(2) == 1
    assert v_buffer.stride(1) * v_buffer.shape[1] == v_buffer.stride(0) and v_buffer.stride(2) == 1
    assert k2.stride(1) == 1 and v2.stride(1) == 1
    block = min(next_pow2(row), 4096)
    _store_kv[(n, triton.cdiv(row, block))](
        k2, v2, k_buffer, v_buffer, loc, float(k_scale), float(v_scale),
        k2.stride(0), v2.stride(0), k_buffer.stride(0), v_buffer.stride(0),
        ROW=row, BLOCK=block, KV_FP8=fp8, num_warps=4, **pdl_args(k_buffer),
    )


def quantize_fp8_ref(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Torch reference of the FP8 store: x / scale in fp32, saturated, rounded to E4M3."""
    return exact_div(x.float(), scale).clamp(-FP8_KV_MAX, FP8_KV_MAX).to(FP8_KV_DTYPE)


def store_kv_cache_ref(k_buffer, v_buffer, loc, k, v, k_scale: float = 1.0, v_scale: float = 1.0) -> None:
    k, v = k.reshape(-1, *k_buffer.shape[1:]), v.reshape(-1, *v_buffer.shape[1:])
    if is_fp8_kv(k_buffer):
        k, v = quantize_fp8_ref(k, k_scale), quantize_fp8_ref(v, v_scale)
    k_buffer[loc.long()] = k.to(k_buffer.dtype)
    v_buffer[loc.long()] = v.to(v_buffer.dtype)
