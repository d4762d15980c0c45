"""FP8 activations for the W8A8 GEMMs: x [M, K] in bf16 -> (float8_e4m3fn [M, K], float32 scale
[M, 1]) in one pass per row (cuBLASLt's row-wise `torch._scaled_mm`, the skinny GEMM's fp8_dot
path), and x rounded through E4M3 in its own dtype (quantize_activation: the skinny GEMM's FMA
and dot paths).

In torch the same takes six kernels over an fp32 copy of x (float, abs, amax, divide, clamp,
cast): ~600 MB of traffic for a 4096 x 4096 step, about as long as the FP8 GEMM it feeds, which
left W2 with `--quantization fp8` no faster than bf16 (RESULTS.md, H100). Here x is read twice
(the row's absolute max, then the quantization) and only the FP8 bytes are written.

Numerics are `numerics.quantize_rows_ref` bit for bit: scale = amax / 448 (correctly rounded, at least
1e-12), q = x / scale correctly rounded, saturated to +-448, rounded to nearest-even E4M3.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._utils import next_pow2
from .kv_store import quant_fp8
from .numerics import _MIN_SCALE, FP8_MAX, exact_div
from .pdl import pdl_args, pdl_wait

_BLOCK = 1024  # elements of a row per iteration


@triton.jit
def _quant_rows(X, XS, Q, S, K, stride_xm, stride_qm, STATIC: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    m = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    row = X + m * stride_xm
    if STATIC:  # one scale for every row (a checkpoint's input_scale, or a per-tensor amax)
        scale = tl.zeros((BLOCK,), tl.float32) + tl.load(XS)
    else:
        amax = tl.zeros((BLOCK,), tl.float32)
        for k0 in range(0, K, BLOCK):
            xa = tl.load(row + k0 + offs, mask=k0 + offs < K, other=0.0)
            amax = tl.maximum(amax, tl.abs(xa.to(tl.float32)))
        amax = tl.zeros((BLOCK,), tl.float32) + tl.max(amax, axis=0)
        scale = tl.maximum(tl.math.div_rn(amax, tl.full((BLOCK,), 448.0, tl.float32)), 1e-12)
    tl.store(S + m + offs * 0, scale, mask=offs == 0)
    for k0 in range(0, K, BLOCK):
        mask = k0 + offs < K
        x = tl.load(row + k0 + offs, mask=mask, other=0.0)
        tl.store(Q + m * stride_qm + k0 + offs, quant_fp8(x, scale), mask=mask)


@triton.jit
def store_row_fp8(v, Q_row, S_row, XS, offs, mask, STATIC: tl.constexpr, BLOCK: tl.constexpr):
    """A whole row v (fp32 [BLOCK], in one program) quantized as quantize_rows does: its scale
    (amax / 448, or the static XS) into S_row, its FP8 values into Q_row. For the kernels that
    produce a GEMM's x (rmsnorm_fp8, silu_and_mul_fp8)."""
    store_tile_fp8(v[None, :], (Q_row + offs)[None, :], S_row, XS, mask[None, :], STATIC)


@triton.jit
def store_tile_fp8(v, Q_ptrs, S_row, XS, mask, STATIC: tl.constexpr):
    """store_row_fp8 for a row held as a 2-D tile v (fp32, zero where ~mask; attn_decode_fp8's
    heads x head_dim): its scale into S_row, its FP8 values through the pointer tile Q_ptrs."""
    if STATIC:
        scale = tl.zeros(v.shape, tl.float32) + tl.load(XS)
    else:
        scale = tl.zeros(v.shape, tl.float32) + tl.max(tl.max(tl.abs(v), axis=1), axis=0)
        scale = tl.maximum(tl.math.div_rn(scale, tl.full(v.shape, 448.0, tl.float32)), 1e-12)
    first = (tl.arange(0, v.shape[0])[:, None] == 0) & (tl.arange(0, v.shape[1])[None, :] == 0)
    tl.store(S_row + tl.zeros(v.shape, tl.int32), scale, mask=first)
    tl.store(Q_ptrs, quant_fp8(v, scale), mask=mask)


