"""RMSNorm and its fused residual-add variant (SGLang's fused_add_rmsnorm semantics).

One program per row, the whole row in registers (hidden sizes up to 65536). Rounding
points are transformers' bf16 Llama ones (LlamaRMSNorm and the decoder layer's
`residual + hidden_states`), so a bf16 output is bit-exact with it given the same inputs:
  s   = round(x + residual)            the residual add happens in the activation dtype
  y   = round(s * rsqrt(mean(s^2) + eps))  variance and scaling in fp32, then `.to(input_dtype)`
  out = round(y * weight)              the weight multiply in the weight's (= activation) dtype
residual <- s. The fp32 sum must not be normalised unrounded: transformers normalises the
rounded one (this was one ulp of drift per norm on real bf16 weights).

rmsnorm_fp8 hands `out` on quantized for the W8A8 GEMM after the norm (numerics.Fp8Rows): the
same row in registers gives its FP8 scale, so the GEMM's own quantization launch goes away.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from ._utils import next_pow2, run_guarded
from .fp8_rows import store_row_fp8
from .gemv import sum_splits
from .numerics import Fp8Rows, SplitSums
from .pdl import pdl_args, pdl_wait

MAX_HIDDEN = 65536


@triton.jit
def _rmsnorm(X, R, W, Y, S, XS, B, stride_x, stride_split, stride_r, stride_y, N, eps,
             HAS_RESIDUAL: tl.constexpr, QUANT: tl.constexpr, STATIC: tl.constexpr, SPLITS: tl.constexpr,
             HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    """QUANT: Y is float8_e4m3fn and S gets the row's scale: the output rounded to the activation
    dtype (R's, else X's), then quantized as fp8_rows.quantize_rows would (per row, or the static XS).
    SPLITS > 0: X is a split-K GEMM's fp32 partials [SPLITS, rows, N] (numerics.SplitSums, with a
    residual): x is their sum in split order, + the bias B, rounded to R's dtype (the reduce kernel's bits)."""
    pdl_wait(PDL)
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    mask = offs < N
    if SPLITS > 0:
        act_dtype = R.dtype.element_ty
        x = sum_splits(X, B, row * stride_x + offs, mask, offs, stride_split, SPLITS, HAS_BIAS)
        x = x.to(act_dtype).to(tl.float32)
    else:
        x = tl.load(X + row * stride_x + offs, mask=mask, other=0.0)
        act_dtype = x.dtype
        x = x.to(tl.float32)
    if HAS_RESIDUAL:
        s = (x + tl.load(R + row * stride_r + offs, mask=mask, other=0.0).to(tl.float32)).to(R.dtype.element_ty)
        tl.store(R + row * stride_r + offs, s, mask=mask)
        x = s.to(tl.float32)  # normalise the rounded sum, as transformers does
    rstd = tl.rsqrt(tl.sum(x * x, axis=0) / N + eps)
    y = (x * rstd).to(act_dtype).to(tl.float32)
    w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
    out = (y * w).to(act_dtype)
    if QUANT:
        store_row_fp8(out.to(tl.float32), Y + row * stride_y, S + row, XS, offs, mask, STATIC, BLOCK)
    else:
        tl.store(Y + row * stride_y + offs, out.to(Y.dtype.element_ty), mask=mask)


def _launch(x: Union[torch.Tensor, SplitSums], weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor],
            out: torch.Tensor, scale: Optional[torch.Tensor] = None, input_scale: Optional[torch.Tensor] = None):
    sums = x if isinstance(x, SplitSums) else None
    if sums is not None:  # x is a split-K GEMM's partials [S, rows, N]: the kernel adds them
        if residual is None:
            raise ValueError("split-K partial sums are read by the fused residual-add norm only")
        x = sums.partial
        assert x.is_contiguous() and sums.dtype == residual.dtype
    n_rows, hidden = x.shape[-2:]
    if hidden > MAX_HIDDEN:
        raise ValueError(f"hidden size {hidden} > {MAX_HIDDEN} is not supported by the rmsnorm kernel")
    assert x.stride(-1) == 1 and out.stride(1) == 1 and weight.is_contiguous()
    if residual is not None:
        assert residual.shape == x.shape[-2:] and residual.stride(1) == 1
        assert residual.dtype == (x.dtype if sums is None else sums.dtype)
    if n_rows == 0:
        return
    block = next_pow2(hidden)
    warps = 4 if block <= 1024 else (8 if block <= 4096 else 16)
    r = residual if residual is not None else x
    quant = scale is not None
    bias = None if sums is None else sums.bias
    _rmsnorm[(n_rows,)](x, r, weight, out, scale if quant else x, input_scale if input_scale is not None else x,
                        bias if bias is not None else x, x.stride(-2), x.stride(0) if sums is not None else 0,
                        r.stride(0), out.stride(0), hidden, eps, HAS_RESIDUAL=residual is not None, QUANT=quant,
                        STATIC=input_scale is not None, SPLITS=0 if sums is None else x.shape[0],
                        HAS_BIAS=bias is not None, BLOCK=block, num_warps=warps, **pdl_args(x))


def _rows(x: Union[torch.Tensor, SplitSums]) -> Tuple[torch.Size, torch.dtype]:
    """The [n, d] shape and dtype of the rows x stands for."""
    return (x.partial.shape[1:], x.dtype) if isinstance(x, SplitSums) else (x.shape, x.dtype)


def rmsnorm(
    x: Union[torch.Tensor, SplitSums], weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """x [n, d], weight [d] -> out [n, d]; with residual [n, d]: residual updated in place to
    x + residual and (out, residual) returned. x itself is never written. x may be a split-K
    GEMM's numerics.SplitSums (with a residual): the kernel adds the splits."""
    shape, dtype = _rows(x)
    out = torch.empty(shape, dtype=dtype, device=x.device)
    if isinstance(x, SplitSums):  # the summing variant is new on a GPU: one that does not build sums in torch
        if residual is None:
            raise ValueError("split-K partial sums are read by the fused residual-add norm only")
        key = ("rmsnorm from split sums", shape[1], dtype, x.partial.shape[0], x.bias is not None)
        if run_guarded(key, lambda: _launch(x, weight, eps, residual, out) or True, x.is_cuda,
                       "the GEMM's split sums are added in torch") is not None:
            return out, residual
        x = x.total()
    _launch(x, weight, eps, residual, out)
    return out if residual is None else (out, residual)


