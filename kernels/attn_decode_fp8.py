"""Decode attention's stage 2 for a W8A8 o_proj: the KV splits of every head of a request merged
in one program (grid (batch,)) and the output row handed on in FP8 with its scale
(numerics.Fp8Rows), per token or static, as fp8_rows.quantize_rows would quantize it.

o_proj then runs its FP8 tensor-core path from loaded FP8, and the GEMM's own quantization launch
goes: on the H200 o_proj read 1.74 TB/s counting that launch (V19c), 2.51 fed these rows (V20). The
step did not get shorter (W1 fp8 3.07 ms either way, V20): the quantization moved into this merge,
one program a request instead of one a head. The merge is _decode_stage2's
(attn_merge.merge_splits) and rounds the row to the model dtype, as _decode_stage2 stores it, so o_proj
computes the same bits as from the bf16 output.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from ._utils import next_pow2, run_guarded
from .attn_merge import merge_splits
from .fp8_rows import store_tile_fp8
from .numerics import Fp8Rows
from .pdl import pdl_args, pdl_wait


@triton.jit
def _decode_stage2_fp8(
    Mid_O, Mid_LSE, O, Q8, S, XS, seq_lens, num_kv_splits,
    stride_mob, stride_moh, stride_mos, stride_lb, stride_lh, stride_qb,
    NUM_HEADS: tl.constexpr, HEAD_DIM: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr,
    STATIC: tl.constexpr, PDL: tl.constexpr,
):
    """_decode_stage2 for all heads of request b at once (attn_merge.merge_splits, as it), its row
    rounded to O's dtype (what _decode_stage2 stores) and then quantized as quantize_rows does."""
    pdl_wait(PDL)
    b = tl.program_id(0)
    heads = tl.arange(0, BLOCK_H)
    offs_d = tl.arange(0, BLOCK_D)
    mask_h = heads < NUM_HEADS
    mask_d = offs_d < HEAD_DIM
    n_split = tl.maximum(tl.load(num_kv_splits + b), 1)
    out = merge_splits(Mid_O, Mid_LSE, b, heads, mask_h, offs_d, mask_d, tl.load(seq_lens + b), n_split,
                       stride_mob, stride_moh, stride_mos, stride_lb, stride_lh)
    mask = mask_h[:, None] & mask_d[None, :]
    out = tl.where(mask, out.to(O.dtype.element_ty).to(tl.float32), 0.0)
    store_tile_fp8(out, Q8 + b * stride_qb + heads[:, None] * HEAD_DIM + offs_d[None, :], S + b, XS, mask, STATIC)


FP8_STAGE2_MAX_ELEMENTS = 16384  # heads x head_dim of one request that one program holds


def merge_splits_fp8(mid_o: torch.Tensor, mid_lse: torch.Tensor, o: torch.Tensor, seq_lens: torch.Tensor,
                     num_kv_splits: torch.Tensor, rows: Fp8Rows, static: Optional[torch.Tensor]) -> bool:
    """The stage that merges the splits into FP8 rows; False (nothing written) where it does not apply
    or build, and stage 2 runs instead."""
    bs, num_heads, head_dim = o.shape
    block_h, block_d = next_pow2(num_heads), max(16, next_pow2(head_dim))
    if block_h * block_d > FP8_STAGE2_MAX_ELEMENTS:
        return False
    if rows.q.shape != (bs, num_heads * head_dim) or rows.scale.shape != (bs, 1) or not rows.q.is_contiguous():
        raise ValueError(f"out_fp8 {tuple(rows.q.shape)} / {tuple(rows.scale.shape)} does not fit o {tuple(o.shape)}")
    elements = block_h * block_d
    warps = 4 if elements <= 2048 else 8 if elements <= 8192 else 16

    def launch() -> bool:
        _decode_stage2_fp8[(bs,)](
            mid_o, mid_lse, o, rows.q, rows.scale, static if static is not None else rows.scale, seq_lens, num_kv_splits,
            mid_o.stride(0), mid_o.stride(1), mid_o.stride(2), mid_lse.stride(0), mid_lse.stride(1), rows.q.stride(0),
            NUM_HEADS=num_heads, HEAD_DIM=head_dim, BLOCK_H=block_h, BLOCK_D=block_d, STATIC=static is not None,
            num_warps=warps, **pdl_args(o),
        )
        return True

    key = ("decode_stage2_fp8", num_heads, head_dim, o.dtype, static is not None)
    return run_guarded(key, launch, o.is_cuda, "attention hands o_proj its output in the model dtype") is not None
