"""A torch stand-in for the FlashInfer wrappers our backend uses, written from the flashinfer-python
0.7.2.post1 source (flashinfer/decode.py, prefill.py, utils.py, page.py), so that a CPU test fails
where the real library would:

- dtypes: the kernels exist for fp16/bf16 queries and fp16/bf16/fp8 KV only. plan() with float32
  raises KeyError (the JIT module name is looked up in a dtype map without float32); run() with a
  q or k dtype other than the planned one raises ValueError.
- constructors take the library's exact keyword names (decode: paged_kv_*_buffer; prefill:
  qo_indptr_buf / paged_kv_*_buf) and nothing else (an unknown keyword is a TypeError).
  use_cuda_graph needs every buffer as a tensor (ValueError); the batch size is fixed by them
  (decode: len(last_page_len_buffer), prefill: len(qo_indptr_buf) - 1), and the indptr buffer
  must be one longer.
- plan(): decode takes 7 positional arguments, the rest by keyword (positionally is deprecated:
  DeprecationWarning, in the library's legacy order pos_encoding_mode, window_left, logits_soft_cap,
  q_data_type, ...); q_data_type defaults to float16. Prefill keeps its positional order
  (..., page_size, head_dim_vo, custom_mask, packed_custom_mask, causal, pos_encoding_mode, ...).
  The batch size is len(last_page_len) (decode) / len(qo_indptr) - 1 (prefill). In CUDA-graph mode
  plan copies indptr / last_page_len / indices into the constructor's buffers (ValueError for
  another batch size or more indices than the buffer holds); otherwise it keeps
  `tensor.to(device)`, which is the caller's own tensor when it is already there (no copy).
  run() reads those device tensors, as the kernels do.
- KV: a (k, v) tuple of [pages, page_size, kv_heads, dim] ("NHD") or [pages, kv_heads, page_size,
  dim] ("HND") tensors (3-D means page_size 1), or one [pages, 2, ...] tensor. A request's length is
  (num_pages - 1) * page_size + last_page_len (get_seq_lens); the page size is the cache's.
- causal prefill is aligned bottom-right: query j of qo_len rows sees KV positions <= kv_len - qo_len + j.
- run() returns [tokens, qo_heads, dim] in the planned o_data_type (default: q's).

What the library offers that our backend does not use (RoPE, sliding windows, soft cap, custom masks,
return_lse, block tables, multi-token decode) raises NotImplementedError here rather than being
ignored. tests/kernels/test_flashinfer_backend.py runs the same checks against the real library on a GPU.
"""

from __future__ import annotations

import math
import warnings
from types import ModuleType
from typing import Any, Optional, Tuple, Union

import torch

