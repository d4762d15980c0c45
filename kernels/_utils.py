"""Small helpers shared by the kernels: launch sizing and device facts."""

from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Optional, TypeVar

import torch
import triton

logger = logging.getLogger(__name__)
T = TypeVar("T")
FAILED: set = set()  # keys of kernels that failed to build or launch here: their fallback runs


def is_interpret() -> bool:
    """True when Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def num_sms(device_index: int = 0) -> int:
    """Streaming multiprocessors of the GPU (a small stand-in on the CPU interpreter)."""
    if torch.cuda.is_available() and not is_interpret():
        return torch.cuda.get_device_properties(device_index).multi_processor_count
    return 8


@functools.lru_cache(maxsize=None)
def nvidia_capability_at_least(device_index: int, major: int, minor: int) -> bool:
    """An NVIDIA GPU of compute capability >= major.minor, run for real (not the interpreter).
    ROCm reports its own architecture numbers through the same call, so it never qualifies."""
    if is_interpret() or torch.version.hip is not None:
        return False
    return torch.cuda.get_device_capability(device_index) >= (major, minor)


def device_sms(t: torch.Tensor) -> int:
    return num_sms(t.device.index or 0) if t.is_cuda else num_sms()


def next_pow2(n: int) -> int:
    return triton.next_power_of_2(int(n))


def dot_precision(dtype: torch.dtype) -> str:
    """fp32 inputs must not silently drop to tf32 in tl.dot: the fp32 path is the exact one."""
    return "ieee" if dtype == torch.float32 else "tf32"


def run_guarded(key: tuple, run: Callable[[], T], on_cuda: bool, fallback: str) -> Optional[T]:
    """run()'s result, or None (the caller's fallback, named in the warning) if it fails outside a
    graph capture. Kernel variants are not compiled on every GPU before they ship; a Triton build
    error there must cost speed, not the server. Inside a capture the warm-up has already built
    them, so errors propagate. A key that failed once is not tried again."""
    if key in FAILED:
        return None
    if on_cuda and torch.cuda.is_current_stream_capturing():
        return run()
    try:
        return run()
    except Exception as e:  # triton CompilationError, out of resources, ...
        FAILED.add(key)
        logger.warning("%s failed (%s: %s); %s", " ".join(map(str, key)), type(e).__name__,
                       str(e).splitlines()[0] if str(e) else "", fallback)
        return None
