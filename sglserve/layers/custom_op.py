"""CustomOp: a layer with a torch reference path and an optional CUDA kernel path.

Every op has `forward_native` (plain torch: the CPU path and the reference the GPU
kernels are tested against). `forward` switches to `forward_cuda(kernel, ...)` only when
the input lives on a CUDA device *and* a kernel named `kernel_name` is available, so the
CPU server never imports Triton and a missing kernel is never an error.

Kernels come from two places, looked up in this order:
  1. `register_kernel(name, fn)` (tests, or a kernel package that registers itself);
  2. an attribute `name` of the optional package `sglserve_kernels` (the `kernels/`
     folder, see pyproject.toml), imported lazily on the first CUDA call.
The signature each op expects of its kernel is written in the op's docstring.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, ClassVar, Dict, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

_REGISTRY: Dict[str, Callable[..., Any]] = {}
_kernels_module: Any = None  # None: not tried yet; False: not installed
_disabled = False


def register_kernel(name: str, fn: Optional[Callable[..., Any]]) -> None:
    """Register (or with fn=None, remove) the kernel ops named `name` dispatch to on CUDA."""
    if fn is None:
        _REGISTRY.pop(name, None)
    else:
        _REGISTRY[name] = fn


def set_kernels_enabled(enabled: bool) -> None:
    """Force every op onto its native path (e.g. to compare kernels against the reference)."""
    global _disabled
    _disabled = not enabled


def get_kernel(name: str) -> Optional[Callable[..., Any]]:
    """The kernel registered under `name`, else `sglserve_kernels.<name>`, else None."""
    global _kernels_module
    if _disabled:
        return None
    fn = _REGISTRY.get(name)
    if fn is not None:
        return fn
    if _kernels_module is None:
        try:
            _kernels_module = importlib.import_module("sglserve_kernels")
        except ImportError as e:
            logger.info("sglserve_kernels not importable (%s); using torch-native ops", e)
            _kernels_module = False
    return getattr(_kernels_module, name, None) if _kernels_module else None


class CustomOp(nn.Module):
    """Base class: subclasses implement forward_native and, with a kernel, forward_cuda."""

    kernel_name: ClassVar[Optional[str]] = None

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if x.is_cuda and self.kernel_name is not None:
            kernel = get_kernel(self.kernel_name)
            if kernel is not None:
                return self.forward_cuda(kernel, x, *args, **kwargs)
        return self.forward_native(x, *args, **kwargs)

    def forward_native(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError

    def forward_cuda(self, kernel: Callable[..., Any], x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} declares kernel {self.kernel_name!r} but no forward_cuda")
