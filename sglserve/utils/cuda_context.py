"""Create the scheduler's CUDA context on a thread while the process imports torch and transformers.

Creating a GPU's primary context (driver set-up, device memory mapping) takes a few hundred
milliseconds to a second, all of it inside the driver, and the scheduler used to pay it on its
critical path when ModelRunner first touched the device (`torch.cuda.set_device`), after ~6 s
of imports that need no device. The CUDA runtime, and so torch and Triton, use the device's
*primary* context, which the driver API can create ahead of them: `cuDevicePrimaryCtxRetain` on
a thread that starts before `import torch`. ctypes releases the GIL for the call, so the imports
run beside it; torch later finds the context made and only makes it current.

The thread's retain is never released: the context lives as long as the process, as torch's own
does. Any failure on the thread is ignored on purpose: torch then meets the same driver error
when it initializes the device and reports it as before (one start-up error, in one place).
"""

from __future__ import annotations

import ctypes
import os
import threading
import time
from typing import Optional

_thread: Optional[threading.Thread] = None


def _retain_primary_context(ordinal: int) -> None:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
        dev, ctx = ctypes.c_int(0), ctypes.c_void_p()
        if lib.cuInit(0) == 0 and lib.cuDeviceGet(ctypes.byref(dev), ordinal) == 0:
            lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev)
    except Exception:  # no driver, no such device: torch's own initialization will say so
        pass


def start_context_creation(ordinal: int) -> None:
    """Begin creating device `ordinal`'s primary context (CUDA_VISIBLE_DEVICES applies, as for torch)."""
    global _thread
    if _thread is None:
        # The driver reads this at cuInit: the value torch's own initialization would have set first
        os.environ.setdefault("CUDA_MODULE_LOADING", "LAZY")
        _thread = threading.Thread(target=_retain_primary_context, args=(ordinal,),
                                   name="sglserve-cuda-context", daemon=True)
        _thread.start()


def wait_context_creation() -> float:
    """Join the thread of start_context_creation, if any; returns the seconds waited for it."""
    if _thread is None:
        return 0.0
    t0 = time.perf_counter()
    _thread.join()
    return time.perf_counter() - t0