# flashinfer/jit/utils.py filename_safe_dtype_map (q, o) and dtype_map_kv (kv), without the integer types
_Q_DTYPES = (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
_KV_DTYPES = (torch.float16, torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2)
_LAYOUTS = ("NHD", "HND")
_DECODE_LEGACY_POSITIONAL = ("pos_encoding_mode", "window_left", "logits_soft_cap", "q_data_type", "kv_data_type",
                             "o_data_type", "data_type", "sm_scale", "rope_scale", "rope_theta", "non_blocking",
                             "block_tables", "seq_lens", "fixed_split_size", "disable_split_kv", "q_len_per_req")


def _dtype(d: Union[str, torch.dtype]) -> torch.dtype:
    if isinstance(d, str):
        return getattr(torch, d)
    if isinstance(d, torch.dtype):
        return d
    raise TypeError(f"dtype must be a string or torch.dtype, got {type(d)}")


def _check_jit_dtypes(q: torch.dtype, kv: torch.dtype, o: torch.dtype) -> None:
    for d, allowed in ((q, _Q_DTYPES), (kv, _KV_DTYPES), (o, _Q_DTYPES)):
        if d not in allowed:
            raise KeyError(d)  # what the library's module-name lookup raises


def _check_layout(kv_layout: str) -> None:
    if kv_layout not in _LAYOUTS:
        raise KeyError(f"Invalid kv_layout {kv_layout}")


def _unpack(paged_kv_cache, kv_layout: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """(k, v) as [pages, page_size, heads, dim] views, whatever the layout and packing."""
    if isinstance(paged_kv_cache, tuple):
        k, v = paged_kv_cache
        for x in (k, v):
            if x.ndim not in (3, 4):
                raise ValueError("x must be 3D or 4D")
        if k.ndim == 3:
            k, v = (k.unsqueeze(-3), v.unsqueeze(-3)) if kv_layout == "NHD" else (k.unsqueeze(-2), v.unsqueeze(-2))
    elif torch.is_tensor(paged_kv_cache):
        x = paged_kv_cache
        if x.ndim not in (4, 5):
            raise ValueError("x must be 4D or 5D")
        if x.ndim == 4:
            x = x.unsqueeze(-3) if kv_layout == "NHD" else x.unsqueeze(-2)
        k, v = x.unbind(dim=1)
    else:
        raise KeyError(f"Unrecognized paged_kv_cache type {type(paged_kv_cache)}, expect a single tensor or a tuple of tensor.")
    if kv_layout == "HND":
        k, v = k.transpose(1, 2), v.transpose(1, 2)
    return k, v


def _get_seq_lens(indptr: torch.Tensor, last_page_len: torch.Tensor, page_size: int) -> torch.Tensor:
    return torch.clamp(indptr[1:] - indptr[:-1] - 1, min=0) * page_size + last_page_len


class _Wrapper:
    """What both wrappers share: workspace, layout, the planned problem, and the attention itself."""

    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str, use_cuda_graph: bool) -> None:
        if float_workspace_buffer.numel() and float_workspace_buffer.data_ptr() % 16:
            raise ValueError("float_workspace_buffer must be 16-byte aligned")
        _check_layout(kv_layout)
        self._kv_layout = kv_layout
        self.device = float_workspace_buffer.device
        self._use_cuda_graph = use_cuda_graph
        self._paged_kv_indptr_buf: Optional[torch.Tensor] = None
        self._paged_kv_indices_buf: Optional[torch.Tensor] = None
        self._paged_kv_last_page_len_buf: Optional[torch.Tensor] = None
        self._qo_indptr_buf: Optional[torch.Tensor] = None
        self.plan_count = 0  # not in the library: lets tests see that a plan happened

    @property
    def is_cuda_graph_enabled(self) -> bool:
        return self._use_cuda_graph

    def _take_paged(self, indptr, indices, last_page_len, non_blocking: bool) -> None:
        """CUDA-graph mode: copy into the fixed buffers; else keep the tensors (moved to the device)."""
        if self._use_cuda_graph:
            if len(indices) > len(self._paged_kv_indices_buf):
                raise ValueError("The size of indices should be less than or equal to the allocated buffer")
            self._paged_kv_indptr_buf.copy_(indptr, non_blocking=non_blocking)
            self._paged_kv_last_page_len_buf.copy_(last_page_len, non_blocking=non_blocking)
            self._paged_kv_indices_buf[: len(indices)].copy_(indices)
        else:
            self._paged_kv_indptr_buf = indptr.to(self.device, non_blocking=non_blocking)
            self._paged_kv_indices_buf = indices.to(self.device, non_blocking=non_blocking)
            self._paged_kv_last_page_len_buf = last_page_len.to(self.device, non_blocking=non_blocking)

    def _set_problem(self, num_qo_heads, num_kv_heads, head_dim, page_size, q_dt, kv_dt, o_dt, sm_scale,
                     causal: bool, pos_encoding_mode: str, window_left: int, logits_soft_cap) -> None:
        if pos_encoding_mode not in ("NONE", "ROPE_LLAMA", "ALIBI"):
            raise KeyError(f"Invalid pos_encoding_mode {pos_encoding_mode}")
        if pos_encoding_mode != "NONE" or window_left != -1 or (logits_soft_cap or 0.0) > 0:
            raise NotImplementedError("fake_flashinfer models pos_encoding_mode NONE, no window, no soft cap only")
        _check_jit_dtypes(q_dt, kv_dt, o_dt)
        if num_qo_heads % num_kv_heads:
            raise ValueError(f"num_qo_heads {num_qo_heads} is not a multiple of num_kv_heads {num_kv_heads}")
        self._num_qo_heads, self._num_kv_heads, self._head_dim, self._page_size = (
            num_qo_heads, num_kv_heads, head_dim, page_size)
        self._cached_q_data_type, self._cached_kv_data_type, self._cached_o_data_type = q_dt, kv_dt, o_dt
        self._sm_scale, self._causal = sm_scale, causal
        self.plan_count += 1

    def _attend(self, q, paged_kv_cache, k_scale, v_scale, out: Optional[torch.Tensor]) -> torch.Tensor:
        if not hasattr(self, "_cached_q_data_type"):  # the library fails on the missing plan state too
            raise AttributeError("run() called before plan()")
        k_cache, v_cache = _unpack(paged_kv_cache, self._kv_layout)
        if q.dtype != self._cached_q_data_type:
            raise ValueError(f"The dtype of q {q.dtype} does not match the q_data_type "
                             f"{self._cached_q_data_type} specified in plan function.")
        if k_cache.dtype != self._cached_kv_data_type:
            raise ValueError(f"The dtype of k {k_cache.dtype} does not match the kv_data_type "
                             f"{self._cached_kv_data_type} specified in plan function.")
        hq, hk, d = self._num_qo_heads, self._num_kv_heads, self._head_dim
        if q.shape[1:] != (hq, d) or k_cache.shape[2:] != (hk, d) or v_cache.shape != k_cache.shape:
            raise RuntimeError(f"q {tuple(q.shape)} / k {tuple(k_cache.shape)} do not match the plan "
                               f"({hq} qo heads, {hk} kv heads, head_dim {d}, layout {self._kv_layout})")
        page_size = k_cache.shape[1]  # the kernel pages by the cache it is given
        o_dtype = self._cached_o_data_type
        if out is not None and (out.shape != q.shape or out.dtype != o_dtype or out.device != q.device):
            raise ValueError(f"out: expected {tuple(q.shape)} {o_dtype} on {q.device}, got "
                             f"{tuple(out.shape)} {out.dtype} on {out.device}")
        sm_scale = self._sm_scale if self._sm_scale is not None else 1.0 / math.sqrt(q.shape[-1])
        indptr = self._paged_kv_indptr_buf.cpu()
        indices = self._paged_kv_indices_buf.cpu().long()
        kv_lens = _get_seq_lens(indptr, self._paged_kv_last_page_len_buf.cpu(), page_size)
        qo_indptr = self._qo_indptr_buf.cpu()
        group = hq // hk
        o = torch.empty(q.shape, dtype=o_dtype, device=q.device)
        for i in range(len(kv_lens)):
            a, b = int(qo_indptr[i]), int(qo_indptr[i + 1])
            pages = indices[int(indptr[i]):int(indptr[i + 1])].to(k_cache.device)
            kv_len = int(kv_lens[i])
            k = k_cache[pages].reshape(-1, hk, d)[:kv_len].float().repeat_interleave(group, 1)
            v = v_cache[pages].reshape(-1, hk, d)[:kv_len].float().repeat_interleave(group, 1)
            scores = torch.einsum("nhd,lhd->hnl", q[a:b].float(), k) * (sm_scale * (k_scale or 1.0))
            if self._causal:
                rows = torch.arange(b - a, device=q.device)[:, None]
                cols = torch.arange(kv_len, device=q.device)[None, :]
                scores = scores.masked_fill(cols > kv_len - (b - a) + rows, float("-inf"))
            o[a:b] = (torch.einsum("hnl,lhd->nhd", scores.softmax(-1), v) * (v_scale or 1.0)).to(o_dtype)
        if out is not None:
            out.copy_(o)
            return out
        return o


class BatchDecodeWithPagedKVCacheWrapper(_Wrapper):
    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 use_tensor_cores: bool = False, paged_kv_indptr_buffer: Optional[torch.Tensor] = None,
                 paged_kv_indices_buffer: Optional[torch.Tensor] = None,
                 paged_kv_last_page_len_buffer: Optional[torch.Tensor] = None, backend: str = "auto",
                 jit_args: Optional[list] = None) -> None:
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph)
        if jit_args is not None or backend not in ("auto", "fa2"):
            raise NotImplementedError("fake_flashinfer models the default decode kernels only")
        self._fixed_batch_size = 0
        if use_cuda_graph:
            for name, buf in (("paged_kv_indptr_buffer", paged_kv_indptr_buffer),
                              ("paged_kv_indices_buffer", paged_kv_indices_buffer),
                              ("paged_kv_last_page_len_buffer", paged_kv_last_page_len_buffer)):
                if not torch.is_tensor(buf):
                    raise ValueError(f"{name} should be a torch.Tensor in cudagraph mode")
            self._fixed_batch_size = len(paged_kv_last_page_len_buffer)
            if len(paged_kv_indptr_buffer) != self._fixed_batch_size + 1:
                raise ValueError("The size of paged_kv_indptr_buffer should be batch_size + 1")
            self._qo_indptr_buf = torch.arange(self._fixed_batch_size + 1, dtype=torch.int32, device=self.device)
        self._paged_kv_indptr_buf = paged_kv_indptr_buffer
        self._paged_kv_indices_buf = paged_kv_indices_buffer
        self._paged_kv_last_page_len_buf = paged_kv_last_page_len_buffer
        self._use_tensor_cores = use_tensor_cores

    @property
    def use_tensor_cores(self) -> bool:
        return self._use_tensor_cores

    def plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size,
             *deprecated_positional_args: Any, **kwargs: Any) -> None:
        if deprecated_positional_args:
            if len(deprecated_positional_args) > len(_DECODE_LEGACY_POSITIONAL):
                raise TypeError("BatchDecodeWithPagedKVCacheWrapper.plan() got too many positional arguments")
            for name, value in zip(_DECODE_LEGACY_POSITIONAL, deprecated_positional_args):
                if name in kwargs:
                    raise TypeError(f"BatchDecodeWithPagedKVCacheWrapper.plan() got multiple values for argument {name!r}")
                kwargs[name] = value
            warnings.warn("Passing optional arguments to BatchDecodeWithPagedKVCacheWrapper.plan() positionally is "
                          "deprecated", DeprecationWarning, stacklevel=2)
        self._plan(indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size, **kwargs)

    def _plan(self, indptr, indices, last_page_len, num_qo_heads, num_kv_heads, head_dim, page_size, *,
              pos_encoding_mode: str = "NONE", window_left: int = -1, window_right: int = 0,
              logits_soft_cap: Optional[float] = None, q_data_type="float16", kv_data_type=None,
              o_data_type=None, data_type=None, sm_scale: Optional[float] = None, rope_scale=None,
              rope_theta=None, non_blocking: bool = True, block_tables=None, seq_lens=None,
              fixed_split_size: Optional[int] = None, disable_split_kv: bool = False, q_len_per_req: int = 1,
              is_causal: Optional[bool] = None) -> None:
        if block_tables is not None or seq_lens is not None or q_len_per_req != 1 or window_right != 0:
            raise NotImplementedError("fake_flashinfer models single-token CSR decode only")
        if fixed_split_size is not None and not self._use_tensor_cores:
            raise ValueError("fixed_split_size is only supported by tensor core decode for now.")
        if data_type is not None:
            q_data_type = q_data_type if q_data_type is not None else data_type
            kv_data_type = kv_data_type if kv_data_type is not None else data_type
        q_dt = _dtype(q_data_type)
        kv_dt = _dtype(kv_data_type) if kv_data_type is not None else q_dt
        o_dt = _dtype(o_data_type) if o_data_type is not None else q_dt
        batch_size = len(last_page_len)
        if self._use_cuda_graph:
            if batch_size != self._fixed_batch_size:
                raise ValueError(f"The batch size should be fixed in cudagraph mode, the runtime batch size "
                                 f"{batch_size}  mismatches the batch size set during initialization {self._fixed_batch_size}")
        else:
            self._qo_indptr_buf = torch.arange(batch_size + 1, dtype=torch.int32, device=self.device)
        self._take_paged(indptr, indices, last_page_len, non_blocking)
        self._set_problem(num_qo_heads, num_kv_heads, head_dim, page_size, q_dt, kv_dt, o_dt, sm_scale,
                          False, pos_encoding_mode, window_left, logits_soft_cap)

    def run(self, q: torch.Tensor, paged_kv_cache, *args, q_scale: Optional[float] = None,
            k_scale: Optional[float] = None, v_scale: Optional[float] = None, out: Optional[torch.Tensor] = None,
            lse: Optional[torch.Tensor] = None, return_lse: bool = False, enable_pdl: Optional[bool] = None,
            window_left: Optional[int] = None, sinks=None, q_len_per_req: Optional[int] = None,
            skip_softmax_threshold_scale_factor=None, kv_cache_sf=None) -> torch.Tensor:
        if args or return_lse or sinks is not None or kv_cache_sf is not None or q_scale is not None:
            raise NotImplementedError("fake_flashinfer does not model lse, sinks, custom args or NVFP4")
        batch = self._paged_kv_last_page_len_buf.size(0)
        if q.size(0) != batch:  # q_len_per_req = q.size(0) // batch; the CUDA-core kernel takes 1
            raise ValueError(f"q implies q_len_per_req={q.size(0) // max(batch, 1)} for a batch of {batch}, "
                             "but the decode kernel only supports q_len_per_req=1.")
        return self._attend(q, paged_kv_cache, k_scale, v_scale, out)


