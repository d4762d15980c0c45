"""The attention backend interface every backend (torch_native, triton, flashinfer) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Tuple

import torch

if TYPE_CHECKING:
    from sglserve.layers.radix_attention import RadixAttention
    from sglserve.model_executor.forward_batch import ForwardBatch


def rank_attention_shape(model_runner: Any) -> Tuple[int, int, int]:
    """(query heads, KV heads, head dim) of one tensor-parallel rank, as the backends size for."""
    mc = model_runner.model_config
    tp = getattr(model_runner.server_args, "tp_size", 1) or 1
    return mc.num_attention_heads // tp, max(1, mc.num_key_value_heads // tp), mc.head_dim


class AttentionBackend(ABC):
    """Reads and writes K/V in the paged pool through req_to_token.

    q: [num_tokens, num_heads * head_dim]; k, v: [num_tokens, num_kv_heads * head_dim].
    Returns [num_tokens, num_heads * head_dim]. With save_kv_cache the new k/v are first
    stored at forward_batch.out_cache_loc.
    """

    @abstractmethod
    def init_forward_metadata(self, forward_batch: "ForwardBatch") -> None:
        """Called once per forward pass before any layer runs."""

    def forward(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool = True,
                fp8_output: Any = None):
        """fp8_output: the W8A8 o_proj's Fp8Input (layers/quantization); a decode step may then return
        its output already quantized for it (numerics.Fp8Rows)."""
        if forward_batch.forward_mode.is_decode():
            if fp8_output is not None:
                return self.forward_decode_fp8(q, k, v, layer, forward_batch, save_kv_cache, fp8_output)
            return self.forward_decode(q, k, v, layer, forward_batch, save_kv_cache)
        return self.forward_extend(q, k, v, layer, forward_batch, save_kv_cache)

    def forward_decode_fp8(self, q, k, v, layer, forward_batch, save_kv_cache: bool, fp8_output: Any) -> Any:
        """forward_decode whose output may come as FP8 rows for the next linear; by default it does
        not (the linear quantizes, to the same values)."""
        return self.forward_decode(q, k, v, layer, forward_batch, save_kv_cache)

    def fused_kv_store(self, v: torch.Tensor, layer: "RadixAttention", forward_batch: "ForwardBatch") -> Any:
        """Where the RoPE kernel may write this layer's new K/V itself (a kernels.rope.KVStore), so that
        forward() runs with save_kv_cache=False; None: this backend stores them (the default)."""
        return None

    @abstractmethod
    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True) -> torch.Tensor: ...

    @abstractmethod
    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache: bool = True) -> torch.Tensor: ...
