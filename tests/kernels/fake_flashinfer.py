"""A torch stand-in for the two FlashInfer wrappers the backend uses, written from FlashInfer's
documented semantics (NHD paged cache [num_pages, page_size, num_kv_heads, head_dim], CSR page
table indptr/indices/last_page_len, causal masks aligned bottom-right, CUDA-graph wrappers that
read the plan from the buffers they were built with). It lets the CPU suite check what our
backend feeds FlashInfer; tests/kernels/test_flashinfer_backend.py runs the real library on the GPU."""

from __future__ import annotations

from types import ModuleType
from typing import Optional

import torch


def _check_i32(name: str, t: torch.Tensor) -> None:
    assert t.dtype == torch.int32, f"{name} must be int32, got {t.dtype}"


class _PagedWrapper:
    def __init__(self, workspace: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 paged_kv_indptr_buffer: Optional[torch.Tensor] = None,
                 paged_kv_indices_buffer: Optional[torch.Tensor] = None,
                 paged_kv_last_page_len_buffer: Optional[torch.Tensor] = None, **_: object) -> None:
        assert kv_layout == "NHD"
        self.use_cuda_graph = use_cuda_graph
        if use_cuda_graph:
            assert paged_kv_indptr_buffer is not None and paged_kv_indices_buffer is not None
            self.indptr, self.indices, self.last_page_len = (
                paged_kv_indptr_buffer, paged_kv_indices_buffer, paged_kv_last_page_len_buffer)
        self.planned = False
        self.plan_count = 0

    def _store_plan(self, qo_indptr, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim,
                    page_size, causal, sm_scale, q_data_type, kv_data_type) -> None:
        for name, t in (("qo_indptr", qo_indptr), ("indptr", indptr), ("indices", indices),
                        ("last_page_len", last_page_len)):
            _check_i32(name, t)
        bs = indptr.shape[0] - 1
        assert last_page_len.shape[0] == bs and qo_indptr.shape[0] == bs + 1
        assert int(indptr[-1]) == indices.shape[0], "indices must hold indptr[-1] pages"
        if self.use_cuda_graph:  # the captured kernels read these addresses
            assert bs == self.indptr.shape[0] - 1, "batch size is fixed in CUDA-graph mode"
            assert indices.shape[0] <= self.indices.shape[0]
            self.indptr.copy_(indptr)
            self.last_page_len.copy_(last_page_len)
            if indices.data_ptr() != self.indices.data_ptr():
                self.indices[: indices.shape[0]].copy_(indices)
        else:
            self.indptr, self.indices, self.last_page_len = indptr.clone(), indices.clone(), last_page_len.clone()
        self.qo_indptr = qo_indptr.cpu()
        self.shape = (num_qo_heads, num_kv_heads, head_dim, page_size)
        self.causal, self.sm_scale = causal, sm_scale
        self.q_data_type, self.kv_data_type = q_data_type, kv_data_type
        self.planned = True
        self.plan_count += 1

    def run(self, q: torch.Tensor, paged_kv_cache, *args, out: Optional[torch.Tensor] = None, **_: object):
        assert self.planned, "run() before plan()"
        k_cache, v_cache = paged_kv_cache
        num_qo_heads, num_kv_heads, head_dim, page_size = self.shape
        assert q.dtype == self.q_data_type and k_cache.dtype == self.kv_data_type
        assert q.shape[1:] == (num_qo_heads, head_dim) and k_cache.shape[1:] == (page_size, num_kv_heads, head_dim)
        indptr, indices, last = self.indptr.cpu(), self.indices.cpu(), self.last_page_len.cpu()
        o = torch.empty_like(q)
        group = num_qo_heads // num_kv_heads
        for i in range(indptr.shape[0] - 1):
            pages = indices[int(indptr[i]):int(indptr[i + 1])].long().to(k_cache.device)
            kv_len = (pages.shape[0] - 1) * page_size + int(last[i]) if pages.shape[0] else 0
            k = k_cache[pages].reshape(-1, num_kv_heads, head_dim)[:kv_len].float().repeat_interleave(group, 1)
            v = v_cache[pages].reshape(-1, num_kv_heads, head_dim)[:kv_len].float().repeat_interleave(group, 1)
            a, b = int(self.qo_indptr[i]), int(self.qo_indptr[i + 1])
            qi = q[a:b].float()
            scores = torch.einsum("nhd,lhd->hnl", qi, k) * self.sm_scale
            if self.causal:  # bottom-right: query row r sees kv positions <= kv_len - n + r
                n = b - a
                rows = torch.arange(n, device=q.device)[:, None]
                cols = torch.arange(kv_len, device=q.device)[None, :]
                scores = scores.masked_fill(cols > kv_len - n + rows, float("-inf"))
            o[a:b] = torch.einsum("hnl,lhd->nhd", scores.softmax(-1), v).to(q.dtype)
        if out is not None:
            out.copy_(o)
            return out
        return o


class BatchDecodeWithPagedKVCacheWrapper(_PagedWrapper):
    def __init__(self, workspace, kv_layout="NHD", use_cuda_graph=False, use_tensor_cores=False, **kw):
        super().__init__(workspace, kv_layout, use_cuda_graph, **kw)

    def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
             pos_encoding_mode="NONE", sm_scale=None, q_data_type=None, kv_data_type=None, **_: object):
        assert pos_encoding_mode == "NONE"
        qo = torch.arange(indptr.shape[0], dtype=torch.int32)
        self._store_plan(qo, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
                         False, sm_scale if sm_scale is not None else head_dim ** -0.5, q_data_type, kv_data_type)


class BatchPrefillWithPagedKVCacheWrapper(_PagedWrapper):
    def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
             num_kv_heads, head_dim_qk, page_size, causal=False, sm_scale=None, q_data_type="float16",
             kv_data_type=None, **_: object):
        self._store_plan(qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads,
                         num_kv_heads, head_dim_qk, page_size, causal,
                         sm_scale if sm_scale is not None else head_dim_qk ** -0.5, q_data_type, kv_data_type)


def module() -> ModuleType:
    m = ModuleType("flashinfer")
    m.BatchDecodeWithPagedKVCacheWrapper = BatchDecodeWithPagedKVCacheWrapper
    m.BatchPrefillWithPagedKVCacheWrapper = BatchPrefillWithPagedKVCacheWrapper
    return m
