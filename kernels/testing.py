"""Test helpers for the kernels (used by tests/kernels and tests/gpu): a paged KV batch
laid out like the allocator would, with every unowned slot poisoned."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import torch

from .kv_store import quantize_fp8_ref


class PagedKV:
    """A request batch laid out in a paged pool the way the allocator would: each request
    owns whole pages, scattered over the pool in random order, rows of req_to_token are a random subset. Every slot no request owns,
    and every req_to_token entry past a request's length, points at NaN, so a kernel
    that reads outside a request's tokens produces NaN."""

    def __init__(self, seq_lens: Sequence[int], page_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: str, gen: torch.Generator, num_rows: Optional[int] = None):
        bs = len(seq_lens)
        ps = page_size
        pages_per_req = [-(-s // ps) for s in seq_lens]
        num_pages = sum(pages_per_req) + 3  # spare pages stay poisoned
        num_slots = (num_pages + 1) * ps  # page 0 reserved
        self.k_buffer = torch.full((num_slots, num_kv_heads, head_dim), float("nan"), dtype=dtype)
        self.v_buffer = torch.full((num_slots, num_kv_heads, head_dim), float("nan"), dtype=dtype)
        max_ctx = max(max(seq_lens, default=1), 1) + 5
        num_rows = num_rows or bs + 3
        poison_slot = num_slots - 1  # in a spare page, never owned
        self.req_to_token = torch.full((num_rows, max_ctx), poison_slot, dtype=torch.int32)
        self.req_pool_indices = torch.randperm(num_rows, generator=gen)[:bs].to(torch.int64)
        page_ids = (torch.randperm(num_pages, generator=gen) + 1).tolist()
        self.slots: List[torch.Tensor] = []
        cursor = 0
        for i, s in enumerate(seq_lens):
            pages = page_ids[cursor:cursor + pages_per_req[i]]
            cursor += pages_per_req[i]
            slots = torch.tensor([pages[j // ps] * ps + j % ps for j in range(s)], dtype=torch.int64)
            self.slots.append(slots)
            self.req_to_token[int(self.req_pool_indices[i]), :s] = slots.to(torch.int32)
            self.k_buffer[slots] = torch.randn(s, num_kv_heads, head_dim, generator=gen).to(dtype)
            self.v_buffer[slots] = torch.randn(s, num_kv_heads, head_dim, generator=gen).to(dtype)
        for name in ("k_buffer", "v_buffer", "req_to_token", "req_pool_indices"):
            setattr(self, name, getattr(self, name).to(device))
        self.seq_lens = torch.tensor(list(seq_lens), dtype=torch.int32, device=device)

    def to_fp8(self, k_scale: float, v_scale: float) -> "PagedKV":
        """The same batch in an FP8 pool, quantized as the store does (NaN poison stays NaN)."""
        self.k_buffer = quantize_fp8_ref(self.k_buffer, k_scale)
        self.v_buffer = quantize_fp8_ref(self.v_buffer, v_scale)
        return self


def randn(gen: torch.Generator, *shape, dtype=torch.float32, device="cpu", scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(device)


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def interpreter_bf16_round_to_nearest() -> bool:
    """Make the Triton CPU interpreter round fp32 -> bf16 to nearest even, as the GPU does.

    The interpreter (triton 3.x) truncates on `.to(tl.bfloat16)` unless a rounding mode is
    given, so under TRITON_INTERPRET=1 every bf16 rounding point is off by up to one ulp and
    a bit-exact bf16 check of a kernel is meaningless. This replaces only that cast, with
    torch's round-to-nearest-even. Returns whether it patched (False without the interpreter).
    """
    import os

    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    import numpy as np
    import triton.language as tl
    from triton.runtime import interpreter

    builder = interpreter.InterpreterBuilder
    if getattr(builder, "_sglserve_bf16_rne", False):
        return True
    cast = builder.cast_impl

    def cast_impl(self, src, dst_type):
        if src.dtype.scalar == tl.float32 and dst_type.scalar == tl.bfloat16:
            bf16 = torch.from_numpy(np.ascontiguousarray(src.data, dtype=np.float32)).to(torch.bfloat16)
            return interpreter.TensorHandle(bf16.view(torch.int16).numpy().view(np.uint16), tl.bfloat16)
        return cast(self, src, dst_type)

    builder.cast_impl = cast_impl
    builder._sglserve_bf16_rne = True
    return True


def specialization_key(args: Sequence, kwargs: dict) -> tuple:
    """What Triton keys a compiled variant on for one launch, by Triton's own specialization
    function: each tensor's dtype and 16-byte alignment, each int's type and whether it is 1 or
    a multiple of 16, floats by type; keyword arguments (constexprs, num_warps) by value. Two
    launches with equal keys run one compiled kernel; a new key compiles (on the GPU, seconds).
    Raises ImportError on a Triton without native_specialize_impl (before 3.4)."""
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import native_specialize_impl

    spec = tuple(native_specialize_impl(BaseBackend, a, False, True, True) for a in args)
    return spec + tuple(sorted((k, str(v)) for k, v in kwargs.items()))


class LaunchRecorder:
    """Stands in for a @triton.jit kernel (monkeypatch the kernel module's global): records each
    launch's grid and specialization_key, then launches the real kernel."""

    def __init__(self, kernel) -> None:
        self.kernel = kernel
        self.launches: List[tuple] = []  # (grid, key)

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.launches.append((tuple(grid), specialization_key(args, kwargs)))
            return launch(*args, **kwargs)

        return run

    def keys(self) -> set:
        return {key for _, key in self.launches}
