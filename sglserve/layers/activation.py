"""Gated activations of the MLP."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from sglserve.layers.custom_op import CustomOp, get_kernel
from sglserve.layers.quantization.base import Fp8Input


class SiluAndMul(CustomOp):
    """silu(gate) * up for x = [gate | up] along the last dim (the fused gate_up_proj output).

    Kernel "silu_and_mul": fn(x [n, 2d]) -> [n, d]. With fp8_input (the down projection's, a W8A8
    layer) on CUDA, "silu_and_mul_fp8": fn(x, input_scale) -> Fp8Rows | None, the output already
    quantized for it.
    """

    kernel_name = "silu_and_mul"

    def forward_native(self, x: torch.Tensor, fp8_input: Optional[Fp8Input] = None) -> torch.Tensor:
        del fp8_input  # the torch path hands x on unquantized; the linear rounds it, to the same values
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]

    def forward_cuda(self, kernel: Callable, x: torch.Tensor, fp8_input: Optional[Fp8Input] = None) -> Any:
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        fused = None if fp8_input is None else get_kernel("silu_and_mul_fp8")
        out = None if fused is None else fused(x2, fp8_input.input_scale)  # None: a row too wide, or not built here
        if out is not None:
            return replace(out, q=out.q.view(*shape[:-1], shape[-1] // 2))
        out = kernel(x2)
        return out.view(*shape[:-1], shape[-1] // 2)
