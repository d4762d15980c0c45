"""Arrival counters for split-K GEMMs whose last program does the reduction (gemv._store_out).

A program that finished its K slice adds 1 to its column block's counter; the one that sees
split - 1 sums every slice and sets the counter back to 0. The counters live in one zeroed int32
buffer per device, made once and never freed: a CUDA graph keeps their address, not a reference.
"""

from __future__ import annotations

import os
from typing import Dict, Optional

import torch

SERIAL_REDUCE_ENV = "SGLSERVE_GEMV_SERIAL_REDUCE"
SPLIT_COUNTERS = 1 << 16  # column blocks a split GEMM may have (28672 rows / 16 = 1792 at most on the dot paths)
_COUNTERS: Dict[torch.device, torch.Tensor] = {}


def split_counters(device: torch.device, n_blocks: int) -> Optional[torch.Tensor]:
    """The zeroed counters of `device`, or None (the caller runs its separate reduce kernel): turned
    off (SGLSERVE_GEMV_SERIAL_REDUCE=0), more blocks than counters, or first needed inside a CUDA
    graph capture (the buffer is never allocated in one; the eager warm-up before each capture
    makes it). One buffer serves every GEMM: kernels on a stream run one after another (PDL's wait
    included) and each leaves its counters at 0. Not for split GEMMs on concurrent streams."""
    if os.environ.get(SERIAL_REDUCE_ENV, "1") == "0" or n_blocks > SPLIT_COUNTERS:
        return None
    counters = _COUNTERS.get(device)
    if counters is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            return None
        counters = _COUNTERS[device] = torch.zeros(SPLIT_COUNTERS, dtype=torch.int32, device=device)
    return counters
