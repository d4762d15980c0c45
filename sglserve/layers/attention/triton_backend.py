"""TritonAttnBackend: paged attention with our Triton kernels (sglserve_kernels), the GPU default.

Per layer, forward_extend / forward_decode first store the new tokens' K/V at
forward_batch.out_cache_loc (one Triton launch for K and V), then run:
  extend: extend_attention_fwd — prefix K/V from the pool through req_to_token, the new
          tokens' K/V straight from the k/v inputs, causal;
  decode: decode_attention_fwd — split-KV flash decoding over the pool.

What the kernels need from the ForwardBatch is worked out once per pass in
init_forward_metadata:
  extend: the grid bound max_extend_len (a host int, from extend_seq_lens_cpu);
  mixed:  an extend pass whose last num_decoding requests decode one token each: those go
          through the decode kernel (split-KV, GQA-grouped heads), the rest through the
          extend kernel, whose query tiles would otherwise hold one live row per decoding
          request and re-read its whole prefix once per query head;
  decode: num_kv_splits per request (computed on the device from seq_lens, no host sync)
          and the fp32 split scratch.
Decode metadata is allocation free and shape-stable: the split counts and the scratch
are views into buffers allocated once in __init__ for up to `max_bs` requests, and the
views depend only on the batch size. So a CUDA graph runner captures the model's forward
after calling init_forward_metadata on its padded static batch, and before each replay
calls it again on the same static batch (new seq_lens) — the graph then reads the fresh
split counts from the same addresses. Padded rows may carry seq_len 0 (output zeros) or 1.

An FP8 pool (--kv-cache-dtype fp8_e4m3) goes through the same kernels: the store quantizes
with the layer's (k_scale, v_scale) from the pool and both attention kernels read the
bytes back with them (kernels/kv_store.py says how). The scales are host floats baked
into the launches, so a CUDA graph captured once stays right (they never change after load).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional, Union

import torch

from sglserve.layers.attention.base import AttentionBackend, rank_attention_shape
from sglserve_kernels.attn_decode import (
    DEFAULT_MAX_KV_SPLITS,
    decode_attention_fwd,
    decode_kv_splits,
    decode_max_splits,
)
from sglserve.layers.quantization.base import Fp8Input
from sglserve_kernels.attn_extend import extend_attention_fwd
from sglserve_kernels.gemv import MAX_M as GEMV_MAX_M
from sglserve_kernels.kv_store import store_kv_cache
from sglserve_kernels.numerics import Fp8Rows
from sglserve_kernels.rope import KVStore
from sglserve_kernels._utils import num_sms

FUSED_ROPE_KV_STORE = os.environ.get("SGLSERVE_ROPE_KV_STORE", "1") != "0"

if TYPE_CHECKING:
    from sglserve.layers.radix_attention import RadixAttention
    from sglserve.model_executor.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)


@dataclass
class TritonDecodeMetadata:
    num_kv_splits: torch.Tensor  # [bs] int32
    mid_o: torch.Tensor  # [bs, num_heads, splits, head_dim] fp32
    mid_lse: torch.Tensor  # [bs, num_heads, splits] fp32


@dataclass
class MixedDecodeRows:
    """The decoding requests of a mixed step (the last ones of the batch), in tensors of their
    own: slices of the batch's columns would start at addresses that depend on how many
    requests prefill, and Triton compiles a new kernel variant for each pointer alignment it
    meets (16 bytes or not) - mid-serving, seconds each. Own allocations are always aligned,
    as the decode graphs' static buffers are, so the decode kernels are the captured ones."""

    req_pool_indices: torch.Tensor  # [k] int64
    seq_lens: torch.Tensor  # [k] int32
    meta: TritonDecodeMetadata


@dataclass
class TritonExtendMetadata:
    max_extend_len: int  # over the requests the extend kernel runs (a mixed step: the prefill ones)
    decode: Optional[MixedDecodeRows] = None  # a mixed step's decoding requests


