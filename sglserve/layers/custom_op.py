"""CustomOp: a layer with a torch reference path and an optional CUDA kernel path.

Every op has `forward_native` (plain torch: the CPU path and the reference the GPU
kernels are tested against). `forward` switches to `forward_cuda(kernel, ...)` only when
the input lives on a CUDA device *and* a kernel named `kernel_name` is available, so the
CPU server never imports Triton and a missing kernel is never an error.

A kernel is the attribute `name` of the optional package `sglserve_kernels` (the `kernels/`
folder, see pyproject.toml), imported lazily on the first CUDA call. The signature each op
expects of its kernel is written in the op's docstring.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Callable, ClassVar, Optional

import torch
from torch import nn

logger = logging.getLogger(__name__)

_kernels_module: Any = None  # None: not tried yet; False: not installed


def get_kernel(name: str) -> Optional[Callable[..., Any]]:
    """`sglserve_kernels.<name>`, or None (not installed, or no such kernel)."""
    global _kernels_module
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
