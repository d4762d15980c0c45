"""Which GEMM a decode-sized linear runs on CUDA: the skinny GEMM (gemv.py) where the selection
table says it beats cuBLAS, else cuBLAS (bf16) or row-wise `torch._scaled_mm` (FP8).

The table (gemv_table.json next to this file, or the file named by SGLSERVE_GEMV_TABLE) maps
"<kind> n<N> k<K>" (kind: bf16, fp16, fp32, fp8 per-channel, fp8_block) and an M bucket (the next
power of two of M: 1, 2, 4, 8, 16) to a launch config and `use` (the kernel won the timing).
benchmarks/kernels/bench_gemv.py writes it from measurements on the GPU; the committed one is
derived from reasoning and says so (`"measured": false`). Shapes it does not list run the kernel
only up to `default_max_m[kind]` rows with a heuristic config: 0 for bf16 (cuBLAS unless
measured), 16 for FP8 (its alternatives at M <= 16 are row-wise `_scaled_mm`, measured at
0.9-2.3 TB/s, or dequantizing the whole weight every call).

Everything here is host-side Python on shapes only (no syncs, no device reads): a captured CUDA
graph replays the same kernels with the same config.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch

from ._utils import device_sms, next_pow2, nvidia_capability_at_least, run_guarded
from .fp8_rows import quantize_rows
from .gemv import FMA_MAX_M, MAX_M, GemvConfig, skinny_gemm, skinny_gemm_fp8
from .numerics import Fp8Rows, SplitSums

logger = logging.getLogger(__name__)

TABLE_ENV = "SGLSERVE_GEMV_TABLE"
DEFAULT_TABLE = Path(__file__).with_name("gemv_table.json")
M_BUCKETS = (1, 2, 4, 8, 16)
_KINDS = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}
_CONFIG_KEYS = ("block_n", "block_k", "split_k", "num_warps", "num_stages", "use_dot", "fp8_dot")
# SGLSERVE_SPLIT_SUMS=0: every split-K launch sums its own partials (the reduce kernel), for A/B runs
HAND_ON_SUMS = os.environ.get("SGLSERVE_SPLIT_SUMS", "1") != "0"


def weight_kind(weight: torch.Tensor, weight_block: Optional[Tuple[int, int]] = None) -> str:
    if weight.dtype == torch.float8_e4m3fn:
        return "fp8" if weight_block is None else "fp8_block"
    return _KINDS.get(weight.dtype, str(weight.dtype))


def table_key(kind: str, n: int, k: int) -> str:
    return f"{kind} n{n} k{k}"


def m_bucket(m: int) -> int:
    return next_pow2(max(1, m))


def heuristic_config(m: int, n: int, k: int, kind: str, sms: int) -> GemvConfig:
    """A config from first principles (the defaults for shapes the table does not list). Up to 2
    rows, the FMA path: 8-16 W rows x 512 K a program (4 KiB of FP8 or 8 KiB of bf16 a tile, two
    tiles in flight), an fp32 partial of at most 64 values a thread per row of x. From 3 rows, a
    16-row tensor-core dot on 64 x 256-byte W tiles. SPLIT_K only where the columns alone give
    fewer than 2 programs per SM (its reduce kernel is one launch more)."""
    fp8 = kind.startswith("fp8")
    use_dot = m > FMA_MAX_M
    if use_dot:
        block_n, block_k = 64, (256 if fp8 else 128)
    else:
        block_n, block_k = (8 if n <= 8192 else 16) // m_bucket(m), 512
    if kind == "fp32":
        block_k = min(block_k, 64 if use_dot else 256)
    n_blocks = -(-n // block_n)
    tiles = -(-k // block_k)
    split = max(1, min(-(-2 * sms // n_blocks), tiles // 4))
    return GemvConfig(block_n=block_n, block_k=block_k, split_k=split, num_warps=4,
                      num_stages=1 if not use_dot else 3, use_dot=use_dot)


def entry_config(row: Dict[str, Any]) -> GemvConfig:
    """The launch config a table entry names (its other keys: use, measured, timings)."""
    return GemvConfig(**{key: row[key] for key in _CONFIG_KEYS if key in row})


class GemvTable:
    """The selection table in memory: lookups by (kind, N, K, M bucket)."""

    def __init__(self, data: Dict[str, Any], source: str) -> None:
        self.source = source
        self.measured = bool(data.get("measured", False))
        self.default_max_m: Dict[str, int] = {"bf16": 0, "fp16": 0, "fp32": 0, "fp8": MAX_M, "fp8_block": MAX_M}
        self.default_max_m.update(data.get("default_max_m", {}))
        self.entries: Dict[str, Dict[str, Dict[str, Any]]] = data.get("entries", {})

    @classmethod
    def load(cls, path: Optional[str] = None) -> "GemvTable":
        path = path or os.environ.get(TABLE_ENV) or str(DEFAULT_TABLE)
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, ValueError) as e:
            logger.warning("GEMV selection table %s unreadable (%s): FP8 uses the kernel, bf16 cuBLAS", path, e)
            return cls({}, f"{path} (unreadable)")
        table = cls(data, path)
        logger.info("GEMV selection table %s (%s, %d shapes)", path, "measured" if table.measured else
                    "NOT measured: derived from reasoning", len(table.entries))
        return table

    def select(self, m: int, n: int, k: int, kind: str, sms: int) -> Optional[GemvConfig]:
        """The config to run the skinny GEMM with, or None (use cuBLAS / _scaled_mm)."""
        if m > MAX_M:
            return None
        row = self.entries.get(table_key(kind, n, k), {}).get(str(m_bucket(m)))
        if row is None:
            return heuristic_config(m, n, k, kind, sms) if m <= self.default_max_m.get(kind, 0) else None
        if not row.get("use", False):
            return None
        return entry_config(row)


@functools.lru_cache(maxsize=1)
def get_table() -> GemvTable:
    return GemvTable.load()


def _run_guarded(key: tuple, run, on_cuda: bool) -> Optional[torch.Tensor]:
    return run_guarded(("skinny GEMM",) + key, run, on_cuda, "this shape falls back to the library GEMM")


@functools.lru_cache(maxsize=4096)
def _select(m: int, n: int, k: int, kind: str, sms: int, block_k: Optional[int]) -> Optional[GemvConfig]:
    cfg = get_table().select(m, n, k, kind, sms)
    if cfg is not None and block_k is not None:
        # block scales: a K tile never straddles two blocks (the scale is loaded once a tile)
        if block_k < 16 or block_k & (block_k - 1):
            return None
        cfg = dataclasses.replace(cfg, block_k=min(cfg.block_k, block_k))
    return cfg


def gemv_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                hand_on_sums: bool = False) -> Optional[Union[torch.Tensor, SplitSums]]:
    """x @ weight.T + bias with the skinny GEMM when the table picks it for this shape, else None
    (the caller runs F.linear). hand_on_sums (the caller's reader is the fused residual-add RMSNorm):
    a split-K launch returns numerics.SplitSums instead of running its reduce kernel (HAND_ON_SUMS)."""
    k = x.shape[-1]
    m = x.numel() // k if k else 0
    if m == 0 or m > MAX_M or weight.dtype != x.dtype or not weight.is_contiguous():
        return None
    kind = weight_kind(weight)
    cfg = _select(m, weight.shape[0], k, kind, device_sms(x), None)
    if cfg is None:
        return None
    return _run_guarded((kind, weight.shape[0], k, cfg), lambda: skinny_gemm(
        x, weight, bias, cfg, hand_on_sums and HAND_ON_SUMS), x.is_cuda)


def fp8_linear(x: Union[torch.Tensor, Fp8Rows], weight: torch.Tensor, weight_scale: torch.Tensor,
               weight_block: Optional[Tuple[int, int]], input_scale: Optional[torch.Tensor],
               activation_strategy: Optional[str], bias: Optional[torch.Tensor],
               hand_on_sums: bool = False) -> Optional[Union[torch.Tensor, SplitSums]]:
    """The Fp8LinearMethod kernel hook: the skinny GEMM at M <= 16 where selected, else row-wise
    `torch._scaled_mm` where the layout allows (per-channel weights, per-token or per-tensor
    activations, bf16), else None (the caller dequantizes and matmuls, like the CPU path).
    x may be numerics.Fp8Rows (quantized by the kernel that produced it: no quantization here);
    hand_on_sums as gemv_linear's."""
    rows = x.q if isinstance(x, Fp8Rows) else x
    k = rows.shape[-1]
    m = rows.numel() // k if k else 0
    if m == 0:
        return None
    if m <= MAX_M and (activation_strategy != "group" or weight_block is not None):
        kind = weight_kind(weight, weight_block)
        cfg = _select(m, weight.shape[0], k, kind, device_sms(rows), weight_block[1] if weight_block else None)
        if cfg is not None:
            y = _run_guarded((kind, weight.shape[0], k, cfg), lambda: skinny_gemm_fp8(
                x, weight, weight_scale, weight_block, input_scale, activation_strategy, bias, cfg,
                hand_on_sums and HAND_ON_SUMS), rows.is_cuda)
            if y is not None:
                return y
    if _scaled_mm_fits(x, weight, weight_block, activation_strategy):
        return scaled_mm_rowwise(x, weight, weight_scale, input_scale, activation_strategy, bias)
    return None


def _scaled_mm_fits(x: Union[torch.Tensor, Fp8Rows], weight: torch.Tensor, weight_block: Optional[Tuple[int, int]],
                    activation_strategy: Optional[str]) -> bool:
    return (x.is_cuda and weight_block is None and activation_strategy in ("token", "tensor")
            and x.dtype == torch.bfloat16 and x.shape[-1] % 16 == 0 and weight.shape[0] % 16 == 0
            and nvidia_capability_at_least(x.device.index or 0, 8, 9))  # FP8 tensor cores


def scaled_mm_rowwise(x: Union[torch.Tensor, Fp8Rows], weight: torch.Tensor, weight_scale: torch.Tensor,
                      input_scale: Optional[torch.Tensor], activation_strategy: str,
                      bias: Optional[torch.Tensor]) -> torch.Tensor:
    """W8A8 through cuBLASLt's FP8 GEMM with a scale per row of x and per row of W (bf16 out)."""
    *lead, k = x.shape
    n = weight.shape[0]
    if isinstance(x, Fp8Rows):
        q, scale_a = x.q.reshape(-1, k), x.scale
    else:
        q, scale_a = quantize_rows(x.reshape(-1, k), input_scale, activation_strategy)
    y = torch._scaled_mm(q, weight.t(), scale_a=scale_a, scale_b=weight_scale.float().reshape(1, n),
                         out_dtype=torch.bfloat16)
    if bias is not None:
        y += bias
    return y.reshape(*lead, n)
