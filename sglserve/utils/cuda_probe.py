"""Whether this process can use CUDA, answered without importing torch.

The launcher resolves `--device auto` and checks `--device cuda` before it spawns the scheduler;
importing torch for that took the first ~3 s of every start on the GPU hosts (RESULTS.md S2),
all of it before the scheduler, the long pole, even began. The driver (libcuda) answers in tens
of milliseconds, and torch's own version file says whether torch was built with CUDA. torch's
`cuda.is_available()` initializes the same driver in this process, so neither way changes what
the spawned children see.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re

_CUDA_LINE = re.compile(r"^cuda\s*(?::[^=]*)?=\s*(.+?)\s*$", re.M)


def torch_built_with_cuda() -> bool:
    """torch.version.cuda is not None, read from torch/version.py (imports torch only if that
    file cannot be read)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        with open(os.path.join(list(spec.submodule_search_locations)[0], "version.py")) as f:
            match = _CUDA_LINE.search(f.read())
    except OSError:
        match = None
    if match is None:
        import torch

        return torch.version.cuda is not None
    return match.group(1) not in ("None", "''", '""')


def driver_device_count() -> int:
    """CUDA devices the driver shows this process (CUDA_VISIBLE_DEVICES applies); 0 without a
    driver or a device."""
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return 0
    count = ctypes.c_int(0)
    if lib.cuInit(0) != 0 or lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return 0
    return count.value


def cuda_device_count() -> int:
    """The GPUs torch will see: 0 for a CPU build of torch, else the driver's count."""
    return driver_device_count() if torch_built_with_cuda() else 0
