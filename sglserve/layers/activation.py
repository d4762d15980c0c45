"""Gated activations of the MLP."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from sglserve.layers.custom_op import CustomOp


class SiluAndMul(CustomOp):
    """silu(gate) * up for x = [gate | up] along the last dim (the fused gate_up_proj output).

    Kernel "silu_and_mul": fn(x [n, 2d]) -> [n, d].
    """

    kernel_name = "silu_and_mul"

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        d = x.shape[-1] // 2
        return F.silu(x[..., :d]) * x[..., d:]

    def forward_cuda(self, kernel: Callable, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        out = kernel(x.reshape(-1, shape[-1]))
        return out.view(*shape[:-1], shape[-1] // 2)
