"""Skinny GEMM for decode-sized linears: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), M <= 16.

At batch 1..16 a linear layer is a weight read: every byte of W is used M times, so the kernel's
only job is to stream W at HBM speed. cuBLAS (and `torch._scaled_mm` for FP8) pick tiles made for
large M and leave most of the bandwidth unused on these shapes. Here each program owns BLOCK_N
output columns and a 1/SPLIT_K slice of K, so even N = 2048 fills the GPU; with SPLIT_K > 1 the
programs write fp32 partial sums that a second small kernel adds up in a fixed order (so the
result is deterministic, no atomics), adds the bias and casts.

Weights: bf16/fp16/fp32, or float8_e4m3fn dequantized in registers with a per-channel scale
[N, 1] or a block scale [ceil(N/bn), ceil(K/bk)] (BLOCK_K must divide bk).

FP8 activations (W8A8, the CPU path's `fake_quantize_activation`): x is quantized *inside* this
kernel: per token (each program first reads its rows' absolute max over all of K from L2; when
those reads would pass half of W's bytes, a one-program-per-row launch writes the maxima first), per tensor (dynamic: max over all rows; static: the checkpoint's
input_scale) or per 1 x bk group (BLOCK_K == bk: the tile is the group). The rounding to the
E4M3 grid is done in fp32 arithmetic (round-to-nearest-even, saturating like `to_fp8`), which is
exactly torch's cast and, unlike Triton's cast, also exact in the CPU interpreter. The products
q_x * q_w are exact in fp32; both scales multiply the fp32 sum. The CPU path instead rounds
q_x * s_x and q_w * s_w to bf16 before its matmul, so the two agree to bf16 rounding, not bitwise.

Products: with USE_DOT a tensor-core tl.dot on a 16-row tile (rows >= M masked); without, fp32
multiply-adds on a [BLOCK_M, BLOCK_N, BLOCK_K] broadcast (for M <= 2, where a 16-row dot would
waste registers and issue slots).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ._utils import dot_precision, next_pow2

MAX_M = 16
FP8_MAX = 448.0
_MIN_SCALE = 1e-12
# activation modes (constexpr ACT)
ACT_NONE, ACT_TOKEN, ACT_TENSOR, ACT_STATIC, ACT_GROUP = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class GemvConfig:
    """One launch shape. block_k must divide the weight's block k for block-scaled FP8."""

    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    use_dot: bool = False

    def check(self) -> None:
        for name in ("block_n", "block_k"):
            v = getattr(self, name)
            if v < 16 or v & (v - 1):
                raise ValueError(f"GemvConfig.{name}={v} must be a power of two >= 16")
        if self.split_k < 1 or self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"GemvConfig {self} needs split_k, num_warps, num_stages >= 1")


@triton.jit
def _round_e4m3(v):
    """v (fp32, any range) -> the nearest E4M3 value, ties to even, saturated to +-448."""
    v = tl.minimum(tl.maximum(v, -448.0), 448.0)
    bits = v.to(tl.int32, bitcast=True)
    e = tl.maximum(((bits >> 23) & 0xFF) - 127, -6)  # below 2^-6: the subnormal step 2^-9
    # 1.5 * 2^(e - 3 + 23): adding and subtracting it rounds v to a multiple of 2^(e-3) (3 mantissa bits)
    big = ((e - 3 + 23 + 127) << 23).to(tl.float32, bitcast=True) * 1.5
    return (v + big) - big


@triton.jit
def _act_scale(amax):
    return tl.maximum(tl.math.div_rn(amax, tl.full(amax.shape, 448.0, tl.float32)), 1e-12)


