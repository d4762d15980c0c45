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


@triton.jit
def pdl_wait(PDL: tl.constexpr):
    """Wait for the previous kernel in the stream to finish (its writes visible), then let the
    next kernel be scheduled. A no-op without PDL."""
    if PDL:
        tl.extra.cuda.gdc_wait()
        tl.extra.cuda.gdc_launch_dependents()
