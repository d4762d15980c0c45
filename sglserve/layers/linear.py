"""Linear layers whose parameters know how to load checkpoint shards.

Tensor parallelism is not implemented (tp size 1), but the classes carry SGLang's names
and roles so it can be added without touching the models: column layers split their
output, row layers their input. Fused layers (QKVParallelLinear, MergedColumnParallelLinear)
hold several checkpoint tensors stacked along the output dim; each parameter has a
`weight_loader(param, loaded_weight, shard_id)` that copies one of them into its slice.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from sglserve.layers.custom_op import CustomOp


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
    """Copy a whole checkpoint tensor into `param`, converting dtype and device."""
    if param.shape != loaded_weight.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint {tuple(loaded_weight.shape)}")
    param.data.copy_(loaded_weight)


def set_weight_loader(param: nn.Parameter, loader: Any) -> nn.Parameter:
    param.weight_loader = loader  # read by the models' load_weights
    return param


class LinearBase(CustomOp):
    """y = x @ weight.T + bias with weight [output_size, input_size], like nn.Linear.

    No kernel hook: F.linear already is cuBLAS on CUDA. A quantized layer has a `quant_method`
    (layers/quantization): it owns the weight's storage and the GEMM, and its GPU kernels.
    """

    quant_method: Any = None  # a LinearMethodBase, set by layers.quantization.quantize_model

    def __init__(self, input_size: int, output_size: int, bias: bool = True) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.weight = set_weight_loader(nn.Parameter(torch.empty(output_size, input_size)), self.weight_loader)
        if bias:
            self.bias = set_weight_loader(nn.Parameter(torch.empty(output_size)), self.weight_loader)
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} is not fused; got shard_id={shard_id!r}")
        default_weight_loader(param, loaded_weight)

    def _load_shard(self, param: nn.Parameter, loaded_weight: torch.Tensor, offset: int, size: int) -> None:
        """Copy a checkpoint tensor into rows offset..offset+size of a fused weight or bias."""
        if loaded_weight.shape[0] != size or loaded_weight.shape[1:] != param.shape[1:]:
            raise ValueError(
                f"shard shape {tuple(loaded_weight.shape)} does not fit rows {offset}:{offset + size} "
                f"of {type(self).__name__} parameter {tuple(param.shape)}"
            )
        param.data.narrow(0, offset, size).copy_(loaded_weight)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        if self.quant_method is not None:
            return self.quant_method.apply(self, x, self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in={self.input_size}, out={self.output_size}, bias={self.bias is not None}"


class ColumnParallelLinear(LinearBase):
    """A projection whose output dim is what TP would split (q/k/v, gate/up)."""


class RowParallelLinear(LinearBase):
    """A projection whose input dim is what TP would split (o_proj, down_proj)."""


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column projections of the same input in one GEMM, e.g. gate_up_proj = [gate | up].

    Shard ids are the indexes into `output_sizes`.
    """

    def __init__(self, input_size: int, output_sizes: Sequence[int], bias: bool = True) -> None:
        self.output_sizes: List[int] = list(output_sizes)
        super().__init__(input_size, sum(self.output_sizes), bias)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Optional[int] = None) -> None:
        if shard_id is None:  # an already fused checkpoint tensor
            return default_weight_loader(param, loaded_weight)
        if not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"shard_id={shard_id!r} is invalid; allowed: 0..{len(self.output_sizes) - 1}")
        offset = sum(self.output_sizes[:shard_id])
        self._load_shard(param, loaded_weight, offset, self.output_sizes[shard_id])


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused: output = [q (heads*d) | k (kv_heads*d) | v (kv_heads*d)]."""

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        total_num_heads: int,
        total_num_kv_heads: Optional[int] = None,
        bias: bool = True,
    ) -> None:
        self.head_size = head_size
        self.num_heads = total_num_heads
        self.num_kv_heads = total_num_kv_heads or total_num_heads
        self.q_size = self.num_heads * head_size
        self.kv_size = self.num_kv_heads * head_size
        super().__init__(hidden_size, self.q_size + 2 * self.kv_size, bias)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Optional[str] = None) -> None:
        if shard_id is None:
            return default_weight_loader(param, loaded_weight)
        layout = {"q": (0, self.q_size), "k": (self.q_size, self.kv_size), "v": (self.q_size + self.kv_size, self.kv_size)}
        if shard_id not in layout:
            raise ValueError(f"shard_id={shard_id!r} is invalid; allowed: {list(layout)}")
        self._load_shard(param, loaded_weight, *layout[shard_id])