class BatchPrefillWithPagedKVCacheWrapper(_Wrapper):
    def __init__(self, float_workspace_buffer: torch.Tensor, kv_layout: str = "NHD", use_cuda_graph: bool = False,
                 qo_indptr_buf: Optional[torch.Tensor] = None, paged_kv_indptr_buf: Optional[torch.Tensor] = None,
                 paged_kv_indices_buf: Optional[torch.Tensor] = None,
                 paged_kv_last_page_len_buf: Optional[torch.Tensor] = None, custom_mask_buf=None,
                 mask_indptr_buf=None, backend: str = "auto", jit_args=None, jit_kwargs=None,
                 variant_owns_mask: bool = False) -> None:
        super().__init__(float_workspace_buffer, kv_layout, use_cuda_graph)
        if jit_args is not None or variant_owns_mask or backend not in ("auto", "fa2", "fa3"):
            raise NotImplementedError("fake_flashinfer models the default prefill kernels only")
        self._fixed_batch_size = 0
        self._max_total_num_rows: Optional[int] = None
        if use_cuda_graph:
            for name, buf in (("qo_indptr_buf", qo_indptr_buf), ("paged_kv_indptr_buf", paged_kv_indptr_buf),
                              ("paged_kv_indices_buf", paged_kv_indices_buf),
                              ("paged_kv_last_page_len_buf", paged_kv_last_page_len_buf)):
                if not torch.is_tensor(buf):
                    raise ValueError(f"{name} should be a torch.Tensor in CUDA graph mode")
            self._fixed_batch_size = len(qo_indptr_buf) - 1
            if len(paged_kv_indptr_buf) != self._fixed_batch_size + 1:
                raise ValueError("The length of paged_kv_indptr_buf should be batch_size + 1.")
            if len(paged_kv_last_page_len_buf) != self._fixed_batch_size:
                raise ValueError("The length of paged_kv_last_page_len_buf should be batch_size.")
        self._qo_indptr_buf = qo_indptr_buf
        self._paged_kv_indptr_buf = paged_kv_indptr_buf
        self._paged_kv_indices_buf = paged_kv_indices_buf
        self._paged_kv_last_page_len_buf = paged_kv_last_page_len_buf

    def plan(self, qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads: int,
             num_kv_heads: int, head_dim_qk: int, page_size: int, head_dim_vo: Optional[int] = None,
             custom_mask=None, packed_custom_mask=None, causal: bool = False, pos_encoding_mode: str = "NONE",
             use_fp16_qk_reduction: bool = False, sm_scale: Optional[float] = None, window_left: int = -1,
             logits_soft_cap: Optional[float] = None, rope_scale=None, rope_theta=None,
             q_data_type="float16", kv_data_type=None, o_data_type=None, non_blocking: bool = True,
             prefix_len_ptr=None, token_pos_in_items_ptr=None, token_pos_in_items_len: int = 0,
             max_item_len_ptr=None, seq_lens=None, seq_lens_q=None, block_tables=None,
             max_token_per_sequence=None, max_sequence_kv=None, fixed_split_size=None,
             disable_split_kv: bool = False, uniform_q_len=None) -> None:
        if custom_mask is not None or packed_custom_mask is not None or prefix_len_ptr is not None \
                or block_tables is not None or seq_lens is not None or use_fp16_qk_reduction:
            raise NotImplementedError("fake_flashinfer models CSR paged prefill with a causal or no mask only")
        if head_dim_vo is not None and head_dim_vo != head_dim_qk:
            raise NotImplementedError("fake_flashinfer models head_dim_vo == head_dim_qk only")
        q_dt = _dtype(q_data_type)
        kv_dt = _dtype(kv_data_type) if kv_data_type is not None else q_dt
        o_dt = _dtype(o_data_type) if o_data_type is not None else q_dt
        batch_size = len(qo_indptr) - 1
        total_rows = int(qo_indptr.to("cpu")[-1])
        if self._use_cuda_graph:
            if self._max_total_num_rows is None:
                self._max_total_num_rows = total_rows
            elif total_rows > self._max_total_num_rows:
                raise ValueError(f"The total number of rows in qo_indptr {total_rows} in cuda graph mode cannot "
                                 f"exceed the number of rows set during initialization {self._max_total_num_rows}.")
            if batch_size != self._fixed_batch_size:
                raise ValueError(f"The batch size should be fixed during the lifecycle of the wrapper in cuda graph "
                                 f"mode, the runtime batch size {batch_size} mismatches the batch size "
                                 f"{self._fixed_batch_size}  set during initialization.")
            self._qo_indptr_buf.copy_(qo_indptr, non_blocking=non_blocking)
        else:
            self._qo_indptr_buf = qo_indptr.to(self.device, non_blocking=non_blocking)
        self._take_paged(paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, non_blocking)
        self._set_problem(num_qo_heads, num_kv_heads, head_dim_qk, page_size, q_dt, kv_dt, o_dt, sm_scale,
                          causal, pos_encoding_mode, window_left, logits_soft_cap)

    def run(self, q: torch.Tensor, paged_kv_cache, *args, q_scale=None, k_scale=None, v_scale=None,
            out: Optional[torch.Tensor] = None, lse: Optional[torch.Tensor] = None, return_lse: bool = False,
            lse_base: str = "log2", lse_layout: str = "NH", enable_pdl: Optional[bool] = None,
            window_left: Optional[int] = None, sinks=None, kv_cache_sf=None,
            skip_softmax_threshold_scale_factor=None, use_fp16_softmax=None, uses_spcompress=None) -> torch.Tensor:
        if args or return_lse or sinks is not None or kv_cache_sf is not None or q_scale is not None:
            raise NotImplementedError("fake_flashinfer does not model lse, sinks, custom args or NVFP4")
        return self._attend(q, paged_kv_cache, k_scale, v_scale, out)


def module() -> ModuleType:
    m = ModuleType("flashinfer")
    m.__version__ = "0.7.2.post1+fake"
    m.BatchDecodeWithPagedKVCacheWrapper = BatchDecodeWithPagedKVCacheWrapper
    m.BatchPrefillWithPagedKVCacheWrapper = BatchPrefillWithPagedKVCacheWrapper
    return m
