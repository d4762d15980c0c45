"""Skinny GEMM for decode-sized linears: y[M, N] = x[M, K] @ W[N, K]^T (+ bias), M <= 16.

At batch 1..16 a linear layer is a weight read: every byte of W is used M times, so the kernel's
only job is to stream W at HBM speed. cuBLAS (and `torch._scaled_mm` for FP8) pick tiles made for
large M and leave most of the bandwidth unused on these shapes. Here each program owns BLOCK_N
output columns and a 1/SPLIT_K slice of K; with SPLIT_K > 1 the programs write fp32 partial sums
that a second small kernel adds up in a fixed order (deterministic, no atomics), adds the bias
and casts, or (hand_on_sums) that the next kernel adds as it reads them (numerics.SplitSums: the
fused residual-add RMSNorm after o_proj and down_proj, RoPE after qkv_proj; the same bits).

Weights: bf16/fp16/fp32, or float8_e4m3fn dequantized in registers with a per-channel scale
[N, 1] (applied once, to the output) or a block scale [ceil(N/bn), ceil(K/bk)] (BLOCK_K must
divide bk).

Products, up to 2 rows (the FMA path, what batch-1 decode runs): each thread owns contiguous
16-byte runs of W rows and keeps an elementwise fp32 [BLOCK_N, BLOCK_K] partial per row of x over
the whole K loop (one fused multiply-add per weight, no cross-lane work inside the loop); the rows
are reduced once at the end. The next W tile is loaded before the current one is used, so every
thread has two tiles in flight. From 3 rows (or with use_dot): a tensor-core tl.dot on a 16-row
tile, FP8 weights converted to x's dtype in registers.

FP8 activations (W8A8, the CPU path's `fake_quantize_activation`): fp8_rows.quantize_activation
rounds x through E4M3 once per call (per token, per tensor dynamic or static, or per 1 x bk group)
and the GEMM reads that. With GemvConfig.fp8_dot (per-token or per-tensor x, per-channel W) x is
instead quantized to FP8 with a scale per row (fp8_rows.quantize_rows) and multiplied with W in
FP8 on the tensor cores (_gemv_kernel's FP8_DOT): no FP8 -> fp32 conversion of W, which bounds the FMA
path at 1.1-2.4 TB/s on the H100. (Quantizing x inside the GEMM instead, tile by tile, measured
2x slower on qkv and gate_up: the computed FP8 operand cannot be pipelined like a loaded one;
RESULTS.md V17.)

x may also come already in FP8 (numerics.Fp8Rows, from the fused RMSNorm / SiLU-and-mul kernels):
the FP8 dot path takes it as it is, the FMA and dot paths round q * scale to the output dtype in
registers (_x_values), the same values quantize_activation writes, so the sums are the same bits.

Every kernel here launches with programmatic dependent launch on Hopper (pdl.py): the FMA path
has its first W tile in flight before it waits for the kernel that wrote x.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import triton
import triton.language as tl

from ._utils import dot_precision, next_pow2
from .fp8_rows import ACT_GROUP, ACT_NONE, ACT_STATIC, ACT_TENSOR, ACT_TOKEN, quantize_activation, quantize_rows
from .pdl import pdl_args, pdl_wait
from .numerics import _MIN_SCALE, FP8_MAX, Fp8Rows, SplitSums, exact_div, quantize_rows_ref

MAX_M = 16
FMA_MAX_M = 2  # rows the FMA path takes; more run the 16-row tensor-core dot


@dataclass(frozen=True)
class GemvConfig:
    """One launch shape. block_k must divide the weight's block k for block-scaled FP8; block_n
    may go below 16 only on the FMA path (M <= 2 without use_dot)."""

    block_n: int = 64
    block_k: int = 128
    split_k: int = 1
    num_warps: int = 4
    num_stages: int = 3
    use_dot: bool = False
    fp8_dot: bool = False  # W8A8 per-channel: FP8 x FP8 on the tensor cores (_gemv_kernel's FP8_DOT path)

    def check(self) -> None:
        for name, lo in (("block_n", 16 if self.use_dot or self.fp8_dot else 1), ("block_k", 32 if self.fp8_dot else 16)):
            v = getattr(self, name)
            if v < lo or v & (v - 1):
                raise ValueError(f"GemvConfig.{name}={v} must be a power of two >= {lo}")
        if self.split_k < 1 or self.num_warps < 1 or self.num_stages < 1:
            raise ValueError(f"GemvConfig {self} needs split_k, num_warps, num_stages >= 1")


@triton.jit
def _w_tile(W, offs_n, mask_n, stride_wn, offs_k, k_hi):
    return tl.load(W + offs_n[:, None].to(tl.int64) * stride_wn + offs_k[None, :],
                   mask=mask_n[:, None] & (offs_k < k_hi)[None, :], other=0.0, eviction_policy="evict_first")


@triton.jit
def _block_scale(WS, offs_n, mask_n, stride_wsn, k0, SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr):
    """The block scales of columns offs_n at K offset k0 (one K tile lies in one block)."""
    return tl.load(WS + (offs_n // SCALE_BN) * stride_wsn + k0 // SCALE_BK, mask=mask_n, other=0.0)


@triton.jit
def _x_values(x, xs, X_FP8: tl.constexpr, Y):
    """A tile of x as fp32. X_FP8 (x in FP8 with its row scale xs): q * scale rounded to the output
    dtype, the very values fp8_rows.quantize_activation would have written (so the sums match)."""
    if X_FP8:
        return (x.to(tl.float32) * xs).to(Y.dtype.element_ty).to(tl.float32)
    return x.to(tl.float32)


@triton.jit
def _fma_rows(X, XS, W, WS, Y, M, stride_xm, stride_wn, stride_wsn, offs_n, mask_n, k_lo, k_hi,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_SCALE: tl.constexpr,
              SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, X_FP8: tl.constexpr, PDL: tl.constexpr):
    """[BLOCK_M, BLOCK_N] sums over [k_lo, k_hi) for M == BLOCK_M (1 or 2): elementwise fp32 partials,
    reduced once. The first W tile is in flight before the wait for the kernel that wrote x."""
    acc0 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    acc1 = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    w_next = _w_tile(W, offs_n, mask_n, stride_wn, k_lo + tl.arange(0, BLOCK_K), k_hi)
    pdl_wait(PDL)
    xs0 = 1.0
    xs1 = 1.0
    if X_FP8:
        xs0 = tl.load(XS)
        if BLOCK_M == 2:
            xs1 = tl.load(XS + 1)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w = w_next.to(tl.float32)
        w_next = _w_tile(W, offs_n, mask_n, stride_wn, offs_k + BLOCK_K, k_hi)  # in flight during this tile
        if W_SCALE == 2:
            w = w * _block_scale(WS, offs_n, mask_n, stride_wsn, k0, SCALE_BN, SCALE_BK)[:, None]
        mask_k = offs_k < k_hi
        acc0 += w * _x_values(tl.load(X + offs_k, mask=mask_k, other=0.0), xs0, X_FP8, Y)[None, :]
        if BLOCK_M == 2:
            acc1 += w * _x_values(tl.load(X + stride_xm + offs_k, mask=mask_k, other=0.0), xs1, X_FP8, Y)[None, :]
    offs_m = tl.arange(0, BLOCK_M)
    return tl.where(offs_m[:, None] == 0, tl.sum(acc0, axis=1)[None, :], tl.sum(acc1, axis=1)[None, :])


@triton.jit
def _dot_rows(X, XS, W, WS, Y, M, stride_xm, stride_wn, stride_wsn, offs_n, mask_n, k_lo, k_hi,
              BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, W_SCALE: tl.constexpr,
              SCALE_BN: tl.constexpr, SCALE_BK: tl.constexpr, X_FP8: tl.constexpr, DOT_PREC: tl.constexpr):
    """[BLOCK_M (16), BLOCK_N] sums over [k_lo, k_hi) on the tensor cores (rows >= M masked), in the
    output's dtype (x in FP8 with row scales, X_FP8: q * scale rounded to it, as _x_values)."""
    offs_m = tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    x_rows = X + offs_m[:, None].to(tl.int64) * stride_xm
    xs = tl.full((BLOCK_M, 1), 1.0, tl.float32)
    if X_FP8:
        xs = tl.load(XS + offs_m, mask=mask_m, other=0.0)[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        x = tl.load(x_rows + offs_k[None, :], mask=mask_m[:, None] & (offs_k < k_hi)[None, :], other=0.0)
        if X_FP8:
            x = (x.to(tl.float32) * xs).to(Y.dtype.element_ty)
        w = _w_tile(W, offs_n, mask_n, stride_wn, offs_k, k_hi)
        part = tl.dot(x, tl.trans(w.to(Y.dtype.element_ty)), input_precision=DOT_PREC)
        if W_SCALE == 2:
            part = part * _block_scale(WS, offs_n, mask_n, stride_wsn, k0, SCALE_BN, SCALE_BK)[None, :]
        acc += part
    return acc


@triton.jit
def _fp8_dot_rows(Q, SA, W, stride_qm, stride_wn, offs_m, mask_m, offs_n, mask_n, k_lo, k_hi,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """[BLOCK_M (16), BLOCK_N] sums over [k_lo, k_hi) with both operands in FP8 on the tensor cores:
    W tile @ Q tile^T (the weight rows are the MMA's long side, the few rows of x its short one: no
    FP8 -> fp32 conversion of W, which bounds the FMA path), times each row's scale SA[m]."""
    acc = tl.zeros((BLOCK_N, BLOCK_M), tl.float32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        w = _w_tile(W, offs_n, mask_n, stride_wn, offs_k, k_hi)
        q = tl.load(Q + offs_m[:, None] * stride_qm + offs_k[None, :], mask=mask_m[:, None] & (offs_k < k_hi)[None, :],
                    other=0.0)
        acc = tl.dot(w, tl.trans(q), acc)
    return tl.trans(acc) * tl.load(SA + offs_m, mask=mask_m, other=0.0)[:, None]


@triton.jit
def _store_out(Y, P, B, out, offs_m, offs_n, mask_m, mask_n, M, N, stride_ym, pid_k,
               HAS_BIAS: tl.constexpr, WRITE_PARTIAL: tl.constexpr):
    """out [BLOCK_M, BLOCK_N] (fp32): this K split's partial sums into P, or (one split) + bias into Y."""
    mask = mask_m[:, None] & mask_n[None, :]
    if WRITE_PARTIAL:
        tl.store(P + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], out, mask=mask)
    else:
        if HAS_BIAS:
            out += tl.load(B + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
        tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], out.to(Y.dtype.element_ty), mask=mask)


@triton.jit
def _gemv_kernel(X, XS, W, WS, B, Y, P, M, N, K, stride_xm, stride_wn, stride_ym, stride_wsn, k_per_split,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, USE_DOT: tl.constexpr,
                 FP8_DOT: tl.constexpr, X_FP8: tl.constexpr, W_SCALE: tl.constexpr, SCALE_BN: tl.constexpr,
                 SCALE_BK: tl.constexpr, HAS_BIAS: tl.constexpr, WRITE_PARTIAL: tl.constexpr, DOT_PREC: tl.constexpr,
                 PDL: tl.constexpr):
    """X_FP8: X is x in FP8 with the row scales XS: FP8_DOT multiplies it in FP8 (per-channel W only),
    the other paths round q * scale to the output dtype in registers. Else X is x (or its
    fake-quantized copy) in its dtype and XS unused."""
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    offs_m = tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_m = offs_m < M
    mask_n = offs_n < N
    k_lo = pid_k * k_per_split
    k_hi = tl.minimum(k_lo + k_per_split, K)
    if FP8_DOT:
        pdl_wait(PDL)
        acc = _fp8_dot_rows(X, XS, W, stride_xm, stride_wn, offs_m, mask_m, offs_n, mask_n, k_lo, k_hi,
                            BLOCK_M, BLOCK_N, BLOCK_K)
    elif USE_DOT:
        pdl_wait(PDL)
        acc = _dot_rows(X, XS, W, WS, Y, M, stride_xm, stride_wn, stride_wsn, offs_n, mask_n, k_lo, k_hi,
                        BLOCK_M, BLOCK_N, BLOCK_K, W_SCALE, SCALE_BN, SCALE_BK, X_FP8, DOT_PREC)
    else:  # waits once its first W tile is in flight
        acc = _fma_rows(X, XS, W, WS, Y, M, stride_xm, stride_wn, stride_wsn, offs_n, mask_n, k_lo, k_hi,
                        BLOCK_M, BLOCK_N, BLOCK_K, W_SCALE, SCALE_BN, SCALE_BK, X_FP8, PDL)
    if W_SCALE == 1:
        acc = acc * tl.load(WS + offs_n * stride_wsn, mask=mask_n, other=0.0)[None, :]
    _store_out(Y, P, B, acc, offs_m, offs_n, mask_m, mask_n, M, N, stride_ym, pid_k, HAS_BIAS, WRITE_PARTIAL)


@triton.jit
def sum_splits(P, B, offs, mask, bias_offs, stride_split, SPLITS: tl.constexpr, HAS_BIAS: tl.constexpr):
    """A split-K GEMM's output at P + offs before its rounding (fp32): the partials, stride_split
    apart, added in split order (the same sum every run), then the bias at B + bias_offs. The reduce
    kernel and the kernels that read numerics.SplitSums (rmsnorm, RoPE) all sum here: the same bits."""
    acc = tl.zeros(offs.shape, tl.float32)
    for s in range(SPLITS):
        acc += tl.load(P + s * stride_split + offs, mask=mask, other=0.0)
    if HAS_BIAS:
        acc += tl.load(B + bias_offs, mask=mask, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _splitk_reduce(P, B, Y, M, N, stride_ym, SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr,
                   PDL: tl.constexpr):
    pdl_wait(PDL)
    m = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    acc = sum_splits(P, B, m * N + offs, mask, offs, M * N, SPLIT_K, HAS_BIAS)
    tl.store(Y + m * stride_ym + offs, acc.to(Y.dtype.element_ty), mask=mask)


_ACT_MODES = {None: ACT_NONE, "token": ACT_TOKEN, "tensor": ACT_TENSOR, "group": ACT_GROUP}


def _launch(x: Union[torch.Tensor, Fp8Rows], weight: torch.Tensor, bias: Optional[torch.Tensor], config: GemvConfig,
            weight_scale: Optional[torch.Tensor], weight_block: Optional[Tuple[int, int]],
            input_scale: Optional[torch.Tensor], act: int, hand_on_sums: bool = False) -> Union[torch.Tensor, SplitSums]:
    config.check()
    pre = x if isinstance(x, Fp8Rows) else None  # quantized by the kernel that produced it
    if pre is not None and act not in (ACT_TOKEN, ACT_TENSOR, ACT_STATIC):
        raise ValueError("x in FP8 rows needs per-token, per-tensor or static activations")
    xt = pre.q if pre is not None else x
    out_dtype = pre.dtype if pre is not None else x.dtype
    *lead, k = xt.shape
    n = weight.shape[0]
    if weight.dim() != 2 or weight.shape[1] != k:
        raise ValueError(f"weight {tuple(weight.shape)} does not fit x {tuple(xt.shape)}")
    x2 = xt.reshape(-1, k)
    m = x2.shape[0]
    if m > MAX_M:
        raise ValueError(f"the skinny GEMM takes at most {MAX_M} rows, got {m}")
    if bias is not None and bias.shape != (n,):
        raise ValueError(f"bias {tuple(bias.shape)} does not fit {n} outputs")
    bias = None if bias is None else bias.contiguous()
    y = torch.empty((m, n), dtype=out_dtype, device=x2.device)
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
    if act == ACT_GROUP and weight_block is None:
        raise ValueError("group activations need a block-scaled weight (the group is its block's k)")
    fp8_dot = config.fp8_dot and w_scale_mode == 1 and act in (ACT_TOKEN, ACT_TENSOR, ACT_STATIC)
    q_scale = None
    if pre is not None:
        q_scale = pre.scale.reshape(-1).contiguous()
    elif fp8_dot:  # x as FP8 with a scale per row (per token, per tensor or static): the MMA's second operand
        x2, q_scale = quantize_rows(x2, input_scale, "tensor" if act == ACT_TENSOR else "token")
        q_scale = q_scale.reshape(-1)
    elif act != ACT_NONE:
        x2 = quantize_activation(x2, act, input_scale, weight_block[1] if weight_block else None)
    # split K into whole BLOCK_K tiles (block scales never straddle two splits)
    tiles = triton.cdiv(k, bk)
    split = max(1, min(config.split_k, tiles))
    k_per_split = triton.cdiv(tiles, split) * bk
    split = triton.cdiv(k, k_per_split)
    use_dot = not fp8_dot and (config.use_dot or m > FMA_MAX_M)
    block_m = 16 if use_dot or fp8_dot else next_pow2(m)
    block_n = max(16, config.block_n) if use_dot or fp8_dot else config.block_n  # a dot needs 16 columns
    partial = torch.empty((split, m, n), dtype=torch.float32, device=x2.device) if split > 1 else y
    dummy = y
    grid = (triton.cdiv(n, block_n), split)
    pdl = pdl_args(x2)
    _gemv_kernel[grid](
        x2, q_scale if q_scale is not None else dummy, weight, weight_scale if weight_scale is not None else dummy,
        bias if bias is not None else dummy, y, partial, m, n, k, x2.stride(0), weight.stride(0), y.stride(0),
        stride_wsn, k_per_split, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=bk, USE_DOT=use_dot, FP8_DOT=fp8_dot,
        X_FP8=q_scale is not None, W_SCALE=w_scale_mode, SCALE_BN=scale_bn, SCALE_BK=scale_bk,
        HAS_BIAS=bias is not None, WRITE_PARTIAL=split > 1, DOT_PREC=dot_precision(out_dtype),
        num_warps=config.num_warps,
        num_stages=config.num_stages, **pdl,
    )
    if split > 1 and hand_on_sums:  # the next kernel adds the splits (numerics.SplitSums)
        return SplitSums(partial, bias, out_dtype, torch.Size([*lead, n]))
    if split > 1:
        block = min(1024, next_pow2(n))
        _splitk_reduce[(m, triton.cdiv(n, block))](partial, bias if bias is not None else dummy, y, m, n, y.stride(0),
                                                   SPLIT_K=split, HAS_BIAS=bias is not None, BLOCK=block, num_warps=4,
                                                   **pdl)
    return y.reshape(*lead, n)


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
                config: GemvConfig = GemvConfig(), hand_on_sums: bool = False) -> Union[torch.Tensor, SplitSums]:
    """x [..., K] (at most 16 rows) @ weight [N, K]^T + bias, in x's dtype (fp32 accumulation).
    hand_on_sums: a split-K launch returns its partial sums (numerics.SplitSums) for the reader to add."""
    if weight.dtype != x.dtype:
        raise ValueError(f"weight dtype {weight.dtype} differs from x's {x.dtype} (FP8 weights: skinny_gemm_fp8)")
    return _launch(x, weight, bias, config, None, None, None, ACT_NONE, hand_on_sums)


def skinny_gemm_fp8(x: Union[torch.Tensor, Fp8Rows], weight: torch.Tensor, weight_scale: torch.Tensor,
                    weight_block: Optional[Tuple[int, int]] = None, input_scale: Optional[torch.Tensor] = None,
                    activation_strategy: Optional[str] = None, bias: Optional[torch.Tensor] = None,
                    config: GemvConfig = GemvConfig(), hand_on_sums: bool = False) -> Union[torch.Tensor, SplitSums]:
    """x [..., K] @ dequant(weight float8_e4m3fn [N, K], weight_scale)^T + bias. activation_strategy
    None: weight-only (x as is); "token"/"tensor"/"group": x rounded through FP8 per token / tensor /
    1 x block-k group, dynamic, or per tensor with the static `input_scale` [1]. x may come as
    numerics.Fp8Rows, already quantized so (per token or static) by the kernel that produced it.
    hand_on_sums as skinny_gemm's."""
    if weight.dtype != torch.float8_e4m3fn:
        raise ValueError(f"skinny_gemm_fp8 takes float8_e4m3fn weights, got {weight.dtype}")
    if activation_strategy not in _ACT_MODES:
        raise ValueError(f"activation strategy {activation_strategy!r} is unknown")
    act = _ACT_MODES[activation_strategy]
    if input_scale is not None and act != ACT_NONE:
        act = ACT_STATIC
    return _launch(x, weight, bias, config, weight_scale.float(), weight_block, input_scale, act, hand_on_sums)


# ---- torch references --------------------------------------------------------------------------


def skinny_gemm_ref(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    y = x.float() @ weight.float().t()
    return (y if bias is None else y + bias.float()).to(x.dtype)


def _ref_quantize(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return exact_div(x, scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn).float()


def skinny_gemm_fp8_ref(x: torch.Tensor, weight: torch.Tensor, weight_scale: torch.Tensor,
                        weight_block: Optional[Tuple[int, int]] = None, input_scale: Optional[torch.Tensor] = None,
                        activation_strategy: Optional[str] = None, bias: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The same math in fp32 torch: x quantized like `fake_quantize_activation` (scale = amax / 448,
    at least 1e-12), W dequantized exactly, no intermediate bf16 rounding."""
    xf = x.float()
    k = x.shape[-1]
    if activation_strategy == "group" and input_scale is None:
        g = xf.unflatten(-1, (k // weight_block[1], weight_block[1]))
        gs = exact_div(g.abs().amax(dim=-1, keepdim=True), FP8_MAX).clamp(min=_MIN_SCALE)
        xf = (_ref_quantize(g, gs) * gs).flatten(-2)
    elif activation_strategy is not None:  # per token, per tensor, or static: the W8A8 GEMM's rows
        q, scale = quantize_rows_ref(xf.reshape(-1, k), input_scale, activation_strategy)
        xf = (q.float() * scale).reshape(xf.shape)
    wf = weight.float()
    s = weight_scale.float()
    if weight_block is not None:
        n_, k_ = weight_block
        s = s.repeat_interleave(n_, dim=0)[: weight.shape[0]].repeat_interleave(k_, dim=1)[:, :k]
    y = xf @ (wf * s.reshape(weight.shape[0], -1)).t()
    return (y if bias is None else y + bias.float()).to(x.dtype)
