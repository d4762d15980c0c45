"""FP8 activations for the W8A8 GEMM (cuBLASLt's row-wise `torch._scaled_mm`): x [M, K] in bf16
-> (float8_e4m3fn [M, K], float32 scale [M, 1]) in one pass per row.

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

_BLOCK = 1024  # elements of a row per iteration


@triton.jit
def _quant_rows(X, XS, Q, S, K, stride_xm, stride_qm, STATIC: tl.constexpr, BLOCK: tl.constexpr):
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
                      STATIC=static is not None, BLOCK=block, num_warps=4 if block >= 512 else 1)
    return q, scale