class TritonAttnBackend(AttentionBackend):
    """Reads model_runner.model_config (heads, head_dim), .device, .server_args.cuda_graph_max_bs
    and .max_running_requests to size the decode scratch once."""

    def __init__(self, model_runner: Any, max_kv_splits: int = DEFAULT_MAX_KV_SPLITS) -> None:
        self.model_runner = model_runner
        self.num_heads, self.num_kv_heads, self.head_dim = rank_attention_shape(model_runner)
        self.device = torch.device(model_runner.device)
        self.max_kv_splits = max_kv_splits
        self._check_kv_dtype(getattr(model_runner, "kv_dtype", None))
        self.num_sms = num_sms(self.device.index or 0) if self.device.type == "cuda" else num_sms()
        graph_bs = getattr(model_runner.server_args, "cuda_graph_max_bs", None) or 0
        running = getattr(model_runner, "max_running_requests", None) or 0
        self.max_bs = max(graph_bs, running, 1)
        # Rows x splits is largest for some bs <= max_bs; size the flat scratch for that.
        cap = max(bs * self._splits_for(bs) for bs in range(1, self.max_bs + 1))
        self._num_kv_splits = torch.ones(self.max_bs, dtype=torch.int32, device=self.device)
        self._mid_o = torch.empty(cap * self.num_heads * self.head_dim, dtype=torch.float32, device=self.device)
        self._mid_lse = torch.empty(cap * self.num_heads, dtype=torch.float32, device=self.device)

    def _check_kv_dtype(self, kv_dtype) -> None:
        """E4M3 conversions need sm_89+ (Ada, Hopper) in Triton; say so at start, not mid-forward."""
        if kv_dtype != torch.float8_e4m3fn or self.device.type != "cuda":
            return
        major, minor = torch.cuda.get_device_capability(self.device)
        if (major, minor) < (8, 9):
            raise RuntimeError(f"--kv-cache-dtype fp8_e4m3 with the triton backend needs compute capability >= 8.9 "
                               f"(this GPU is {major}.{minor}); use --kv-cache-dtype auto")

    def _splits_for(self, bs: int) -> int:
        return decode_max_splits(bs, self.num_kv_heads, self.max_kv_splits, self.num_sms)

    def warmup_decoding_counts(self, max_count: int) -> List[int]:
        """The smallest batch size (<= max_count) of each decode split count: the split count shapes
        the scratch, whose strides are int arguments Triton specializes on (1, a multiple of 16),
        so a mixed step with a new count of decoding rows may need a kernel variant of its own.
        The start-up warm-up (model_executor/warmup.py) runs one mixed step of each."""
        counts, last = [], None
        for bs in range(1, max(1, min(max_count, self.max_bs)) + 1):
            splits = self._splits_for(bs)
            if splits != last:
                counts.append(bs)
                last = splits
        return counts

    # ---- metadata ----------------------------------------------------------------------

    def init_forward_metadata(self, forward_batch: "ForwardBatch") -> None:
        if forward_batch.forward_mode.is_decode():
            forward_batch.attn_metadata = self._decode_metadata(forward_batch.batch_size, forward_batch.seq_lens)
        elif forward_batch.forward_mode.is_extend():
            lens = forward_batch.extend_seq_lens_cpu
            if lens is None or forward_batch.extend_start_loc is None or forward_batch.extend_prefix_lens is None:
                raise ValueError("an EXTEND ForwardBatch needs extend_prefix_lens, extend_seq_lens(_cpu), extend_start_loc")
            k = forward_batch.num_decoding
            n_prefill = forward_batch.batch_size - k
            meta = TritonExtendMetadata(max_extend_len=max(lens[:n_prefill], default=0))
            if k:
                rows = forward_batch.req_pool_indices[n_prefill:].clone()
                seq_lens = forward_batch.seq_lens[n_prefill:].clone()
                meta.decode = MixedDecodeRows(rows, seq_lens, self._decode_metadata(k, seq_lens))
            forward_batch.attn_metadata = meta
        else:
            forward_batch.attn_metadata = None

    def _decode_metadata(self, bs: int, seq_lens: torch.Tensor) -> TritonDecodeMetadata:
        splits = self._splits_for(bs)
        if bs <= self.max_bs:
            num_kv_splits = decode_kv_splits(seq_lens, self.num_kv_heads, self.max_kv_splits,
                                             out=self._num_kv_splits, num_sms=self.num_sms)
            mid_o = self._mid_o[: bs * self.num_heads * splits * self.head_dim]
            mid_lse = self._mid_lse[: bs * self.num_heads * splits]
        else:  # bigger than any batch the runner announced: correct, just not graph-safe
            logger.warning("decode batch of %d > max_bs %d: allocating attention scratch", bs, self.max_bs)
            num_kv_splits = decode_kv_splits(seq_lens, self.num_kv_heads, self.max_kv_splits, num_sms=self.num_sms)
            mid_o = torch.empty(bs * self.num_heads * splits * self.head_dim, dtype=torch.float32, device=self.device)
            mid_lse = torch.empty(bs * self.num_heads * splits, dtype=torch.float32, device=self.device)
        return TritonDecodeMetadata(
            num_kv_splits=num_kv_splits,
            mid_o=mid_o.view(bs, self.num_heads, splits, self.head_dim),
            mid_lse=mid_lse.view(bs, self.num_heads, splits),
        )

    def _metadata(self, forward_batch: "ForwardBatch") -> Any:
        meta = forward_batch.attn_metadata
        if forward_batch.forward_mode.is_decode():
            ok = isinstance(meta, TritonDecodeMetadata)
        else:
            ok = isinstance(meta, TritonExtendMetadata)
        if not ok:
            self.init_forward_metadata(forward_batch)
        return forward_batch.attn_metadata

    # ---- forward -----------------------------------------------------------------------

    def fused_kv_store(self, v: torch.Tensor, layer: "RadixAttention", forward_batch: "ForwardBatch") -> Optional[KVStore]:
        """The pool's buffers for the RoPE kernel to store K/V into (kernels/rope.py): one launch less
        per layer. SGLSERVE_ROPE_KV_STORE=0: the store kernel runs instead (an A/B knob)."""
        return self._kv_store(v, layer, forward_batch) if FUSED_ROPE_KV_STORE else None

    @staticmethod
    def _kv_store(v: torch.Tensor, layer: "RadixAttention", forward_batch: "ForwardBatch") -> KVStore:
        """Where this layer's new K/V go: its pool buffers, the batch's slots, the FP8 scales."""
        pool = forward_batch.token_to_kv_pool
        k_buf, v_buf = pool.get_kv_buffer(layer.layer_id)
        return KVStore(v, k_buf, v_buf, forward_batch.out_cache_loc, *pool.kv_scales(layer.layer_id))

    @classmethod
    def _save_kv(cls, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool) -> None:
        if save_kv_cache:
            s = cls._kv_store(v, layer, forward_batch)
            store_kv_cache(s.k_buffer, s.v_buffer, s.loc, k, v, s.k_scale, s.v_scale)

    @staticmethod
    def _heads(x: torch.Tensor, num_heads: int, head_dim: int) -> torch.Tensor:
        """[n, H*D] (possibly a strided slice of a fused qkv output) -> [n, H, D], a view when it can be."""
        if x.stride(-1) != 1:
            x = x.contiguous()
        return x.view(x.shape[0], num_heads, head_dim)

    def forward_extend(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool = True):
        meta: TritonExtendMetadata = self._metadata(forward_batch)
        self._save_kv(k, v, layer, forward_batch, save_kv_cache)
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        k_scale, v_scale = forward_batch.token_to_kv_pool.kv_scales(layer.layer_id)
        q3 = self._heads(q, layer.tp_q_head_num, layer.qk_head_dim)
        k3 = self._heads(k, layer.tp_k_head_num, layer.qk_head_dim)
        v3 = self._heads(v, layer.tp_v_head_num, layer.v_head_dim)
        o = q.new_empty(q3.shape[0], layer.tp_q_head_num, layer.v_head_dim)
        req_to_token = forward_batch.req_to_token_pool.req_to_token
        dec = meta.decode
        k_dec = 0 if dec is None else dec.seq_lens.shape[0]
        n_req, n_tok = forward_batch.batch_size - k_dec, q3.shape[0] - k_dec  # decode rows: the last k tokens
        # Prefill rows start at offset 0 of every column: aligned, like a prefill-only step's
        extend_attention_fwd(
            q3[:n_tok], k3[:n_tok], v3[:n_tok], o[:n_tok], k_buf, v_buf, req_to_token,
            forward_batch.req_pool_indices[:n_req], forward_batch.extend_prefix_lens[:n_req],
            forward_batch.extend_seq_lens[:n_req], forward_batch.extend_start_loc[:n_req],
            meta.max_extend_len, layer.scaling, k_scale, v_scale,
        )  # fmt: skip
        if dec is not None:  # their K/V is in the pool already (_save_kv above): plain decode attention
            self._decode(q3[n_tok:], o[n_tok:], k_buf, v_buf, req_to_token, dec.req_pool_indices, dec.seq_lens,
                         dec.meta, layer, k_scale, v_scale)
        return o.view(o.shape[0], -1)

    def forward_decode(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool = True):
        return self._decode_step(q, k, v, layer, forward_batch, save_kv_cache, None)

    def forward_decode_fp8(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool,
                           fp8_output: Fp8Input) -> Union[torch.Tensor, Fp8Rows]:
        """Up to the skinny GEMM's rows, the split merge writes the W8A8 o_proj's x in FP8
        (kernels/attn_decode_fp8.py); more rows keep the per-head merge and the GEMM quantizes."""
        fp8 = fp8_output if forward_batch.batch_size <= GEMV_MAX_M else None
        return self._decode_step(q, k, v, layer, forward_batch, save_kv_cache, fp8)

    def _decode_step(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool,
                     fp8_output: Optional[Fp8Input]) -> Union[torch.Tensor, Fp8Rows]:
        meta: TritonDecodeMetadata = self._metadata(forward_batch)
        self._save_kv(k, v, layer, forward_batch, save_kv_cache)
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        k_scale, v_scale = forward_batch.token_to_kv_pool.kv_scales(layer.layer_id)
        bs = forward_batch.batch_size
        q3 = self._heads(q, layer.tp_q_head_num, layer.qk_head_dim)
        o = q.new_empty(bs, layer.tp_q_head_num, layer.v_head_dim)
        rows = None if fp8_output is None else Fp8Rows(
            torch.empty((bs, o.shape[1] * o.shape[2]), dtype=torch.float8_e4m3fn, device=q.device),
            torch.empty((bs, 1), dtype=torch.float32, device=q.device), q.dtype)
        out = self._decode(q3, o, k_buf, v_buf, forward_batch.req_to_token_pool.req_to_token,
                           forward_batch.req_pool_indices, forward_batch.seq_lens, meta, layer, k_scale, v_scale,
                           rows, None if fp8_output is None else fp8_output.input_scale)
        return out if isinstance(out, Fp8Rows) else out.view(bs, -1)

    def _decode(self, q3, o, k_buf, v_buf, req_to_token, rows, seq_lens, meta: TritonDecodeMetadata,
                layer: "RadixAttention", k_scale: float, v_scale: float, out_fp8: Optional[Fp8Rows] = None,
                out_fp8_static: Optional[torch.Tensor] = None) -> Union[torch.Tensor, Fp8Rows]:
        mid_o, mid_lse = meta.mid_o, meta.mid_lse
        if mid_o.shape[1] != layer.tp_q_head_num or mid_o.shape[3] != layer.v_head_dim:
            raise ValueError(
                f"layer {layer.layer_id} has {layer.tp_q_head_num} heads x {layer.v_head_dim}, the backend was sized "
                f"for {self.num_heads} x {self.head_dim} (model_config)"
            )
        return decode_attention_fwd(q3, k_buf, v_buf, o, req_to_token, rows, seq_lens, meta.num_kv_splits, mid_o,
                                    mid_lse, layer.scaling, k_scale, v_scale, out_fp8, out_fp8_static)
