"""RadixAttention: the attention layer a model holds; the math lives in the backend."""

from __future__ import annotations

import torch
from torch import nn


class RadixAttention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scaling: float, num_kv_heads: int, layer_id: int) -> None:
        super().__init__()
        self.tp_q_head_num = num_heads
        self.tp_k_head_num = num_kv_heads
        self.tp_v_head_num = num_kv_heads
        self.head_dim = head_dim
        self.qk_head_dim = head_dim
        self.v_head_dim = head_dim
        self.scaling = scaling
        self.layer_id = layer_id

    def fused_kv_store(self, v: torch.Tensor, forward_batch):
        """Where RoPE may store this layer's new K/V itself (the backend's say; None: forward() stores)."""
        return forward_batch.attn_backend.fused_kv_store(v, self, forward_batch)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, forward_batch, save_kv_cache: bool = True,
                fp8_output=None):
        """fp8_output: the next linear's fp8_input(); decode may then hand it FP8 rows (the backend's say)."""
        return forward_batch.attn_backend.forward(q, k, v, self, forward_batch, save_kv_cache, fp8_output)
