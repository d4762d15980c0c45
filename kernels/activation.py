"""SiLU-and-mul: x [T, 2I] -> silu(x[:, :I]) * x[:, I:], the gated MLP's activation.

silu_and_mul_fp8 hands the product on quantized for the W8A8 down projection (numerics.Fp8Rows):
one program holds a whole row, so the row's FP8 scale comes from registers and the GEMM's own
quantization launch goes away."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._utils import next_pow2, run_guarded
from .fp8_rows import store_row_fp8
from .numerics import Fp8Rows
from .pdl import pdl_args, pdl_wait

MAX_FP8_ROW = 32768  # silu_and_mul_fp8 holds a row of I products in one program

@triton.jit
def _silu_and_mul(X, Y, stride_x, stride_y, I, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < I
    g = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    u = tl.load(X + row * stride_x + I + offs, mask=mask, other=0.0).to(tl.float32)
    # silu rounded to the io dtype before the product, like F.silu(g) * u in that dtype
    s = (g * tl.sigmoid(g)).to(Y.dtype.element_ty).to(tl.float32)
    tl.store(Y + row * stride_y + offs, (s * u).to(Y.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x [T, 2I] (last dim contiguous) -> [T, I]."""
    n, two_i = x.shape
    if two_i % 2:
        raise ValueError(f"last dim {two_i} of silu_and_mul input must be even")
    inter = two_i // 2
    if out is None:
        out = torch.empty((n, inter), dtype=x.dtype, device=x.device)
    if n == 0:
        return out
    assert x.stride(1) == 1 and out.stride(1) == 1
    block = min(triton.next_power_of_2(inter), 1024)
    _silu_and_mul[(n, triton.cdiv(inter, block))](x, out, x.stride(0), out.stride(0), inter, BLOCK=block, num_warps=4,
                                                  **pdl_args(x))
    return out


@triton.jit
def _silu_and_mul_fp8(X, Q, S, XS, stride_x, stride_q, I, STATIC: tl.constexpr, BLOCK: tl.constexpr,
                      PDL: tl.constexpr):
    pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < I
    g = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
    dtype = g.dtype
    g = g.to(tl.float32)
    u = tl.load(X + row * stride_x + I + offs, mask=mask, other=0.0).to(tl.float32)
    s = (g * tl.sigmoid(g)).to(dtype).to(tl.float32)
    v = (s * u).to(dtype).to(tl.float32)  # silu_and_mul's output, then quantize_rows' numerics
    store_row_fp8(v, Q + row * stride_q, S + row, XS, offs, mask, STATIC, BLOCK)


def silu_and_mul_fp8(x: torch.Tensor, input_scale: Optional[torch.Tensor] = None) -> Optional[Fp8Rows]:
    """x [T, 2I] -> Fp8Rows equal to quantize_rows(silu_and_mul(x)) per token (input_scale None) or
    with the static input_scale [1]; None when I exceeds MAX_FP8_ROW or the kernel does not build
    here (run_guarded): the caller runs the two steps."""
    n, two_i = x.shape
    if two_i % 2:
        raise ValueError(f"last dim {two_i} of silu_and_mul input must be even")
    inter = two_i // 2
    if inter > MAX_FP8_ROW:
        return None
    q = torch.empty((n, inter), dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((n, 1), dtype=torch.float32, device=x.device)
    if n:
        assert x.stride(1) == 1
        block = next_pow2(inter)
        static = None if input_scale is None else input_scale.float().reshape(1)
        launch = lambda: _silu_and_mul_fp8[(n,)](  # noqa: E731
            x, q, scale, static if static is not None else x, x.stride(0), q.stride(0), inter, STATIC=static is not None,
            BLOCK=block, num_warps=4 if block <= 1024 else (8 if block <= 4096 else 16), **pdl_args(x)) or True
        if run_guarded(("silu_and_mul_fp8", block, x.dtype, static is not None), launch, x.is_cuda,
                       "SiLU-and-mul and the GEMM's quantization run apart") is None:
            return None
    return Fp8Rows(q, scale, x.dtype)


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]
