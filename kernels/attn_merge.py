"""The merge of decode attention's KV splits (flash-decoding's stage 2), shared by the per-head
kernel (attn_decode._decode_stage2, one head a program) and the one that hands a W8A8 o_proj FP8
rows (attn_decode_fp8, all heads of a request a program): one copy of the operations, so both give
the same bits for a head.

The splits are merged in two passes over registers, not as a running (online) softmax: every
split's log-sum-exp at once (one [heads, MAX_SPLITS] load), their maximum and weights, then the
weighted partials in a loop unrolled over MAX_SPLITS with the dead splits' loads masked off. The
online form chained each split's load behind the previous split's rescale: at batch 1 that was
up to 16 dependent L2 round trips a layer in a kernel that moves ~16 KB; here every load is
independent and can be in flight at once."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def merge_splits(Mid_O, Mid_LSE, b, heads, mask_h, offs_d, mask_d, seq_len, n_split,
                 stride_mob, stride_moh, stride_mos, stride_lb, stride_lh, MAX_SPLITS: tl.constexpr):
    """The output of request b's heads [H] (fp32 [H, BLOCK_D]): each split's normalised partial
    weighted by exp2(its log-sum-exp - the heads' largest). A split is live when it holds tokens
    (s < n_split and its start < seq_len); a request without tokens (seq_len 0, e.g. a padded
    CUDA-graph row) and masked heads yield zeros, not NaN. MAX_SPLITS: a power of two >= the
    scratch's split count."""
    split_len = tl.cdiv(seq_len, n_split)
    splits = tl.arange(0, MAX_SPLITS)
    live = (splits < n_split) & (splits * split_len < seq_len)
    lse = tl.load(Mid_LSE + b * stride_lb + heads[:, None] * stride_lh + splits[None, :],
                  mask=mask_h[:, None] & live[None, :], other=float("-inf"))
    e_max = tl.max(lse, axis=1)
    e_max = tl.where(e_max == float("-inf"), 0.0, e_max)  # no live split: every weight below is 0
    w = tl.exp2(lse - e_max[:, None])
    e_sum = tl.sum(w, axis=1)
    mask = mask_h[:, None] & mask_d[None, :]
    acc = tl.zeros([heads.shape[0], offs_d.shape[0]], tl.float32)
    for s in tl.static_range(MAX_SPLITS):  # a fixed order: the same sum every run
        w_s = tl.sum(tl.where(splits[None, :] == s, w, 0.0), axis=1)
        live_s = (s < n_split) & (s * split_len < seq_len)
        part = tl.load(Mid_O + b * stride_mob + heads[:, None] * stride_moh + s * stride_mos + offs_d[None, :],
                       mask=tl.where(live_s, mask, False), other=0.0)
        acc += w_s[:, None] * part
    return tl.where(e_sum[:, None] > 0, acc / tl.maximum(e_sum, 1e-30)[:, None], 0.0)
