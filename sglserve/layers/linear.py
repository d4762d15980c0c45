"""Linear layers split over tensor-parallel ranks; their parameters load checkpoint tensors.

Column layers split their output dim (each rank computes a slice of the outputs), row layers
their input dim (each rank multiplies its slice of the inputs; the partial products are summed
by one all-reduce, then the bias is added once). Fused layers (QKVParallelLinear,
MergedColumnParallelLinear) hold several checkpoint tensors stacked along the output dim, each
rank its own slice of every one: [q_r | k_r | v_r], [gate_r | up_r]. Each parameter has a
`weight_loader(param, loaded_weight, shard_id)` that cuts this rank's part of one whole
checkpoint tensor and copies it into its place. With tp size 1 every slice is the whole.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sglserve.distributed.parallel_state import get_tp_rank, get_tp_size, tp_all_gather, tp_all_reduce
from sglserve.distributed.shard import divide, kv_head_start, kv_heads_per_rank
from sglserve.layers.custom_op import CustomOp, get_kernel
from sglserve.layers.quantization.base import Fp8Input


def default_weight_loader(param: nn.Parameter, loaded_weight: torch.Tensor) -> None:
    """Copy a whole checkpoint tensor into `param`, converting dtype and device."""
    if param.shape != loaded_weight.shape:
        raise ValueError(f"shape mismatch: parameter {tuple(param.shape)} vs checkpoint {tuple(loaded_weight.shape)}")
    param.data.copy_(loaded_weight)


def load_into(param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
    """Load a checkpoint tensor through the parameter's own weight_loader (this rank's part, a
    fused shard) or, without one, whole."""
    loader = getattr(param, "weight_loader", None)
    if loader is None:
        default_weight_loader(param, loaded_weight)
    elif shard_id is None:
        loader(param, loaded_weight)
    else:
        loader(param, loaded_weight, shard_id)


def set_weight_loader(param: nn.Parameter, loader: Any) -> nn.Parameter:
    param.weight_loader = loader  # read by the models' load_weights
    return param


class LinearBase(CustomOp):
    """y = x @ weight.T + bias with this rank's weight [out_per_rank, in_per_rank], like nn.Linear.

    On CUDA, decode-sized inputs (at most 16 rows) may run the kernel `gemv_linear(x, weight, bias)
    -> y | None` (kernels/gemv_dispatch.py: a skinny GEMM where its selection table says it beats
    cuBLAS; None: F.linear). A quantized layer has a `quant_method` (layers/quantization): it owns
    the weight's storage and the GEMM, and its GPU kernels.
    """

    quant_method: Any = None  # a LinearMethodBase, set by layers.quantization.quantize_model

    def __init__(self, input_size: int, output_size: int, bias: bool = True, out_part: Optional[int] = None,
                 in_part: Optional[int] = None) -> None:
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.out_part = output_size if out_part is None else out_part
        self.in_part = input_size if in_part is None else in_part
        self.weight = set_weight_loader(nn.Parameter(torch.empty(self.out_part, self.in_part)), self.weight_loader)
        if bias:
            self.bias = set_weight_loader(nn.Parameter(torch.empty(self.out_part)), self.weight_loader)
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} is not fused; got shard_id={shard_id!r}")
        default_weight_loader(param, loaded_weight)

    def _load_rows(self, param: nn.Parameter, loaded_weight: torch.Tensor, src_start: int, offset: int,
                   size: int, total: int) -> None:
        """Copy rows src_start..+size of a checkpoint tensor of `total` rows into rows offset..+size
        of this rank's weight or bias."""
        if loaded_weight.shape[0] != total or loaded_weight.shape[1:] != param.shape[1:]:
            raise ValueError(
                f"checkpoint shape {tuple(loaded_weight.shape)} does not fit {type(self).__name__} parameter "
                f"{tuple(param.shape)} (expected {total} rows)"
            )
        param.data.narrow(0, offset, size).copy_(loaded_weight.narrow(0, src_start, size))

    def checkpoint_shards(self, is_bias: bool) -> List[Tuple[Any, Tuple[int, ...]]]:
        """(shard id, whole checkpoint shape) of each checkpoint tensor this layer's weight or bias
        loads: what dummy weights generate, so that every tp size gets slices of the same model."""
        return [(None, (self.output_size,) if is_bias else (self.output_size, self.input_size))]

    def matmul(self, x: torch.Tensor, bias: Optional[torch.Tensor], hand_on_sums: bool = False) -> Any:
        """This rank's x @ weight.T (+ bias): the quantized GEMM when the layer has one.
        hand_on_sums (the caller feeds the output straight into a fused residual-add RMSNorm): a
        split-K skinny GEMM may return its unsummed partials (numerics.SplitSums), which the norm adds."""
        if self.quant_method is not None:
            return self.quant_method.apply(self, x, bias, hand_on_sums)
        if x.is_cuda:
            kernel = get_kernel("gemv_linear")
            y = None if kernel is None else kernel(x, self.weight, bias, hand_on_sums)
            if y is not None:
                return y
        return F.linear(x, self.weight, bias)

    def forward_native(self, x: torch.Tensor) -> torch.Tensor:
        return self.matmul(x, self.bias)

    def fp8_input(self) -> Optional[Fp8Input]:
        """Whether the kernel before this layer may hand it x as FP8 rows (layers/quantization)."""
        return None if self.quant_method is None else self.quant_method.fp8_input(self)

    def extra_repr(self) -> str:
        return (f"in={self.input_size}, out={self.output_size}, bias={self.bias is not None}, "
                f"tp={self.tp_size}, rank part=[{self.out_part}, {self.in_part}]")


