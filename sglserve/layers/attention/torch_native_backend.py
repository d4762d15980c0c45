"""TorchNativeAttnBackend: paged attention with torch SDPA, the CPU backend and the GPU reference.

Every layer first stores the new tokens' K/V at forward_batch.out_cache_loc, then reads
each request's whole K/V (prefix + new) back from the pool through
req_to_token[req_pool_idx, :seq_len]. So the caller must have written the new tokens'
slots into req_to_token before the forward pass (the scheduler does, as SGLang's does).

Causality with a prefix: new token j of a request with prefix length p sits at position
p + j and may attend to positions 0..p + j. SDPA's `is_causal` aligns the mask top-left,
which is only right when p == 0, so otherwise an explicit mask is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional

import torch
import torch.nn.functional as F

from sglserve.layers.attention.base import AttentionBackend

if TYPE_CHECKING:
    from sglserve.layers.radix_attention import RadixAttention
    from sglserve.model_executor.forward_batch import ForwardBatch


@dataclass
class ExtendMetadata:
    """Per request: its token range in the batch, its KV slots and its mask (None = plain causal)."""

    starts: List[int]
    lens: List[int]
    slots: List[torch.Tensor]  # [seq_len] int64
    masks: List[Optional[torch.Tensor]]  # [extend_len, seq_len] bool, True = may attend


@dataclass
class DecodeMetadata:
    """Whole batch padded to the longest request; padding slots are masked out."""

    slots: torch.Tensor  # [bs, max_seq_len] int64
    mask: torch.Tensor  # [bs, 1, 1, max_seq_len] bool


class TorchNativeAttnBackend(AttentionBackend):
    def __init__(self, model_runner: Any = None) -> None:
        self.model_runner = model_runner

    def init_forward_metadata(self, forward_batch: "ForwardBatch") -> None:
        """Gather slot indices and masks once per pass; every layer reuses them."""
        req_to_token = forward_batch.req_to_token_pool.req_to_token
        rows = forward_batch.req_pool_indices
        seq_lens = forward_batch.seq_lens_cpu
        if forward_batch.forward_mode.is_decode():
            max_len = max(seq_lens)
            slots = req_to_token[rows, :max_len].long()
            positions = torch.arange(max_len, device=slots.device)
            mask = positions[None, :] < forward_batch.seq_lens[:, None].to(slots.device)
            forward_batch.attn_metadata = DecodeMetadata(slots=slots, mask=mask[:, None, None, :])
            return
        prefix_lens = forward_batch.extend_prefix_lens_cpu
        extend_lens = forward_batch.extend_seq_lens_cpu
        starts, slots, masks = [], [], []
        start = 0
        for i, (p, n, s) in enumerate(zip(prefix_lens, extend_lens, seq_lens)):
            if p + n != s:
                raise ValueError(f"request {i}: prefix {p} + extend {n} != seq_len {s}")
            starts.append(start)
            start += n
            slots.append(req_to_token[rows[i], :s].long())
            if p == 0:
                masks.append(None)
            else:
                kv_pos = torch.arange(s, device=req_to_token.device)
                q_pos = torch.arange(p, s, device=req_to_token.device)
                masks.append(kv_pos[None, :] <= q_pos[:, None])
        forward_batch.attn_metadata = ExtendMetadata(starts=starts, lens=list(extend_lens), slots=slots, masks=masks)

    def _metadata(self, forward_batch: "ForwardBatch") -> Any:
        if forward_batch.attn_metadata is None:
            self.init_forward_metadata(forward_batch)
        return forward_batch.attn_metadata

    @staticmethod
    def _save_kv(k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool) -> None:
        if save_kv_cache:
            forward_batch.token_to_kv_pool.set_kv_buffer(layer.layer_id, forward_batch.out_cache_loc, k, v)

    def forward_extend(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool = True):
        meta: ExtendMetadata = self._metadata(forward_batch)
        self._save_kv(k, v, layer, forward_batch, save_kv_cache)
        pool = forward_batch.token_to_kv_pool
        q = q.reshape(-1, layer.tp_q_head_num, layer.qk_head_dim)
        out = q.new_empty(q.shape[0], layer.tp_q_head_num, layer.v_head_dim)
        for start, n, slots, mask in zip(meta.starts, meta.lens, meta.slots, meta.masks):
            qi = q[start : start + n].transpose(0, 1)  # [H, n, D]
            ki, vi = (t.transpose(0, 1) for t in pool.read_kv(layer.layer_id, slots, q.dtype))  # [KVH, s, D]
            oi = F.scaled_dot_product_attention(
                qi.unsqueeze(0), ki.unsqueeze(0), vi.unsqueeze(0),
                attn_mask=mask, is_causal=mask is None, scale=layer.scaling, enable_gqa=True,
            )  # fmt: skip
            out[start : start + n] = oi[0].transpose(0, 1)
        return out.reshape(q.shape[0], -1)

    def forward_decode(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool = True):
        meta: DecodeMetadata = self._metadata(forward_batch)
        self._save_kv(k, v, layer, forward_batch, save_kv_cache)
        bs = forward_batch.batch_size
        q = q.reshape(bs, layer.tp_q_head_num, 1, layer.qk_head_dim)
        keys, values = forward_batch.token_to_kv_pool.read_kv(layer.layer_id, meta.slots, q.dtype)
        keys, values = keys.transpose(1, 2), values.transpose(1, 2)  # [bs, KVH, max_len, D]
        out = F.scaled_dot_product_attention(q, keys, values, attn_mask=meta.mask, scale=layer.scaling, enable_gqa=True)
        return out.reshape(bs, -1)
