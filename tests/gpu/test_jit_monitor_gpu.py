"""The Triton compile monitor on the real compiler: a variant compiled after install is counted
once, and launching it again compiles nothing."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():  # skip before importing triton.language
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

import triton
import triton.language as tl

pytestmark = pytest.mark.gpu


@triton.jit
def _add_one(x_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=mask) + 1, mask=mask)


def test_monitor_counts_each_new_variant_once(monkeypatch):
    from sglserve.utils.jit_monitor import install_jit_monitor

    monkeypatch.setattr(triton.knobs.runtime, "jit_cache_hook", None)
    monkeypatch.setattr(triton.knobs.runtime, "jit_post_compile_hook", None)
    m = install_jit_monitor()
    assert m is not None
    x = torch.zeros(100, device="cuda")
    _add_one[(1,)](x, 100, BLOCK=128)
    torch.cuda.synchronize()
    assert m.compiles == 1
    _add_one[(1,)](x, 99, BLOCK=128)  # 99 and 100: neither 1 nor a multiple of 16, the same variant
    _add_one[(1,)](x, 100, BLOCK=128)
    assert m.compiles == 1
    _add_one[(1,)](x, 96, BLOCK=128)  # a multiple of 16: a new specialization
    torch.cuda.synchronize()
    assert m.compiles == 2
    assert x[:96].eq(4).all() and x[96:99].eq(3).all() and x[99].eq(2)
