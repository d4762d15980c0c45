"""LinearMethodBase: how a linear layer stores its weight and computes y = x @ W.T + b.

A LinearBase without a method runs F.linear on its model-dtype weight. With one
(`layer.quant_method`), the method owns the weight's storage and the GEMM:

- `create_weights(layer)` runs once the model is built, before any weight is read: it swaps
  or adds parameters (an fp8 `weight`, a `weight_scale`, ...) named as the checkpoint names
  them, each with a `weight_loader(param, tensor, shard_id=None)`, so the models'
  load_weights fills them like any other parameter (fused q/k/v and gate/up shards included);
- `process_weights_after_loading(layer)` runs once every tensor is in: quantize at load,
  or bring the checkpoint's scales to the layout `apply` reads;
- `apply(layer, x, bias)` is the forward. A GPU kernel drops in there;
- `fp8_input(layer)` says whether the kernel before the layer may hand it x already quantized
  (an Fp8Input; RMSNorm and SiluAndMul then run their fused FP8 kernels on CUDA), else None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from torch import nn


@dataclass(frozen=True)
class Fp8Input:
    """How a W8A8 layer takes x from the kernel before it: FP8 rows (numerics.Fp8Rows) quantized per
    token (input_scale None) or with the checkpoint's static input_scale [1]."""

    input_scale: Optional[torch.Tensor] = None


class LinearMethodBase:
    def create_weights(self, layer: nn.Module) -> None:
        raise NotImplementedError

    def process_weights_after_loading(self, layer: nn.Module) -> None:
        raise NotImplementedError

    def apply(self, layer: nn.Module, x: torch.Tensor, bias: Optional[torch.Tensor], hand_on_sums: bool = False) -> Any:
        """x @ W.T + bias; hand_on_sums as LinearBase.matmul's (the result may be numerics.SplitSums)."""
        raise NotImplementedError

    def fp8_input(self, layer: nn.Module) -> Optional[Fp8Input]:
        return None


def shard_layout(layer: nn.Module) -> Dict[Any, Tuple[int, int]]:
    """shard id -> (row offset, rows) of the layer's output: q/k/v of a QKVParallelLinear,
    0..n-1 of a MergedColumnParallelLinear, else the single shard None."""
    if hasattr(layer, "q_size") and hasattr(layer, "kv_size"):
        q, kv = layer.q_size, layer.kv_size
        return {"q": (0, q), "k": (q, kv), "v": (q + kv, kv)}
    sizes = getattr(layer, "output_sizes", None)
    if sizes:
        return {i: (sum(sizes[:i]), size) for i, size in enumerate(sizes)}
    return {None: (0, layer.output_size)}


def new_param(data: torch.Tensor, loader: Any = None) -> nn.Parameter:
    param = nn.Parameter(data, requires_grad=False)
    if loader is not None:
        param.weight_loader = loader  # read by the models' load_weights
    return param
