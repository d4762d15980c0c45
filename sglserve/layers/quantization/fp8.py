"""Fp8LinearMethod: float8_e4m3fn weights with their scales; the forward on any device
without a kernel is dequantize-then-matmul in the model dtype.

After loading, every quantized layer holds the same layout whatever the checkpoint's:
- `weight`: float8_e4m3fn [out, in];
- `weight_scale`: float32, [out, 1] (per channel; per-tensor checkpoint scales are spread over
  their shard's rows, which is exact) or [ceil(out/n), ceil(in/k)] with `weight_block` (n, k);
- `input_scale`: float32 [1] for static activations (the max over fused shards, as vLLM), else None.

Activations are rounded through FP8 as a W8A8 GEMM would see them (per token, per 1 x k group
or per tensor), so the CPU output is the reference for a GPU FP8 kernel. Such a kernel plugs
in as `sglserve_kernels.fp8_linear(x, weight, weight_scale, weight_block, input_scale,
activation_strategy, bias) -> y | None` (None for weight-only schemes' activation_strategy; it
returns None for a layout it does not take). kernels/gemv_dispatch.py: the skinny GEMM at M <= 16,
row-wise `torch._scaled_mm` above where the layout allows.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from sglserve.layers.custom_op import get_kernel
from sglserve.layers.quantization.base import Fp8Input, LinearMethodBase, new_param, shard_layout
from sglserve.layers.quantization.config import Fp8Scheme, QuantizationError
from sglserve.layers.quantization.fp8_utils import (
    FP8_DTYPE,
    dequantize,
    fake_quantize_activation,
    quantize_per_block,
    quantize_per_channel,
)
from sglserve_kernels.numerics import Fp8Rows, SplitSums

logger = logging.getLogger(__name__)

# SGLSERVE_FP8_FUSED_INPUT=0: every W8A8 GEMM quantizes its own x (the A side of an A/B benchmark)
FUSED_INPUT = os.environ.get("SGLSERVE_FP8_FUSED_INPUT", "1") != "0"


class Fp8LinearMethod(LinearMethodBase):
    def __init__(self, scheme: Fp8Scheme) -> None:
        self.scheme = scheme

    # ---- before loading --------------------------------------------------------------

    def create_weights(self, layer: nn.Module) -> None:
        s = self.scheme
        layer.weight_block = s.block_size if s.weight_strategy == "block" else None
        layer.input_scale = None
        layout = shard_layout(layer)
        if layer.weight_block is not None:
            n, k = layer.weight_block
            misaligned = [sid for sid, (off, size) in layout.items() if off % n]
            if misaligned or (s.activation_strategy == "group" and layer.input_size % k):
                raise QuantizationError(
                    f"{type(layer).__name__} (in={layer.input_size}, out shards {list(layout.values())}) does not "
                    f"fit FP8 blocks of {[n, k]}: fused shards must start on a block and the input must divide by {k}"
                )
        if not s.serialized:
            return  # the model-dtype weight loads as is; process_weights_after_loading quantizes it
        device = layer.weight.device
        out, inp = layer.output_size, layer.input_size
        layer.weight = new_param(torch.empty(out, inp, dtype=FP8_DTYPE, device=device), layer.weight_loader)
        if s.weight_strategy == "block":
            n, k = layer.weight_block
            scale = torch.empty(-(-out // n), -(-inp // k), dtype=torch.float32, device=device)
            setattr(layer, s.weight_scale_name, new_param(scale, self._block_scale_loader(layer)))
        elif s.weight_strategy == "channel":
            scale = torch.empty(out, 1, dtype=torch.float32, device=device)
            setattr(layer, s.weight_scale_name, new_param(scale, self._channel_scale_loader(layer)))
        else:  # one scale per checkpoint tensor (shard)
            scale = torch.empty(len(layout), dtype=torch.float32, device=device)
            setattr(layer, s.weight_scale_name, new_param(scale, self._scalar_loader(layer)))
        if s.activation == "static":
            layer.input_scale = new_param(torch.empty(len(layout), dtype=torch.float32, device=device),
                                          self._scalar_loader(layer))

    @staticmethod
    def _scalar_loader(layer: nn.Module) -> Any:
        index = {sid: i for i, sid in enumerate(shard_layout(layer))}

        def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
            if loaded.numel() != 1:
                raise ValueError(f"expected a per-tensor scale, got shape {tuple(loaded.shape)}")
            if shard_id is None:
                param.data.fill_(loaded.reshape(()).item())
            else:
                param.data[index[shard_id]] = loaded.reshape(())

        return load

    @staticmethod
    def _channel_scale_loader(layer: nn.Module) -> Any:
        def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
            layer.weight_loader(param, loaded.reshape(-1, 1).float(), shard_id)

        return load

    @staticmethod
    def _block_scale_loader(layer: nn.Module) -> Any:
        layout = shard_layout(layer)
        n = layer.weight_block[0]

        def load(param: nn.Parameter, loaded: torch.Tensor, shard_id: Any = None) -> None:
            off, size = (0, layer.output_size) if shard_id is None else layout[shard_id]
            rows = -(-size // n)
            if tuple(loaded.shape) != (rows, param.shape[1]):
                raise ValueError(f"block scale {tuple(loaded.shape)} does not fit rows {off // n}:{off // n + rows} "
                                 f"of {tuple(param.shape)}")
            param.data[off // n : off // n + rows] = loaded

        return load

    # ---- after loading -------------------------------------------------------------------

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        s = self.scheme
        if not s.serialized:
            w = layer.weight.data
            q, scale = quantize_per_block(w, layer.weight_block) if layer.weight_block else quantize_per_channel(w)
            layer.weight = new_param(q)
            layer.weight_scale = new_param(scale)
            return
        scale = getattr(layer, s.weight_scale_name).data
        if s.weight_scale_name != "weight_scale":
            delattr(layer, s.weight_scale_name)
        if s.weight_strategy == "tensor":  # one scale per shard -> one per output row
            rows = torch.empty(layer.output_size, 1, dtype=torch.float32, device=scale.device)
            for i, (off, size) in enumerate(shard_layout(layer).values()):
                rows[off : off + size] = scale[i]
            scale = rows
        layer.weight_scale = new_param(scale)
        if layer.input_scale is not None:
            layer.input_scale = new_param(layer.input_scale.data.max().reshape(1))

    # ---- forward -----------------------------------------------------------------------

    def fp8_input(self, layer: nn.Module) -> Optional[Fp8Input]:
        """Per-token or static activations on a per-channel weight: the layer before may quantize x
        (one launch less per GEMM, the GEMM's own pass over x gone). Not per-tensor dynamic (the
        scale needs every row) nor grouped (block weights)."""
        s = self.scheme
        if not FUSED_INPUT or s.activation is None or layer.weight_block is not None:
            return None
        if layer.input_scale is not None:
            return Fp8Input(layer.input_scale)
        return Fp8Input() if s.activation_strategy == "token" else None

    def apply(self, layer: nn.Module, x: Union[torch.Tensor, Fp8Rows], bias: Optional[torch.Tensor],
              hand_on_sums: bool = False) -> Union[torch.Tensor, SplitSums]:
        s = self.scheme
        act = None if s.activation is None else s.activation_strategy
        if x.is_cuda or isinstance(x, Fp8Rows):  # Fp8Rows exist only where the kernels do
            kernel = get_kernel("fp8_linear")
            y = None if kernel is None else kernel(x, layer.weight, layer.weight_scale, layer.weight_block,
                                                   layer.input_scale, act, bias, hand_on_sums)
            if y is not None:  # None: the kernel does not take this layout; dequantize below
                return y
        if isinstance(x, Fp8Rows):  # quantized by the kernel before (fp8_input): already rounded through FP8
            x, act = x.dequantize(), None
        if act is not None:
            group = layer.weight_block[1] if layer.weight_block else 128
            x = fake_quantize_activation(x, act, layer.input_scale, group)
        return F.linear(x, dequantize(layer.weight, layer.weight_scale, layer.weight_block, x.dtype), bias)