def quantize_rows(x2: torch.Tensor, input_scale: Optional[torch.Tensor], activation_strategy: str
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (float8_e4m3fn [M, K], float32 scale [M, 1]): per token ("token": each row's
    amax), per tensor ("tensor": the whole x's amax), or static (input_scale given)."""
    if x2.dim() != 2:
        raise ValueError(f"quantize_rows takes x [M, K], got {tuple(x2.shape)}")
    m, k = x2.shape
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    q = torch.empty((m, k), dtype=torch.float8_e4m3fn, device=x2.device)
    scale = torch.empty((m, 1), dtype=torch.float32, device=x2.device)
    if m == 0:
        return q, scale
    static = input_scale
    if static is None and activation_strategy == "tensor":
        static = exact_div(x2.abs().amax().float(), FP8_MAX).clamp_(min=_MIN_SCALE)
    elif static is None and activation_strategy != "token":
        raise ValueError(f"activation strategy {activation_strategy!r}: token, tensor, or an input_scale")
    block = min(_BLOCK, next_pow2(k))
    _quant_rows[(m,)](x2, static.float() if static is not None else x2, q, scale, k, x2.stride(0), q.stride(0),
                      STATIC=static is not None, BLOCK=block, num_warps=4 if block >= 512 else 1, **pdl_args(x2))
    return q, scale


# ---- fake-quantized activations for the skinny GEMM (gemv.py): x rounded through E4M3, in x's dtype ----
# A one-program-per-row pre-kernel rounds x once per call (per token, per tensor dynamic or static,
# or per 1 x bk group) and writes q * scale in x's dtype, exactly what the CPU path's matmul sees.
# Before, every GEMM program re-derived the scales and re-rounded every x tile, which cost more
# instructions than the weight stream it was hiding behind. The rounding is done in fp32 arithmetic
# (round-to-nearest-even, saturating like `to_fp8`), which is exactly torch's cast and, unlike
# Triton's cast, also exact in the CPU interpreter.

ACT_NONE, ACT_TOKEN, ACT_TENSOR, ACT_STATIC, ACT_GROUP = 0, 1, 2, 3, 4
_QUANT_BLOCK = 8192  # elements of x one pre-kernel iteration holds (8 warps: 32 a thread)


@triton.jit
def _round_e4m3(v):
    """v (fp32, any range) -> the nearest E4M3 value, ties to even, saturated to +-448."""
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    bits = v.to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # below 2^-6: the subnormal step 2^-9
    # 1.5 * 2^(e - 3 + 23): adding and subtracting it rounds v to a multiple of 2^(e-3) (3 mantissa bits)
    big = ((e - 3 + 23 + 127) << 23).to(tl.float32, bitcast=True) * 1.5
    return (v + big) - big


@triton.jit
def _act_scale(amax):
    return tl.maximum(tl.math.div_rn(amax, tl.full(amax.shape, 448.0, tl.float32)), 1e-12)


@triton.jit
def _quant_act(X, XS, Q, M, K, stride_xm, stride_qm, ACT: tl.constexpr, GROUP: tl.constexpr, NG: tl.constexpr,
               PDL: tl.constexpr):
    """Q[m] = fake_quantize_activation(X[m]) in Q's dtype: one program per row, x in [NG, GROUP]
    tiles (a group per tile row for ACT_GROUP). The scale is amax / 448 (at least 1e-12)."""
    pdl_wait(PDL)
    m = tl.program_id(0)
    offs = tl.arange(0, NG)[:, None] * GROUP + tl.arange(0, GROUP)[None, :]
    scale = tl.zeros((NG, GROUP), tl.float32)
    if ACT == 3:  # static per tensor
        scale += tl.load(XS)
    if ACT == 1 or ACT == 2:  # dynamic: this row's (token) or every row's (tensor) absolute max first
        if ACT == 1:
            lo = m
            hi = m + 1
        else:
            lo = 0
            hi = M
        amax = tl.zeros((NG, GROUP), tl.float32)
        for r in range(lo, hi):
            for k0 in range(0, K, NG * GROUP):
                xa = tl.load(X + r * stride_xm + k0 + offs, mask=k0 + offs < K, other=0.0)
                amax = tl.maximum(amax, tl.abs(xa.to(tl.float32)))
        scale += _act_scale(tl.max(tl.max(amax, axis=1), axis=0))
    for k0 in range(0, K, NG * GROUP):
        mask = k0 + offs < K
        x = tl.load(X + m * stride_xm + k0 + offs, mask=mask, other=0.0).to(tl.float32)
        s = scale
        if ACT == 4:  # dynamic per 1 x GROUP group: one tile row is one group
            s = scale + _act_scale(tl.max(tl.abs(x), axis=1))[:, None]
        q = _round_e4m3(tl.math.div_rn(x, s)) * s
        tl.store(Q + m * stride_qm + k0 + offs, q.to(Q.dtype.element_ty), mask=mask)


def quantize_activation(x2: torch.Tensor, act: int, input_scale: Optional[torch.Tensor],
                        group: Optional[int]) -> torch.Tensor:
    """x [M, K] rounded through FP8 and scaled back, in x's dtype (`fake_quantize_activation`)."""
    m, k = x2.shape
    q = torch.empty_like(x2)
    block = min(_QUANT_BLOCK, next_pow2(k))
    if act == ACT_GROUP:
        if group is None or group < 1 or group & (group - 1) or group > _QUANT_BLOCK:
            raise ValueError(f"activation groups of {group} are not a power of two <= {_QUANT_BLOCK}")
        block = max(block, group)
    width = group if act == ACT_GROUP else min(block, 256)
    _quant_act[(m,)](x2, input_scale if input_scale is not None else x2, q, m, k, x2.stride(0), q.stride(0),
                     ACT=act, GROUP=width, NG=block // width, num_warps=8, **pdl_args(x2))
    return q
