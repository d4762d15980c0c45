"""FP8 E4M3 numerics in plain torch: quantize weights (per tensor, channel or block), expand
scales, and quantize-dequantize activations the way a W8A8 FP8 GEMM sees them.

These are the CPU path and the reference that GPU FP8 kernels are tested against.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from sglserve_kernels.numerics import _MIN_SCALE, FP8_MAX, exact_div, quantize_rows_ref

FP8_DTYPE = torch.float8_e4m3fn


def to_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale saturated to the E4M3 range, then cast (no NaN on overflow)."""
    return exact_div(x.float(), scale).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_per_channel(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (fp8 [out, in], float32 scale [out, 1]) with w ~ q * scale."""
    scale = exact_div(w.abs().amax(dim=1, keepdim=True).float(), FP8_MAX).clamp_(min=_MIN_SCALE)
    return to_fp8(w, scale), scale


def quantize_per_tensor(w: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """w -> (fp8, float32 scale [1])."""
    scale = exact_div(w.abs().amax().float(), FP8_MAX).clamp_(min=_MIN_SCALE).reshape(1)
    return to_fp8(w, scale), scale


def quantize_per_block(w: torch.Tensor, block: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """w [out, in] -> (fp8 [out, in], float32 scale [ceil(out/n), ceil(in/k)]): DeepSeek's layout,
    the checkpoint's `weight_scale_inv` (w ~ q * scale blockwise)."""
    n, k = block
    out, inp = w.shape
    nb_n, nb_k = -(-out // n), -(-inp // k)
    padded = w.new_zeros(nb_n * n, nb_k * k)
    padded[:out, :inp] = w
    blocks = padded.view(nb_n, n, nb_k, k)
    scale = exact_div(blocks.abs().amax(dim=(1, 3)).float(), FP8_MAX).clamp_(min=_MIN_SCALE)
    return to_fp8(w, expand_block_scale(scale, block, out, inp)), scale


def expand_block_scale(scale: torch.Tensor, block: Tuple[int, int], out: int, inp: int) -> torch.Tensor:
    """Block scales [nb_n, nb_k] -> one per element [out, in]."""
    n, k = block
    return scale.repeat_interleave(n, dim=0)[:out].repeat_interleave(k, dim=1)[:, :inp]


def dequantize(weight: torch.Tensor, scale: torch.Tensor, block: Optional[Tuple[int, int]], dtype: torch.dtype) -> torch.Tensor:
    """fp8 weight and its scale (per tensor [1], per channel [out, 1], or per block) -> dtype."""
    if block is not None:
        scale = expand_block_scale(scale, block, *weight.shape)
    return (weight.to(torch.float32) * scale).to(dtype)


def fake_quantize_activation(x: torch.Tensor, strategy: str, static_scale: Optional[torch.Tensor] = None,
                             group_size: int = 128) -> torch.Tensor:
    """x rounded through FP8 as the GEMM's input would be: per token (dynamic), per 1 x group
    (dynamic, with block weights), or per tensor (dynamic, or static with the checkpoint's
    input_scale). Returns x's dtype."""
    if strategy == "group" and static_scale is None:
        inp = x.shape[-1]
        if inp % group_size:
            raise ValueError(f"activation groups of {group_size} do not divide the input size {inp}")
        g = x.float().unflatten(-1, (inp // group_size, group_size))
        scale = exact_div(g.abs().amax(dim=-1, keepdim=True), FP8_MAX).clamp_(min=_MIN_SCALE)
        return (to_fp8(g, scale).float() * scale).flatten(-2).to(x.dtype)
    q, scale = quantize_rows_ref(x.reshape(-1, x.shape[-1]), static_scale, strategy)
    return (q.float() * scale).reshape(x.shape).to(x.dtype)
