"""The merge of decode attention's KV splits (flash-decoding's stage 2), shared by the per-head
kernel (attn_decode._decode_stage2, one head a program) and the one that hands a W8A8 o_proj FP8
rows (attn_decode_fp8, all heads of a request a program): one copy of the operations, so both give
the same bits for a head."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def merge_splits(Mid_O, Mid_LSE, b, heads, mask_h, offs_d, mask_d, seq_len, n_split,
                 stride_mob, stride_moh, stride_mos, stride_lb, stride_lh):
    """The output of request b's heads [H] (fp32 [H, BLOCK_D]): each split's normalised partial
    weighted by its log-sum-exp. A request without tokens (seq_len 0, e.g. a padded CUDA-graph row)
    yields zeros, not NaN; masked heads read as one empty split (zeros)."""
    split_len = tl.cdiv(seq_len, n_split)
    mask = mask_h[:, None] & mask_d[None, :]
    e_max = tl.full(heads.shape, float("-inf"), tl.float32)
    e_sum = tl.zeros(heads.shape, tl.float32)
    acc = tl.zeros([heads.shape[0], offs_d.shape[0]], tl.float32)
    for s in range(0, n_split):
        start = s * split_len
        end = tl.minimum(start + split_len, seq_len)
        if end > start:
            part = tl.load(Mid_O + b * stride_mob + heads[:, None] * stride_moh + s * stride_mos + offs_d[None, :],
                           mask=mask, other=0.0)
            lse = tl.load(Mid_LSE + b * stride_lb + heads * stride_lh + s, mask=mask_h, other=0.0)
            new_max = tl.maximum(lse, e_max)
            old_scale = tl.exp2(e_max - new_max)
            w = tl.exp2(lse - new_max)
            acc = acc * old_scale[:, None] + w[:, None] * part
            e_sum = e_sum * old_scale + w
            e_max = new_max
    return tl.where(e_sum[:, None] > 0, acc / tl.maximum(e_sum, 1e-30)[:, None], 0.0)