class ColumnParallelLinear(LinearBase):
    """Output dim split: each rank computes output_size / tp outputs (gather_output: all of them)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True, gather_output: bool = False,
                 out_part: Optional[int] = None) -> None:
        part = divide(output_size, get_tp_size()) if out_part is None else out_part
        super().__init__(input_size, output_size, bias, out_part=part)
        self.gather_output = gather_output

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} is not fused; got shard_id={shard_id!r}")
        self._load_rows(param, loaded_weight, self.tp_rank * self.out_part, 0, self.out_part, self.output_size)

    def forward_native(self, x: torch.Tensor, hand_on_sums: bool = False) -> Any:
        """hand_on_sums: see LinearBase.matmul (not with gather_output)."""
        y = self.matmul(x, self.bias, hand_on_sums and not self.gather_output)
        return tp_all_gather(y) if self.gather_output else y


class RowParallelLinear(LinearBase):
    """Input dim split: each rank multiplies its input_size / tp inputs; one all-reduce sums them."""

    def __init__(self, input_size: int, output_size: int, bias: bool = True, reduce_results: bool = True) -> None:
        super().__init__(input_size, output_size, bias, in_part=divide(input_size, get_tp_size()))
        self.reduce_results = reduce_results

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        if shard_id is not None:
            raise ValueError(f"{type(self).__name__} is not fused; got shard_id={shard_id!r}")
        if param is self.weight:  # the weight's columns; the bias is whole on every rank
            if loaded_weight.shape != (self.output_size, self.input_size):
                raise ValueError(f"checkpoint shape {tuple(loaded_weight.shape)} does not fit {type(self).__name__} "
                                 f"[{self.output_size}, {self.input_size}]")
            loaded_weight = loaded_weight.narrow(1, self.tp_rank * self.in_part, self.in_part)
        elif param.dim() == 2 and loaded_weight.shape[1] > 1 and self.tp_size > 1:
            # A scale per block of input columns (FP8 block scales): this rank's blocks
            per_rank = divide(loaded_weight.shape[1], self.tp_size)
            loaded_weight = loaded_weight.narrow(1, self.tp_rank * per_rank, per_rank)
        default_weight_loader(param, loaded_weight)

    def forward_native(self, x: torch.Tensor, hand_on_sums: bool = False) -> Any:
        """hand_on_sums: see LinearBase.matmul (one rank only: an all-reduce needs the sums)."""
        if self.tp_size == 1 or not self.reduce_results:
            return self.matmul(x, self.bias, hand_on_sums)
        y = tp_all_reduce(self.matmul(x, None))
        return y if self.bias is None else y + self.bias


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column projections of the same input in one GEMM, e.g. gate_up_proj = [gate | up],
    each rank holding its slice of each. Shard ids are the indexes into `output_sizes`."""

    def __init__(self, input_size: int, output_sizes: Sequence[int], bias: bool = True) -> None:
        self.output_sizes: List[int] = list(output_sizes)
        tp = get_tp_size()
        self.part_sizes = [divide(s, tp) for s in self.output_sizes]
        super().__init__(input_size, sum(self.output_sizes), bias, out_part=sum(self.part_sizes))

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Optional[int] = None) -> None:
        if shard_id is None:  # an already fused checkpoint tensor: load it shard by shard
            for i, part in enumerate(loaded_weight.split(self.output_sizes, dim=0)):
                self.weight_loader(param, part, i)
            return
        if not isinstance(shard_id, int) or not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"shard_id={shard_id!r} is invalid; allowed: 0..{len(self.output_sizes) - 1}")
        size = self.part_sizes[shard_id]
        self._load_rows(param, loaded_weight, self.tp_rank * size, sum(self.part_sizes[:shard_id]), size,
                        self.output_sizes[shard_id])

    def checkpoint_shards(self, is_bias: bool) -> List[Tuple[Any, Tuple[int, ...]]]:
        return [(i, (s,) if is_bias else (s, self.input_size)) for i, s in enumerate(self.output_sizes)]


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused: this rank's output = [q (heads/tp * d) | k | v (kv heads of
    this rank * d)]. KV heads are split over ranks, or replicated when fewer than tp (shard.py)."""

    def __init__(
        self,
        hidden_size: int,
        head_size: int,
        total_num_heads: int,
        total_num_kv_heads: Optional[int] = None,
        bias: bool = True,
    ) -> None:
        tp, rank = get_tp_size(), get_tp_rank()
        self.head_size = head_size
        self.total_num_heads = total_num_heads
        self.total_num_kv_heads = total_num_kv_heads or total_num_heads
        self.num_heads = divide(total_num_heads, tp)
        self.num_kv_heads = kv_heads_per_rank(self.total_num_kv_heads, tp)
        self.kv_start = kv_head_start(self.total_num_kv_heads, tp, rank)
        self.q_size = self.num_heads * head_size
        self.kv_size = self.num_kv_heads * head_size
        total = (self.total_num_heads + 2 * self.total_num_kv_heads) * head_size
        super().__init__(hidden_size, total, bias, out_part=self.q_size + 2 * self.kv_size)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Optional[str] = None) -> None:
        d = self.head_size
        full_q, full_kv = self.total_num_heads * d, self.total_num_kv_heads * d
        if shard_id is None:  # an already fused checkpoint tensor
            for sid, part in zip("qkv", loaded_weight.split([full_q, full_kv, full_kv], dim=0)):
                self.weight_loader(param, part, sid)
            return
        if shard_id == "q":
            return self._load_rows(param, loaded_weight, self.tp_rank * self.q_size, 0, self.q_size, full_q)
        if shard_id in ("k", "v"):
            offset = self.q_size + (self.kv_size if shard_id == "v" else 0)
            return self._load_rows(param, loaded_weight, self.kv_start * d, offset, self.kv_size, full_kv)
        raise ValueError(f"shard_id={shard_id!r} is invalid; allowed: ['q', 'k', 'v']")

    def checkpoint_shards(self, is_bias: bool) -> List[Tuple[Any, Tuple[int, ...]]]:
        d = self.head_size
        rows = {"q": self.total_num_heads * d, "k": self.total_num_kv_heads * d, "v": self.total_num_kv_heads * d}
        return [(sid, (n,) if is_bias else (n, self.input_size)) for sid, n in rows.items()]
