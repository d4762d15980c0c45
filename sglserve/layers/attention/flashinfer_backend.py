"""FlashInferAttnBackend: paged attention with FlashInfer's batch decode / prefill wrappers
(`--attention-backend flashinfer`, optional: needs `pip install flashinfer-python`; written against
the flashinfer-python 0.7.2.post1 API, whose semantics tests/kernels/fake_flashinfer.py mirrors).

FlashInfer takes the KV as a CSR page table over a paged cache [num_pages, page_size, kv_heads,
head_dim] (NHD). We hand it the pool's own pages: the layer's K buffer [num_slots, kv_heads,
head_dim] viewed as [num_slots / P, P, kv_heads, head_dim] with P the allocator's page size, indices
= each request's pages (the first slot of page j is req_to_token[r, j * P]; the allocator fills a
page in position order and never shares one mid-page), and last_page_len = seq_len - (pages - 1) * P
(1..P; with P = 1 every page holds one token and it is always 1). Per pass, init_forward_metadata
builds the indices on the device (sglserve_kernels.kv_indices: one launch, no host sync), takes
indptr and last_page_len from the host sequence lengths the ForwardBatch carries, and calls the
wrapper's plan(); every layer then stores its new K/V and calls run().

FlashInfer's kernels exist for fp16/bf16 (fp8 KV aside, which the pool would need scales for): a
float32 model or pool is refused here with a clear error (the library itself fails with a bare
KeyError: torch.float32 from its JIT module lookup).

Extend uses the paged prefill wrapper over prefix + new tokens (the new tokens' K/V are stored
first), causal with FlashInfer's bottom-right alignment: query j of a request with q new
tokens and L tokens in KV sees KV positions <= L - q + j, i.e. its prefix and itself.

CUDA graphs (decode): the graph runner marks its static batches with extra["cuda_graph"]; each
captured batch size gets a wrapper built with use_cuda_graph=True over buffers allocated once
(indptr [bs + 1], last_page_len [bs], and an indices buffer of graph_kv_capacity entries), so
replay reads the fresh plan from the addresses the graph captured (plan copies into them; the
library refuses another batch size for that wrapper). A batch whose KV slots exceed that capacity
(many requests sharing long prefixes) runs eagerly instead (can_replay_graph).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import torch

from sglserve.layers.attention.base import AttentionBackend, rank_attention_shape
from sglserve_kernels.kv_indices import build_kv_indices
from sglserve_kernels.kv_store import store_kv_cache

if TYPE_CHECKING:
    from sglserve.layers.radix_attention import RadixAttention
    from sglserve.model_executor.forward_batch import ForwardBatch

logger = logging.getLogger(__name__)

WORKSPACE_BYTES = 256 * 1024 * 1024  # FlashInfer's split-KV scratch (its docs recommend 128 MB and up)
GRAPH_KV_CAPACITY_FACTOR = 2  # graph indices buffer: this many times the KV pool's slots
FLASHINFER_DTYPES = (torch.float16, torch.bfloat16)  # q and KV dtypes its attention kernels are built for


def check_dtypes(q_dtype: torch.dtype, kv_dtype: torch.dtype) -> None:
    if q_dtype not in FLASHINFER_DTYPES or kv_dtype not in FLASHINFER_DTYPES:
        raise ValueError(
            f"--attention-backend flashinfer runs fp16/bf16 attention; this model has q {q_dtype}, KV {kv_dtype} "
            "(FlashInfer has no float32 kernels): use --dtype bfloat16/float16 or --attention-backend triton"
        )


def paged_kv_view(buf: torch.Tensor, page_size: int) -> torch.Tensor:
    """[num_slots, kv_heads, head_dim] -> [num_slots // P, P, kv_heads, head_dim] (NHD pages); the pool
    may hold a partial page at the end that no request owns."""
    rows = buf.shape[0] - buf.shape[0] % page_size
    return buf[:rows].view(rows // page_size, page_size, *buf.shape[1:])


def import_flashinfer() -> Any:
    try:
        import flashinfer
    except ImportError as e:
        raise ImportError(
            "--attention-backend flashinfer needs FlashInfer: pip install flashinfer-python "
            f"(or use --attention-backend triton). Import failed with: {e}"
        ) from e
    return flashinfer


class FlashInferAttnBackend(AttentionBackend):
    """Reads model_runner.model_config (heads, head_dim), .device, .dtype (optional),
    .max_total_num_tokens (optional: sizes the graph indices buffer) and .attn_scaling (optional;
    default head_dim ** -0.5, checked against every layer's scaling)."""

    def __init__(self, model_runner: Any) -> None:
        self.flashinfer = import_flashinfer()
        self.model_runner = model_runner
        self.num_heads, self.num_kv_heads, self.head_dim = rank_attention_shape(model_runner)
        self.device = torch.device(model_runner.device)
        self.sm_scale = float(getattr(model_runner, "attn_scaling", None) or self.head_dim ** -0.5)
        model_dtype = getattr(model_runner, "dtype", None)
        if model_dtype is not None:
            check_dtypes(model_dtype, getattr(model_runner, "kv_dtype", None) or model_dtype)
        # Tensor-core decode pays off once a KV head serves several query heads (GQA)
        self.use_tensor_cores = self.num_heads // self.num_kv_heads >= 4
        self.workspace = torch.zeros(WORKSPACE_BYTES, dtype=torch.uint8, device=self.device)
        self.decode_wrapper = self.flashinfer.BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_tensor_cores=self.use_tensor_cores)
        self.prefill_wrapper = self.flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, "NHD")
        # CUDA-graph state, allocated once: wrappers per captured batch size share these buffers
        graph_bs = getattr(model_runner.server_args, "cuda_graph_max_bs", None) or 0
        running = getattr(model_runner, "max_running_requests", None) or 0
        self.graph_max_bs = max(min(graph_bs, running) if running else graph_bs, 1)
        pool_slots = getattr(model_runner, "max_total_num_tokens", None) or 0
        self.graph_kv_capacity = max(GRAPH_KV_CAPACITY_FACTOR * pool_slots, self.graph_max_bs)
        self._graph_indptr: Optional[torch.Tensor] = None
        self._graph_indices: Optional[torch.Tensor] = None
        self._graph_last_page_len: Optional[torch.Tensor] = None
        self._graph_wrappers: Dict[int, Any] = {}

    # ---- metadata ----------------------------------------------------------------------

    def can_replay_graph(self, forward_batch: "ForwardBatch") -> bool:
        return sum(forward_batch.seq_lens_cpu) + self.graph_max_bs <= self.graph_kv_capacity

    def init_forward_metadata(self, forward_batch: "ForwardBatch") -> None:
        mode = forward_batch.forward_mode
        if not (mode.is_decode() or mode.is_extend()):
            forward_batch.attn_metadata = None
            return
        bs = forward_batch.batch_size
        seq_lens_cpu: List[int] = list(forward_batch.seq_lens_cpu)
        if len(seq_lens_cpu) != bs:
            raise ValueError(f"seq_lens_cpu has {len(seq_lens_cpu)} entries for a batch of {bs}")
        ps = int(getattr(forward_batch.token_to_kv_pool, "page_size", 1) or 1)
        pages = [-(-n // ps) for n in seq_lens_cpu]
        indptr_host = torch.zeros(bs + 1, dtype=torch.int32)
        torch.cumsum(torch.tensor(pages, dtype=torch.int32), 0, out=indptr_host[1:])
        total = int(indptr_host[-1])
        last_page_len = torch.tensor([n - max(p - 1, 0) * ps for n, p in zip(seq_lens_cpu, pages)], dtype=torch.int32)
        graph = mode.is_decode() and bool(forward_batch.extra.get("cuda_graph"))
        if graph:
            wrapper = self._graph_wrapper(bs)
            if total > self.graph_kv_capacity:
                raise ValueError(f"{total} KV pages exceed the CUDA-graph indices buffer ({self.graph_kv_capacity})")
            indices_out = self._graph_indices
        else:
            wrapper = self.decode_wrapper if mode.is_decode() else self.prefill_wrapper
            indices_out = torch.empty(max(total, 1), dtype=torch.int32, device=self.device)
        indptr_dev = torch.zeros(bs + 1, dtype=torch.int32, device=self.device)
        torch.cumsum(torch.div(forward_batch.seq_lens.to(torch.int32) + (ps - 1), ps, rounding_mode="floor"), 0,
                     out=indptr_dev[1:])
        build_kv_indices(forward_batch.req_to_token_pool.req_to_token, forward_batch.req_pool_indices,
                         forward_batch.seq_lens, indptr_dev, indices_out, page_size=ps)
        indices = indices_out[:total]
        kv_dtype = forward_batch.token_to_kv_pool.dtype
        q_dtype = getattr(self.model_runner, "dtype", None) or kv_dtype
        check_dtypes(q_dtype, kv_dtype)
        common = dict(sm_scale=self.sm_scale, q_data_type=q_dtype, kv_data_type=kv_dtype)
        if mode.is_decode():
            wrapper.plan(indptr_host, indices, last_page_len, self.num_heads, self.num_kv_heads, self.head_dim, ps,
                         pos_encoding_mode="NONE", non_blocking=True, **common)
        else:
            qo_indptr = torch.zeros(bs + 1, dtype=torch.int32)
            torch.cumsum(torch.tensor(forward_batch.extend_seq_lens_cpu, dtype=torch.int32), 0, out=qo_indptr[1:])
            wrapper.plan(qo_indptr, indptr_host, indices, last_page_len, self.num_heads, self.num_kv_heads,
                         self.head_dim, ps, causal=True, non_blocking=True, **common)
        forward_batch.attn_metadata = wrapper

    def _graph_wrapper(self, bs: int) -> Any:
        if bs > self.graph_max_bs:
            raise ValueError(f"CUDA-graph batch of {bs} > the {self.graph_max_bs} this backend was sized for")
        if self._graph_indices is None:
            self._graph_indptr = torch.zeros(self.graph_max_bs + 1, dtype=torch.int32, device=self.device)
            self._graph_indices = torch.zeros(self.graph_kv_capacity, dtype=torch.int32, device=self.device)
            self._graph_last_page_len = torch.ones(self.graph_max_bs, dtype=torch.int32, device=self.device)
        if bs not in self._graph_wrappers:
            self._graph_wrappers[bs] = self.flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace, "NHD", use_cuda_graph=True, use_tensor_cores=self.use_tensor_cores,
                paged_kv_indptr_buffer=self._graph_indptr[: bs + 1],
                paged_kv_indices_buffer=self._graph_indices,
                paged_kv_last_page_len_buffer=self._graph_last_page_len[:bs],
            )
        return self._graph_wrappers[bs]

    # ---- forward -----------------------------------------------------------------------

    def _run(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool):
        if forward_batch.attn_metadata is None:
            self.init_forward_metadata(forward_batch)
        if abs(layer.scaling - self.sm_scale) > 1e-6 * self.sm_scale:
            raise ValueError(f"layer {layer.layer_id} scales by {layer.scaling}, the plan by {self.sm_scale}: "
                             "set model_runner.attn_scaling")
        k_buf, v_buf = forward_batch.token_to_kv_pool.get_kv_buffer(layer.layer_id)
        if save_kv_cache:
            store_kv_cache(k_buf, v_buf, forward_batch.out_cache_loc, k, v)
        n = q.shape[0]
        q3 = q.contiguous().view(n, layer.tp_q_head_num, layer.qk_head_dim)  # q may be a slice of fused qkv
        ps = int(getattr(forward_batch.token_to_kv_pool, "page_size", 1) or 1)
        paged = (paged_kv_view(k_buf, ps), paged_kv_view(v_buf, ps))
        o = forward_batch.attn_metadata.run(q3, paged)
        return o.reshape(n, -1)

    def forward_extend(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool = True):
        return self._run(q, k, v, layer, forward_batch, save_kv_cache)

    def forward_decode(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch", save_kv_cache: bool = True):
        return self._run(q, k, v, layer, forward_batch, save_kv_cache)
