"""Torch-only numerics shared by the kernels' references and sglserve's torch paths (no Triton
import: sglserve's CPU path imports this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch

FP8_MAX = 448.0  # float8_e4m3fn's largest finite value
_MIN_SCALE = 1e-12  # an all-zero row keeps a finite scale


def exact_div(x: torch.Tensor, d) -> torch.Tensor:
    """x / d, correctly rounded on every device. CUDA turns a division by a Python number (a CPU
    scalar) into a multiplication by its reciprocal, at times one ulp off, and that ulp moves an
    FP8 rounding away from the kernels' div_rn: the torch references and the torch FP8 paths
    divide through this instead."""
    if not isinstance(d, torch.Tensor):
        d = torch.full((), float(d), dtype=torch.float32, device=x.device)
    elif d.device != x.device:
        d = d.to(x.device)
    return x / d


def quantize_rows_ref(x2: torch.Tensor, input_scale: Optional[torch.Tensor], activation_strategy: str
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] -> (float8_e4m3fn [M, K], float32 scale [M, 1]), per token ("token"), per tensor
    ("tensor") or static (input_scale): the CPU path's W8A8 activations (fp8_utils.
    fake_quantize_activation) and the reference of the Triton kernels (fp8_rows, gemv)."""
    xf = x2.float()
    m = x2.shape[0]
    if input_scale is not None:
        scale = input_scale.float().reshape(1, 1).expand(m, 1)
    elif activation_strategy == "token":
        scale = exact_div(xf.abs().amax(dim=-1, keepdim=True), FP8_MAX).clamp_(min=_MIN_SCALE)
    elif activation_strategy == "tensor":
        scale = exact_div(xf.abs().amax(), FP8_MAX).clamp_(min=_MIN_SCALE).reshape(1, 1).expand(m, 1)
    else:
        raise ValueError(f"activation strategy {activation_strategy!r} is unknown")
    scale = scale.contiguous()
    return exact_div(xf, scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale


@dataclass(frozen=True)
class Fp8Rows:
    """An activation already quantized for a W8A8 GEMM by the kernel that produced it (RMSNorm,
    SiLU-and-mul): q float8_e4m3fn [..., K] and a float32 scale per row [M, 1], exactly what
    quantize_rows_ref gives for the activation in `dtype`, so the GEMM skips its own pass over x.
    dequantize() is the CPU path's fake_quantize_activation of that activation, bit for bit."""

    q: torch.Tensor
    scale: torch.Tensor
    dtype: torch.dtype  # the activation dtype it stands for (and the GEMM's output dtype)

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    @property
    def is_cuda(self) -> bool:
        return self.q.is_cuda

    @property
    def device(self) -> torch.device:
        return self.q.device

    def dequantize(self) -> torch.Tensor:
        k = self.q.shape[-1]
        return (self.q.reshape(-1, k).float() * self.scale).reshape(self.q.shape).to(self.dtype)


@dataclass(frozen=True)
class SplitSums:
    """A split-K skinny GEMM's output left unsummed for the kernel that reads it next (the fused
    residual-add RMSNorm after o_proj and down_proj): partial fp32 [S, M, N], one slice per K
    split. total() is the split-K reduce kernel's value bit for bit: the splits added in order in
    fp32, then the bias, then one rounding to `dtype`; the reader computes the same in registers,
    so one launch and one round trip through memory go away and no bit changes."""

    partial: torch.Tensor
    bias: Optional[torch.Tensor]
    dtype: torch.dtype
    shape: torch.Size  # the GEMM output's shape ([..., N])

    @property
    def is_cuda(self) -> bool:
        return self.partial.is_cuda

    @property
    def device(self) -> torch.device:
        return self.partial.device

    def total(self) -> torch.Tensor:
        acc = torch.zeros_like(self.partial[0])
        for part in self.partial:
            acc += part
        if self.bias is not None:
            acc += self.bias.float()
        return acc.to(self.dtype).reshape(self.shape)

    def total_into(self, *views: torch.Tensor) -> None:
        """total() written into views: column slices of one [rows, N] buffer, the first at column 0
        (q, k, v of a fused qkv_proj output)."""
        total = self.total().reshape(-1, self.shape[-1])
        for v in views:
            col = (v.data_ptr() - views[0].data_ptr()) // v.element_size()
            v.copy_(total[:, col:col + v[0].numel()].view(v.shape))
