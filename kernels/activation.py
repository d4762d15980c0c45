"""SiLU-and-mul: x [T, 2I] -> silu(x[:, :I]) * x[:, I:], the gated MLP's activation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .pdl import pdl_args, pdl_wait


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


def silu_and_mul_ref(x: torch.Tensor) -> torch.Tensor:
    d = x.shape[-1] // 2
    return F.silu(x[..., :d]) * x[..., d:]
