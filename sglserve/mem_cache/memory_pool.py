"""Paged KV memory: request rows -> KV slots, the per-layer K/V buffers, and a page allocator.

Slot s lives in page s // page_size. Page 0 is reserved: padded entries (e.g. CUDA graph
batches) write there, so it is never handed out.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from sglserve_kernels.numerics import exact_div


COLUMN_ALIGN = 16  # int64 elements: 128 bytes, more than any alignment Triton specializes on


def aligned_len(n: int) -> int:
    """n rounded up to COLUMN_ALIGN: the stride of a packed int column, so that every column of a
    step's one host-to-device copy starts aligned whatever its length (Triton specializes kernels
    on pointer alignment; an unaligned view would compile a new variant mid-serving)."""
    return -(-n // COLUMN_ALIGN) * COLUMN_ALIGN


def to_device_async(t: torch.Tensor, device: Union[str, torch.device]) -> torch.Tensor:
    """A host tensor on `device` without waiting for the device: a pageable copy may wait for
    the stream to drain (all queued forwards), a pinned one is only queued."""
    if torch.device(device).type == "cpu":
        return t
    return t.pin_memory().to(device, non_blocking=True)


class ReqToTokenPool:
    """Row r, column p -> KV slot of token p of the request that holds row r.

    The table lives on the device (attention reads it) and, on CUDA, also on the host: the
    scheduler's own reads (the radix cache's slots, frees) come from the host copy, so no
    bookkeeping waits for the forwards in flight."""

    def __init__(self, size: int, max_context_len: int, device: Union[str, torch.device]) -> None:
        self.size = size
        self.max_context_len = max_context_len
        self.device = device
        self.req_to_token = torch.zeros((size, max_context_len), dtype=torch.int32, device=device)
        on_cpu = torch.device(device).type == "cpu"
        self.host = self.req_to_token if on_cpu else torch.zeros((size, max_context_len), dtype=torch.int32)
        self.free_slots: List[int] = list(range(size))
        self._free_set = set(self.free_slots)

    def write(self, rows: torch.Tensor, cols: torch.Tensor, slots: torch.Tensor) -> None:
        """table[rows[i], cols[i]] = slots[i] on the host and (queued) on the device; int64 host tensors.

        The host write goes through numpy: torch's index_put runs on its thread pool above 32k
        elements (a prefill step's), which cost 8 ms of CPU against numpy's 0.1 ms on a busy host."""
        self.host.numpy().reshape(-1)[(rows * self.max_context_len + cols).numpy()] = slots.numpy()  # a view
        if self.host is not self.req_to_token:
            dev = to_device_async(torch.stack([rows, cols, slots.to(torch.int64)]), self.device)
            self.req_to_token[dev[0], dev[1]] = dev[2].to(torch.int32)

    def write_row(self, row: int, start: int, slots: torch.Tensor) -> None:
        """table[row, start:start + len(slots)] = slots (a host tensor)."""
        end = start + len(slots)
        self.host[row, start:end] = slots.to(torch.int32)
        if self.host is not self.req_to_token:
            self.req_to_token[row, start:end] = to_device_async(slots.to(torch.int32), self.device)

    def available_size(self) -> int:
        return len(self.free_slots)

    def alloc(self, need_size: int = 1) -> Optional[List[int]]:
        if need_size > len(self.free_slots):
            return None
        out, self.free_slots = self.free_slots[:need_size], self.free_slots[need_size:]
        self._free_set.difference_update(out)
        return out

    def free(self, idx: Union[int, Sequence[int]]) -> None:
        """Return rows; a row freed twice would later be handed to two requests, so it raises."""
        rows = [int(i) for i in idx] if isinstance(idx, (list, tuple, range)) else [int(idx)]
        for i, row in enumerate(rows):
            if not 0 <= row < self.size or row in self._free_set or row in rows[:i]:
                raise RuntimeError(f"double free or invalid req_to_token row {row} (rows 0..{self.size - 1})")
        self._free_set.update(rows)
        self.free_slots.extend(rows)

    def clear(self) -> None:
        self.free_slots = list(range(self.size))
        self._free_set = set(self.free_slots)


FP8_KV_DTYPE = torch.float8_e4m3fn
FP8_KV_MAX = torch.finfo(FP8_KV_DTYPE).max


class MHATokenToKVPool:
    """K and V of every layer: [num_slots, num_kv_heads, head_dim] each, page 0 reserved.

    In FP8 (--kv-cache-dtype fp8_e4m3) a slot of layer l holds k / k_scale[l] (fp32, saturated
    to +-448, rounded to nearest E4M3) and reads back as stored * k_scale[l]; v likewise. As
    in SGLang, the scales are per layer and 1.0 unless set (set_kv_scales: a checkpoint's
    calibrated k/v scales; none is read from checkpoints yet). The Triton kernels
    (sglserve_kernels.kv_store / attn_decode / attn_extend) store and read the same bytes.
    """

    def __init__(
        self,
        size: int,
        page_size: int,
        dtype: torch.dtype,
        head_num: int,
        head_dim: int,
        layer_num: int,
        device: Union[str, torch.device],
        k_scale: Union[float, Sequence[float]] = 1.0,
        v_scale: Union[float, Sequence[float]] = 1.0,
    ) -> None:
        self.size = size
        self.page_size = page_size
        self.dtype = dtype
        self.head_num = head_num
        self.head_dim = head_dim
        self.layer_num = layer_num
        self.device = device
        self.is_fp8 = dtype == FP8_KV_DTYPE
        self.k_scales = self._per_layer(k_scale, "k_scale")
        self.v_scales = self._per_layer(v_scale, "v_scale")
        shape = (size + page_size, head_num, head_dim)
        # Only slots a request owns (up to its length) and the reserved page 0 (padding rows) are
        # ever read, so the rest stays uninitialised: no fill pass at start-up, and on a CPU the OS
        # commits the pool's memory only as requests use it (a 6.5 GB pool took 6 s to zero).
        self.k_buffer = [self._new_buffer(shape) for _ in range(layer_num)]
        self.v_buffer = [self._new_buffer(shape) for _ in range(layer_num)]

    def _per_layer(self, scale: Union[float, Sequence[float]], name: str) -> List[float]:
        scales = [float(scale)] * self.layer_num if isinstance(scale, (int, float)) else [float(x) for x in scale]
        if len(scales) != self.layer_num or not all(0 < x < float("inf") for x in scales):
            raise ValueError(f"{name} must be one positive finite scale or one per layer ({self.layer_num}), got {scale}")
        return scales

    def set_kv_scales(self, layer_id: int, k_scale: float, v_scale: float) -> None:
        """A layer's FP8 scales (e.g. a checkpoint's calibrated ones); set before anything is stored."""
        for name, x in (("k_scale", k_scale), ("v_scale", v_scale)):
            if not 0 < float(x) < float("inf"):
                raise ValueError(f"layer {layer_id}: {name} must be positive and finite, got {x}")
        self.k_scales[layer_id], self.v_scales[layer_id] = float(k_scale), float(v_scale)

    def kv_scales(self, layer_id: int):
        """(k_scale, v_scale) of a layer: what an FP8 store divides by and a read multiplies by."""
        return self.k_scales[layer_id], self.v_scales[layer_id]

    def _new_buffer(self, shape) -> torch.Tensor:
        buf = torch.empty(shape, dtype=self.dtype, device=self.device)
        buf[: self.page_size].zero_()
        return buf

    @staticmethod
    def bytes_per_token(head_num: int, head_dim: int, layer_num: int, dtype: torch.dtype) -> int:
        return 2 * head_num * head_dim * layer_num * torch.tensor([], dtype=dtype).element_size()

    def get_key_buffer(self, layer_id: int) -> torch.Tensor:
        return self.k_buffer[layer_id]

    def get_value_buffer(self, layer_id: int) -> torch.Tensor:
        return self.v_buffer[layer_id]

    def get_kv_buffer(self, layer_id: int):
        return self.k_buffer[layer_id], self.v_buffer[layer_id]

    def set_kv_buffer(self, layer_id: int, loc: torch.Tensor, cache_k: torch.Tensor, cache_v: torch.Tensor) -> None:
        k = cache_k.view(-1, self.head_num, self.head_dim)
        v = cache_v.view(-1, self.head_num, self.head_dim)
        self.k_buffer[layer_id][loc] = self._store(k, self.k_scales[layer_id])
        self.v_buffer[layer_id][loc] = self._store(v, self.v_scales[layer_id])

    def _store(self, x: torch.Tensor, scale: float) -> torch.Tensor:
        if not self.is_fp8:
            return x.to(self.dtype)
        return exact_div(x.float(), scale).clamp_(-FP8_KV_MAX, FP8_KV_MAX).to(self.dtype)

    def read_kv(self, layer_id: int, slots: torch.Tensor, dtype: torch.dtype):
        """(K, V) of `slots` (any index shape) in `dtype`, dequantized when the pool is FP8."""
        k = self.k_buffer[layer_id][slots].to(dtype)
        v = self.v_buffer[layer_id][slots].to(dtype)
        if self.is_fp8:
            ks, vs = self.kv_scales(layer_id)
            k, v = (k * ks if ks != 1.0 else k), (v * vs if vs != 1.0 else v)
        return k, v


class PagedTokenToKVPoolAllocator:
    """Hands out KV slots page by page; sizes are counted in tokens.

    A request's tokens fill its last page before a new page is taken, so every page
    belongs to exactly one owner (a request or a radix node) and freeing is per page.
    """

    def __init__(self, size: int, page_size: int, device: Union[str, torch.device]) -> None:
        self.page_size = page_size
        self.num_pages = size // page_size
        self.size = self.num_pages * page_size
        self.device = device
        self.clear()

    def clear(self) -> None:
        # A stack in a numpy array: pages are taken from and returned to the end, so alloc/free
        # cost O(pages moved), not O(pool), and move as arrays, not as Python ints (a prefill
        # step takes 32k pages; a finished request of 512 tokens frees 512).
        self._stack = np.arange(self.num_pages, 0, -1, dtype=np.int64)
        self._top = self.num_pages  # the free pages are _stack[:_top]
        self._is_free = np.ones(self.num_pages + 1, dtype=bool)  # by page id; page 0 is never handed out
        self._is_free[0] = False

    @property
    def free_pages(self) -> List[int]:
        """The free pages, the next one handed out last (for tests)."""
        return self._stack[: self._top].tolist()

    def free_page_ids(self) -> np.ndarray:
        """The free pages as a read-only int64 view of the stack: the idle check reads millions of
        them (a GPU pool), which as a Python list cost ~0.2 s while the next request waited."""
        view = self._stack[: self._top]
        view.flags.writeable = False
        return view

    def available_size(self) -> int:
        return self._top * self.page_size

    def _take_pages(self, n: int) -> np.ndarray:
        out = self._stack[self._top - n: self._top][::-1].copy()
        self._top -= n
        self._is_free[out] = False
        return out

    def alloc(self, need_size: int) -> Optional[torch.Tensor]:
        """`need_size` slots starting on fresh pages (one owner)."""
        pages_needed = -(-need_size // self.page_size)
        if pages_needed > self._top:
            return None
        pages = torch.from_numpy(self._take_pages(pages_needed))
        if self.page_size == 1:
            return pages.to(self.device)
        slots = (pages[:, None] * self.page_size + torch.arange(self.page_size)[None, :]).flatten()
        return slots[:need_size].to(self.device)

    def alloc_extend(
        self, prefix_lens: Sequence[int], seq_lens: Sequence[int], last_locs: Sequence[int]
    ) -> Optional[torch.Tensor]:
        """Slots for positions prefix_len..seq_len-1 of each request, concatenated.

        `last_locs[i]` is the slot of position prefix_len-1 (ignored when prefix_len is
        page-aligned); the partial last page is filled first.
        """
        ps = self.page_size
        p = np.asarray(prefix_lens, dtype=np.int64)
        s = np.asarray(seq_lens, dtype=np.int64)
        pages_per_req = -(-s // ps) - -(-p // ps)
        pages_needed = int(pages_per_req.sum())
        if pages_needed > self._top:
            return None
        new_pages = self._take_pages(pages_needed)
        if ps == 1:  # a page per token: the new pages are the slots, request after request
            return torch.from_numpy(new_pages).to(self.device)
        # In numpy, not a loop per token (32k tokens a prefill step took 15 ms in Python): output
        # position k of request r is its partial page's next slot while k < fill[r], then the
        # (k - fill[r])-th slot of its run of new pages.
        fill = np.where(p % ps != 0, np.minimum(s, (p // ps + 1) * ps) - p, 0)
        lens = s - p
        req = np.repeat(np.arange(len(p)), lens)
        k = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
        page_start = np.cumsum(pages_per_req) - pages_per_req  # each request's first new page
        j = k - fill[req]  # offset into the request's new pages (negative: its partial page)
        last = np.asarray(last_locs, dtype=np.int64)
        in_new = np.maximum(j, 0)
        page = new_pages[np.minimum(page_start[req] + in_new // ps, pages_needed - 1)] if pages_needed else 0
        out = np.where(j < 0, last[req] + 1 + k, page * ps + in_new % ps)
        return torch.from_numpy(out).to(self.device)

    def free(self, slots: torch.Tensor) -> None:
        if slots.numel() == 0:
            return
        pages = np.unique(slots.to("cpu", torch.int64).numpy() // self.page_size)
        # Out-of-range pages (e.g. a stale -1 slot) would otherwise be handed out later.
        bad = (pages < 1) | (pages > self.num_pages)
        bad[~bad] = self._is_free[pages[~bad]]
        if bad.any():
            raise RuntimeError(f"double free or invalid page {int(pages[bad][0])} freed (pages 1..{self.num_pages})")
        self._is_free[pages] = True
        self._stack[self._top: self._top + len(pages)] = pages
        self._top += len(pages)
