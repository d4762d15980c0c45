"""Programmatic dependent launch (PDL, Hopper and later) for the decode step's small kernels.

A batch-1 decode step is 10-16 kernels a layer, each a few microseconds, back to back in a CUDA
graph: the gap between one kernel's end and the next one's first load (launch, then the first
DRAM round trip) is a large part of the step. A kernel launched with PDL may be scheduled while
the kernel before it in the stream is still running. It issues what does not depend on that
kernel (the skinny GEMM's first weight tiles), then waits (`pdl_wait`: griddepcontrol.wait) until
that kernel has finished and its writes are visible, and only then reads its inputs or writes
anything; right after the wait it lets the next kernel be scheduled in turn.

Rules for a kernel that takes PDL=True: call pdl_wait before any load of data that an earlier
kernel writes and before any store. Transitivity holds because every kernel waits before it can
finish: a kernel's wait returns only after the one before it, which itself waited, has finished.

Off on the CPU interpreter, on ROCm, below compute capability 9.0, on a Triton without the launch
option, and with SGLSERVE_PDL=0.

The wait leaves HBM idle while the kernel before runs: at batch 1 that kernel is a one-program row
kernel (RMSNorm, SiLU-and-mul, the attention merge) for ~4-6 us, a quarter of the step (RESULTS.md
V23p). A weight-streaming kernel can ask the L2 for its first weight bytes before it waits
(l2_prefetch, Hopper's bulk prefetch: nothing comes into registers and nothing waits), so its main
loop finds them in L2. SGLSERVE_L2_PREFETCH_MB bounds what one launch asks for (0: off, the
default until measured), well under the L2's 50 MB so the prefetched lines are still there when read.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Dict

import torch
import triton
import triton.language as tl

from ._utils import is_interpret, nvidia_capability_at_least

PDL_ENV = "SGLSERVE_PDL"
L2_PREFETCH_ENV = "SGLSERVE_L2_PREFETCH_MB"
DEFAULT_L2_PREFETCH_MB = 0.0  # off until a W1 A/B on the GPU says what budget pays (24 is the candidate)


@functools.lru_cache(maxsize=None)
def _triton_has_pdl() -> bool:
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {}) and hasattr(tl.extra.cuda, "gdc_wait")


def pdl_enabled(t: torch.Tensor) -> bool:
    """Whether kernels on t's device launch with PDL."""
    if not t.is_cuda or is_interpret() or os.environ.get(PDL_ENV, "1") == "0":
        return False
    return _triton_has_pdl() and nvidia_capability_at_least(t.device.index or 0, 9, 0)


def pdl_args(t: torch.Tensor) -> Dict[str, Any]:
    """The launch keywords: the kernel's PDL constexpr, and Triton's launch option when on."""
    return {"PDL": True, "launch_pdl": True} if pdl_enabled(t) else {"PDL": False}


def l2_prefetch_budget(t: torch.Tensor) -> int:
    """Bytes one PDL launch on t's device may prefetch into L2 before its wait (0: none)."""
    if not pdl_enabled(t):
        return 0
    raw = os.environ.get(L2_PREFETCH_ENV, str(DEFAULT_L2_PREFETCH_MB))
    try:
        mb = float(raw)
    except ValueError:
        raise ValueError(f"{L2_PREFETCH_ENV}={raw!r} is not a number of MiB") from None
    return max(0, int(mb * 2**20))


def prefetch_row_bytes(budget: int, weight: torch.Tensor, k_per_split: int, split: int) -> int:
    """Bytes of each weight row's K slice ([N, K] weight, split into `split` slices of k_per_split)
    that a program asks the L2 for before its wait: the same leading share of every slice, the
    launch's total within budget. 0 (none) where the rows or slices are not 16-byte aligned."""
    es, (n, k) = weight.element_size(), weight.shape
    if budget <= 0 or n * k == 0 or weight.data_ptr() % 16 or weight.stride(0) * es % 16 or k_per_split * es % 16:
        return 0
    last = (k - (split - 1) * k_per_split) * es  # the shortest slice
    share = min(1.0, budget / (n * k * es))
    return min(int(share * k_per_split * es), last) // 16 * 16


@triton.jit
def l2_prefetch(ptrs, nbytes):
    """Ask the L2 for nbytes (a multiple of 16; 0: nothing) at each 16-byte aligned address of ptrs:
    Hopper's cp.async.bulk.prefetch, a hint that loads nothing into registers and that nothing
    waits for. May run before pdl_wait for data no earlier kernel of the step writes (weights)."""
    tl.inline_asm_elementwise(
        "{\n\t.reg .pred p;\n\tsetp.ne.s32 p, $2, 0;\n\t@p cp.async.bulk.prefetch.L2.global [$1], $2;\n\t"
        "mov.u32 $0, 0;\n\t}", "=r,l,r", [ptrs, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Wait for the previous kernel in the stream to finish (its writes visible), then let the
    next kernel be scheduled. A no-op without PDL."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
