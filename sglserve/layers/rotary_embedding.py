"""Rotary position embedding with a precomputed cos/sin table (default, linear, llama3)."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from sglserve.layers.custom_op import CustomOp

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")


def _default_inv_freq(rotary_dim: int, base: float) -> torch.Tensor:
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.int64).float() / rotary_dim))


def _llama3_inv_freq(inv_freq: torch.Tensor, scaling: Dict[str, Any]) -> torch.Tensor:
    """Llama 3.1: slow (long-wavelength) frequencies divided by `factor`, fast ones kept, a smooth ramp between."""
    factor = float(scaling["factor"])
    low_freq_factor = float(scaling["low_freq_factor"])
    high_freq_factor = float(scaling["high_freq_factor"])
    old_context_len = float(scaling["original_max_position_embeddings"])
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, is_neox_style: bool) -> torch.Tensor:
    """Rotate pairs of x in x's dtype: each product and the sum round there, like transformers'
    `q * cos + rotate_half(q) * sin` (cos/sin already cast to x's dtype). Neox pairs element i
    with i + d/2 (HF Llama's rotate_half); GPT-J pairs 2i, 2i+1."""
    if is_neox_style:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)


class RotaryEmbedding(CustomOp):
    """Applies RoPE to q and k given each token's absolute position.

    cos_sin_cache [max_position, rotary_dim] fp32 holds cos | sin of position * inv_freq,
    computed once so a forward is a gather. Only the first `rotary_dim` of each head rotate.
    Kernel "rotary_embedding": fn(positions [n], q [n, H*d], k [n, KVH*d], head_size,
    cos_sin_cache, is_neox_style[, kv_store]) -> (q, k) (it may work in place). With kv_store (the
    attention backend's `fused_kv_store`), the rotated k and kv_store.value also go into the KV pool.
    With sums (qkv_proj's split-K partials, numerics.SplitSums, and value: q, k and value are then
    unwritten column slices of one buffer), the partials are summed into q, k and value first: on
    CUDA by the RoPE kernel as it reads them, so qkv_proj's reduce launch goes away.
    """

    kernel_name = "rotary_embedding"

    def __init__(
        self,
        head_size: int,
        rotary_dim: int,
        max_position_embeddings: int,
        inv_freq: torch.Tensor,
        is_neox_style: bool = True,
    ) -> None:
        super().__init__()
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.max_position_embeddings = max_position_embeddings
        self.is_neox_style = is_neox_style
        t = torch.arange(max_position_embeddings, dtype=torch.float32, device=inv_freq.device)
        freqs = torch.outer(t, inv_freq.float())
        cache = torch.cat((freqs.cos(), freqs.sin()), dim=-1)
        # Not a checkpoint tensor: rebuilt from the config, never saved or loaded.
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    def forward_native(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, kv_store: Any = None,
        sums: Any = None, value: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        if sums is not None:  # qkv_proj's split-K partials: query, key, value are the unwritten slices they fill
            sums.total_into(query, key, value)
        cos_sin = self.cos_sin_cache.index_select(0, positions.flatten()).float()
        cos, sin = cos_sin.chunk(2, dim=-1)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)  # broadcast over heads
        query, key = self._apply_one(query, cos, sin), self._apply_one(key, cos, sin)
        if kv_store is not None:  # the kernel's contract, in torch (only the Triton backend, hence kernels/, makes one)
            from sglserve_kernels.kv_store import store_kv_cache_ref

            s = kv_store
            store_kv_cache_ref(s.k_buffer, s.v_buffer, s.loc, key, s.value, s.k_scale, s.v_scale)
        return query, key

    def _apply_one(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(cos.shape[0], -1, self.head_size)
        rot = _rotate(x[..., : self.rotary_dim], cos.to(x.dtype), sin.to(x.dtype), self.is_neox_style)
        if self.rotary_dim < self.head_size:
            rot = torch.cat((rot, x[..., self.rotary_dim :]), dim=-1)
        return rot.reshape(shape)

    def forward_cuda(
        self, kernel: Callable, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor, kv_store: Any = None,
        sums: Any = None, value: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return kernel(positions, query, key, self.head_size, self.cos_sin_cache, self.is_neox_style, kv_store, sums, value)

    def extra_repr(self) -> str:
        return f"head_size={self.head_size}, rotary_dim={self.rotary_dim}, max_position={self.max_position_embeddings}"


def get_rope(
    head_size: int,
    max_position: int,
    base: float,
    rope_scaling: Optional[Dict[str, Any]] = None,
    rotary_dim: Optional[int] = None,
    is_neox_style: bool = True,
) -> RotaryEmbedding:
    """Build the RoPE of a model from its config values (see configs.model_config.get_rope_config)."""
    rotary_dim = rotary_dim or head_size
    inv_freq = _default_inv_freq(rotary_dim, base)
    rope_type = "default"
    if rope_scaling:
        rope_type = rope_scaling.get("rope_type", rope_scaling.get("type", "default"))
    if rope_type == "llama3":
        inv_freq = _llama3_inv_freq(inv_freq, rope_scaling)
    elif rope_type == "linear":
        inv_freq = inv_freq / float(rope_scaling["factor"])
    elif rope_type != "default":
        raise ValueError(f"rope_type={rope_type!r} is not supported; supported: {list(SUPPORTED_ROPE_TYPES)}")
    return RotaryEmbedding(head_size, rotary_dim, max_position, inv_freq, is_neox_style)
