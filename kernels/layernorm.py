"""RMSNorm and its fused residual-add variant (SGLang's fused_add_rmsnorm semantics).

One program per row, the whole row in registers (hidden sizes up to 65536). Rounding
points are transformers' bf16 Llama ones (LlamaRMSNorm and the decoder layer's
`residual + hidden_states`), so a bf16 output is bit-exact with it given the same inputs:
  s   = round(x + residual)            the residual add happens in the activation dtype
  y   = round(s * rsqrt(mean(s^2) + eps))  variance and scaling in fp32, then `.to(input_dtype)`
  out = round(y * weight)              the weight multiply in the weight's (= activation) dtype
residual <- s. The fp32 sum must not be normalised unrounded: transformers normalises the
rounded one (this was one ulp of drift per norm on real bf16 weights).
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from ._utils import next_pow2
from .pdl import pdl_args, pdl_wait

MAX_HIDDEN = 65536


@triton.jit
def _rmsnorm(X, R, W, Y, stride_x, stride_r, stride_y, N, eps,
             HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        s = (x + tl.load(R + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)).to(R.dtype.element_ty)
        tl.store(R + row * stride_r + offs, s, mask=mask)
        x = s.to(tl.float32)  # normalise the rounded sum, as transformers does
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    y = (x * rstd).to(Y.dtype.element_ty).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + row * stride_y + offs, (y * w).to(Y.dtype.element_ty), mask=mask)


def _launch(x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor], out: torch.Tensor):
    n_rows, hidden = x.shape
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden size {hidden} > {MAX_HIDDEN} is not supported by the rmsnorm kernel")
    assert x.stride(1) == 1 and out.stride(1) == 1 and weight.is_contiguous()
    if residual is not None:
        assert residual.shape == x.shape and residual.stride(1) == 1
    if n_rows == 0:
        return
    block = next_pow2(hidden)
    warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    r = residual if residual is not None else x
    _rmsnorm[(n_rows,)](x, r, weight, out, x.stride(0), r.stride(0), out.stride(0), hidden, eps,
                        HAS_RESIDUAL=residual is not None, BLOCK=block, num_warps=warps, **pdl_args(x))


def rmsnorm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """x [n, d], weight [d] -> out [n, d]; with residual [n, d]: residual updated in place to
    x + residual and (out, residual) returned. x itself is never written."""
    out = torch.empty_like(x)
    _launch(x, weight, eps, residual, out)
    return out if residual is None else (out, residual)


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SGLang's in-place form: residual <- x + residual; x <- rmsnorm(residual). Returns (x, residual)."""
    _launch(x, weight, eps, residual, x)
    return x, residual


def rmsnorm_ref(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Transformers' LlamaRMSNorm after its decoder layer's residual add, rounding where they
    round (see the module docstring); does not modify its inputs."""
    dtype = x.dtype
    if residual is not None:
        x = (x.float() + residual.float()).to(residual.dtype)  # == residual + x in that dtype
    s = x.float()
    y = s * torch.rsqrt(s.pow(2).mean(-1, keepdim=True) + eps)
    out = (weight.float() * y.to(dtype).float()).to(dtype)  # bf16 * bf16 is exact in fp32: one rounding
    return out if residual is None else (out, x)
