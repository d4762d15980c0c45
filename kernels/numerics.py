"""Torch-only numerics shared by the kernels' references and sglserve's torch paths (no Triton
import: sglserve's CPU path imports this)."""

from __future__ import annotations

import torch


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
