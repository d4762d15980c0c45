"""RMSNorm with SGLang's fused residual-add semantics."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import nn

from sglserve.layers.custom_op import CustomOp, get_kernel
from sglserve.layers.quantization.base import Fp8Input
from sglserve_kernels.numerics import SplitSums


class RMSNorm(CustomOp):
    """y = x / rms(x) * weight, rounding where transformers' LlamaRMSNorm rounds: variance and
    scaling in fp32, `.to(input dtype)`, then the weight multiply in the weight's dtype.

    forward(x) -> y. forward(x, residual) first adds: s = x + residual, rounded to the
    activation dtype (transformers adds the residual in bf16) and normalises that rounded s;
    returns (rmsnorm(s), s) so the decoder layer carries the running sum without a second pass.
    Kernel "rmsnorm": fn(x [n, d], weight [d], eps, residual: Optional[[n, d]])
    with the same return convention (it may work in place).

    x may be numerics.SplitSums (a linear's `hand_on_sums` output, always with a residual): the
    kernels add its splits themselves; the torch path sums them first (SplitSums.total).

    fp8_input (the next linear's `fp8_input()`, a W8A8 layer): on CUDA the output comes quantized
    for it from the kernel "rmsnorm_fp8" (fn(x, weight, eps, residual, input_scale) -> Fp8Rows |
    (Fp8Rows, residual) | None), one launch instead of a norm and the GEMM's quantization.
    """

    kernel_name = "rmsnorm"

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps

    def forward_native(
        self, x: torch.Tensor, residual: Optional[torch.Tensor] = None, fp8_input: Optional[Fp8Input] = None
    ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
        del fp8_input  # the torch path hands x on unquantized; the linear rounds it, to the same values
        if isinstance(x, SplitSums):  # a split-K GEMM's partials (CUDA, where the norm kernel is missing)
            x = x.total()
        orig_dtype = x.dtype
        if residual is not None:
            residual = x + residual  # in the activation dtype, as transformers' decoder layer adds
            x = residual
        x = x.to(torch.float32)
        variance = x.pow(2).mean(dim=-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.variance_epsilon)
        out = self.weight * x.to(orig_dtype)
        return out if residual is None else (out, residual)

    def forward_cuda(
        self, kernel: Callable, x: torch.Tensor, residual: Optional[torch.Tensor] = None,
        fp8_input: Optional[Fp8Input] = None,
    ) -> Union[Any, Tuple[Any, torch.Tensor]]:
        shape = x.shape
        x2 = x if isinstance(x, SplitSums) else x.reshape(-1, shape[-1])  # SplitSums: [S, rows, d] already
        r2 = None if residual is None else residual.reshape(-1, shape[-1])
        fused = None if fp8_input is None else get_kernel("rmsnorm_fp8")
        out = None if fused is None else fused(x2, self.weight, self.variance_epsilon, r2, fp8_input.input_scale)
        if out is not None:  # the next linear's x, already in FP8 (numerics.Fp8Rows); None: not built here
            if residual is None:
                return replace(out, q=out.q.view(shape))
            return replace(out[0], q=out[0].q.view(shape)), out[1].view(shape)
        if residual is None:
            return kernel(x2, self.weight, self.variance_epsilon, None).view(shape)
        out, res = kernel(x2, self.weight, self.variance_epsilon, r2)
        return out.view(shape), res.view(shape)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.variance_epsilon}"