def fused_add_rmsnorm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
) -> Tuple[torch.Tensor, torch.Tensor]:
    """SGLang's in-place form: residual <- x + residual; x <- rmsnorm(residual). Returns (x, residual)."""
    _launch(x, weight, eps, residual, x)
    return x, residual


def rmsnorm_fp8(
    x: Union[torch.Tensor, SplitSums], weight: torch.Tensor, eps: float, residual: Optional[torch.Tensor] = None,
    input_scale: Optional[torch.Tensor] = None,
) -> Optional[Union[Fp8Rows, Tuple[Fp8Rows, torch.Tensor]]]:
    """rmsnorm, its output handed on quantized for the W8A8 GEMM that reads it: Fp8Rows equal to
    quantize_rows(rmsnorm(x, ...)) per token (input_scale None) or with the static input_scale [1].
    One launch instead of two, and the bf16 output is never written. None if the kernel does not
    build here (run_guarded; nothing written): the caller runs rmsnorm and the GEMM quantizes."""
    shape, dtype = _rows(x)
    q = torch.empty(shape, dtype=torch.float8_e4m3fn, device=x.device)
    scale = torch.empty((shape[0], 1), dtype=torch.float32, device=x.device)
    static = None if input_scale is None else input_scale.float().reshape(1)
    splits = x.partial.shape[0] if isinstance(x, SplitSums) else 0
    key = ("rmsnorm_fp8", shape[1], dtype, residual is not None, static is not None, splits)
    if run_guarded(key, lambda: _launch(x, weight, eps, residual, q, scale, static) or True, x.is_cuda,
                   "the norm and the GEMM's quantization run apart") is None:
        return None
    rows = Fp8Rows(q, scale, dtype)
    return rows if residual is None else (rows, residual)


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
