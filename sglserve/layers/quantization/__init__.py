"""Quantized linear layers (FP8). `config` is torch-free (the launcher's start-up check);
`quantize_model` / `finish_quantization` are the loader's two hooks around reading weights."""

from __future__ import annotations

from typing import TYPE_CHECKING, List, Optional

from sglserve.layers.quantization.config import (
    SUPPORTED_METHODS,
    Fp8Scheme,
    QuantizationError,
    check_method_name,
    check_model_quantization,
    get_quant_scheme,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "SUPPORTED_METHODS", "Fp8Scheme", "QuantizationError", "check_method_name", "check_model_quantization",
    "get_quant_scheme", "quantize_model", "finish_quantization",
]


def _checkpoint_names(model: "nn.Module", name: str) -> List[str]:
    """The checkpoint modules a layer holds: q/k/v_proj for a fused qkv_proj, else its own name."""
    dotted = name + "."
    names = [dotted.replace(fused + ".", ckpt + ".")[:-1]
             for fused, ckpt, _ in getattr(model, "stacked_params_mapping", []) if fused + "." in dotted]
    return names or [name]


def quantize_model(model: "nn.Module", scheme: Optional[Fp8Scheme]) -> int:
    """Give every linear layer not in the scheme's ignore list an Fp8LinearMethod (before loading).
    Returns how many layers got one."""
    if scheme is None:
        return 0
    from sglserve.layers.linear import LinearBase
    from sglserve.layers.quantization.config import ignored
    from sglserve.layers.quantization.fp8 import Fp8LinearMethod

    count = 0
    for name, module in model.named_modules():
        if isinstance(module, LinearBase) and not ignored(_checkpoint_names(model, name), scheme.ignore):
            method = Fp8LinearMethod(scheme)
            method.create_weights(module)
            module.quant_method = method
            count += 1
    return count


def finish_quantization(model: "nn.Module") -> None:
    """After every weight is in: each method's process_weights_after_loading."""
    for module in model.modules():
        method = getattr(module, "quant_method", None)
        if method is not None:
            method.process_weights_after_loading(module)