@triton.jit
def _gemv_kernel(X, W, WS, XS, B, Y, P, M, N, K, stride_xm, stride_wn, stride_ym, stride_wsn, k_per_split,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr,
                 W_SCALE: tl.constexpr, SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, ACT: tl.constexpr,
                 HAS_BIAS: tl.constexpr, WRITE_PARTIAL: tl.constexpr, DOT_PREC: tl.constexpr,
                 PRESCALED: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    x_rows = X + offs_m[:, None].to(tl.int64) * stride_xm
    w_rows = W + offs_n[:, None].to(tl.int64) * stride_wn
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)

    x_scale = tl.full((BLOCK_M,), 1.0, tl.float32)
    if (ACT == 1 or ACT == 2) and PRESCALED:  # the rows' absolute max, from _row_amax
        amax = tl.load(XS + offs_m, mask=mask_m, other=0.0)
        if ACT == 2:
            amax = tl.full((BLOCK_M,), 0.0, tl.float32) + tl.max(amax, axis=0)
        x_scale = _act_scale(amax)
    if (ACT == 1 or ACT == 2) and not PRESCALED:  # dynamic per token / tensor: the absolute max over K first
        amax = tl.zeros((BLOCK_M,), tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            xa = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & (offs_k[None, :] < K), other=0.0)
            amax = tl.maximum(amax, tl.max(tl.abs(xa.to(tl.float32)), axis=1))
        if ACT == 2:
            amax = tl.full((BLOCK_M,), 0.0, tl.float32) + tl.max(amax, axis=0)
        x_scale = _act_scale(amax)
    if ACT == 3:  # static per tensor
        x_scale = tl.full((BLOCK_M,), 0.0, tl.float32) + tl.load(XS)

    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mask_k = offs_k < k_hi
        x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & mask_k[None, :], other=0.0)
        w = tl.load(w_rows + offs_k[None, :], mask=mask_n[:, None] & mask_k[None, :], other=0.0)
        if ACT == 4:  # dynamic per 1 x BLOCK_K group: this tile is the group
            g_scale = _act_scale(tl.max(tl.abs(x.to(tl.float32)), axis=1))
            xq = _round_e4m3(tl.math.div_rn(x.to(tl.float32), g_scale[:, None]))
        elif ACT != 0:
            xq = _round_e4m3(tl.math.div_rn(x.to(tl.float32), x_scale[:, None]))
        else:
            xq = x
        if USE_DOT:
            if ACT != 0:  # fp8 x fp8 on the tensor cores (xq is on the E4M3 grid: the cast is exact)
                part = tl.dot(xq.to(W.dtype.element_ty), tl.trans(w))
            else:
                part = tl.dot(xq, tl.trans(w.to(X.dtype.element_ty)), input_precision=DOT_PREC)
        else:
            part = tl.sum(xq.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :], axis=2)
        if ACT == 4:
            part = part * g_scale[:, None]
        if W_SCALE == 2:
            ws = tl.load(WS + (offs_n // SCALE_BN) * stride_wsn + k0 // SCALE_BK, mask=mask_n, other=0.0)
            part = part * ws[None, :]
        acc += part

    if ACT == 1 or ACT == 2 or ACT == 3:
        acc = acc * x_scale[:, None]
    if W_SCALE == 1:
        acc = acc * tl.load(WS + offs_n * stride_wsn, mask=mask_n, other=0.0)[None, :]
    mask = mask_m[:, None] & mask_n[None, :]
    if WRITE_PARTIAL:
        tl.store(P + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=mask)
    else:
        if HAS_BIAS:
            acc += tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _row_amax(X, A, K, stride_xm, BLOCK_K: tl.constexpr):
    """A[m] = max |X[m, :]|: one program per row."""
    m = tl.program_id(0)
    amax = tl.zeros((BLOCK_K,), tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        amax = tl.maximum(amax, tl.abs(tl.load(X + m * stride_xm + offs, mask=offs < K, other=0.0).to(tl.float32)))
    tl.store(A + m, tl.max(amax, axis=0))


@triton.jit
def _splitk_reduce(P, B, Y, M, N, stride_ym, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    m = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    acc = tl.zeros((BLOCK,), tl.float32)
    for s in range(SPLIT_K):  # a fixed order: the same sum every run
        acc += tl.load(P + (s * M + m) * N + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(B + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(Y + m * stride_ym + offs, acc.to(Y.dtype.element_ty), mask=mask)


_ACT_MODES = {None: ACT_NONE, "token": ACT_TOKEN, "tensor": ACT_TENSOR, "group": ACT_GROUP}


def _launch(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], config: GemvConfig,
            weight_scale: Optional[torch.Tensor], weight_block: Optional[Tuple[int, int]],
            input_scale: Optional[torch.Tensor], act: int) -> torch.Tensor:
    config.check()
    *lead, k = x.shape
    n = weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit x {tuple(x.shape)}")
    x2 = x.reshape(-1, k)
    m = x2.shape[0]
    if m > MAX_M:
        raise ValueError(f"the skinny GEMM takes at most {MAX_M} rows, got {m}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias {tuple(bias.shape)} does not fit {n} outputs")
    bias = None if bias is None else bias.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    if m == 0 or n == 0:
        return y.reshape(*lead, n)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    if weight.stride(-1) != 1:
        raise ValueError("weight must be contiguous along K")
    bk = config.block_k
    w_scale_mode, scale_bn, scale_bk, stride_wsn = 0, 1, 1, 0
    if weight_scale is not None:
        if weight_block is None:
            if weight_scale.numel() != n:
                raise ValueError(f"per-channel scale {tuple(weight_scale.shape)} does not fit {n} outputs")
            weight_scale = weight_scale.reshape(-1).contiguous()  # a view of the usual [N, 1]
            w_scale_mode, stride_wsn = 1, 1
        else:
            scale_bn, scale_bk = weight_block
            if scale_bk % bk:
                raise ValueError(f"block_k {bk} must divide the weight block's k {scale_bk}")
            if weight_scale.shape != (-(-n // scale_bn), -(-k // scale_bk)) or weight_scale.stride(-1) != 1:
                raise ValueError(f"block scale {tuple(weight_scale.shape)} does not fit [{n}, {k}] in blocks {weight_block}")
            w_scale_mode, stride_wsn = 2, weight_scale.stride(0)
    if act == ACT_GROUP and (weight_block is None or bk != weight_block[1]):
        raise ValueError(f"group activations need block_k == the weight block's k, got {bk} with {weight_block}")
    # split K into whole BLOCK_K tiles (block scales and groups never straddle two splits)
    tiles = triton.cdiv(k, bk)
    split = max(1, min(config.split_k, tiles))
    k_per_split = triton.cdiv(tiles, split) * bk
    split = triton.cdiv(k, k_per_split)
    use_dot = config.use_dot or m > 4  # a [BLOCK_M, BLOCK_N, BLOCK_K] broadcast past 4 rows spills registers
    block_m = 16 if use_dot else next_pow2(m)
    partial = torch.empty((split, m, n), dtype=torch.float32, device=x.device) if split > 1 else y
    dummy = y
    grid = (triton.cdiv(n, config.block_n), split)
    # Per-token / per-tensor scales: every program reading its rows over all of K is free at small
    # M x programs; once those L2 reads reach half of W's bytes, one small launch reads x once.
    prescaled = act in (ACT_TOKEN, ACT_TENSOR) and \
        2 * grid[0] * split * m * k * x2.element_size() > n * k * weight.element_size()
    if prescaled:
        input_scale = torch.empty(m, dtype=torch.float32, device=x.device)
        _row_amax[(m,)](x2, input_scale, k, x2.stride(0), BLOCK_K=min(1024, next_pow2(k)), num_warps=4)
    _gemv_kernel[grid](
        x2, weight, weight_scale if weight_scale is not None else dummy,
        input_scale if input_scale is not None else dummy, bias if bias is not None else dummy, y, partial,
        m, n, k, x2.stride(0), weight.stride(0), y.stride(0), stride_wsn, k_per_split,
        BLOCK_M=block_m, BLOCK_N=config.block_n, BLOCK_K=bk, USE_DOT=use_dot, W_SCALE=w_scale_mode,
        SCALE_BN=scale_bn, SCALE_BK=scale_bk, ACT=act, HAS_BIAS=bias is not None, WRITE_PARTIAL=split > 1,
        DOT_PREC=dot_precision(x.dtype), PRESCALED=prescaled, num_warps=config.num_warps,
        num_stages=config.num_stages,
    )
    if split > 1:
        block = min(1024, next_pow2(n))
        _splitk_reduce[(m, triton.cdiv(n, block))](partial, bias if bias is not None else dummy, y, m, n, y.stride(0),
                                                   SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=block, num_warps=4)
    return y.reshape(*lead, n)


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                config: GemvConfig = GemvConfig()) -> torch.Tensor:
    """x [..., K] (at most 16 rows) @ weight [N, K]^T + bias, in x's dtype (fp32 accumulation)."""
    if weight.dtype != x.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from x's {x.dtype} (FP8 weights: skinny_gemm_fp8)")
    return _launch(x, weight, bias, config, None, None, None, ACT_NONE)


def skinny_gemm_fp8(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                    weight_block: Optional[Tuple[int, int]] = None, input_scale: Optional[torch.Tensor] = None,
                    activation_strategy: Optional[str] = None, bias: Optional[torch.Tensor] = None,
                    config: GemvConfig = GemvConfig()) -> torch.Tensor:
    """x [..., K] @ dequant(weight float8_e4m3fn [N, K], weight_scale)^T + bias. activation_strategy
    None: weight-only (x as is); "token"/"tensor"/"group": x rounded through FP8 per token / tensor /
    1 x block-k group, dynamic, or per tensor with the static `input_scale` [1]."""
    if weight.dtype != torch.float8_e4m3fn:
        raise ValueError(f"skinny_gemm_fp8 takes float8_e4m3fn weights, got {weight.dtype}")
    if activation_strategy not in _ACT_MODES:
        raise ValueError(f"activation strategy {activation_strategy!r} is unknown")
    act = _ACT_MODES[activation_strategy]
    if input_scale is not None and act != ACT_NONE:
        act = ACT_STATIC
    return _launch(x, weight, bias, config, weight_scale.float(), weight_block, input_scale, act)


# ---- torch references --------------------------------------------------------------------------


def skinny_gemm_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    y = x.float() @ weight.float().t()
    return (y if bias is None else y + bias.float()).to(x.dtype)


def _ref_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def skinny_gemm_fp8_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                        weight_block: Optional[Tuple[int, int]] = None, input_scale: Optional[torch.Tensor] = None,
                        activation_strategy: Optional[str] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same math in fp32 torch: x quantized like `fake_quantize_activation` (scale = amax / 448,
    at least 1e-12), W dequantized exactly, no intermediate bf16 rounding."""
    xf = x.float()
    k = x.shape[-1]
    if activation_strategy is not None:
        if input_scale is not None:
            scale = input_scale.float()
        elif activation_strategy == "token":
            scale = (xf.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=_MIN_SCALE)
        elif activation_strategy == "tensor":
            scale = (xf.abs().amax() / FP8_MAX).clamp(min=_MIN_SCALE)
        else:  # group
            g = xf.unflatten(-1, (k // weight_block[1], weight_block[1]))
            gs = (g.abs().amax(dim=-1, keepdim=True) / FP8_MAX).clamp(min=_MIN_SCALE)
            xf = (_ref_quantize(g, gs) * gs).flatten(-2)
        if activation_strategy != "group" or input_scale is not None:
            xf = _ref_quantize(xf, scale) * scale
    wf = weight.float()
    s = weight_scale.float()
    if weight_block is not None:
        n_, k_ = weight_block
        s = s.repeat_interleave(n_, dim=0)[: weight.shape[0]].repeat_interleave(k_, dim=1)[:, :k]
    y = xf @ (wf * s.reshape(weight.shape[0], -1)).t()
    return (y if bias is None else y + bias.float()).to(x.dtype)
