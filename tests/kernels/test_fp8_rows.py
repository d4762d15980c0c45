"""The W8A8 activation quantizer (kernels/fp8_rows.py) vs its torch reference, bit for bit: per
token, per tensor and static scales, rows longer than one block, odd K, an all-zero row, values
across E4M3's normal, subnormal and saturating ranges."""

from __future__ import annotations

import pytest
import torch

from sglserve.layers.quantization.fp8_utils import fake_quantize_activation
from sglserve_kernels.fp8_rows import quantize_rows
from sglserve_kernels.numerics import quantize_rows_ref
from sglserve_kernels.testing import randn

IO_DTYPE = torch.bfloat16


@pytest.mark.parametrize("strategy", ["token", "tensor", "static"])
@pytest.mark.parametrize("m,k", [(1, 64), (3, 320), (17, 2500), (40, 4096)])
def test_quantize_rows_is_the_reference(strategy, m, k, device, gen):
    spread = torch.exp(torch.empty(m, k).uniform_(-12, 3, generator=gen))
    x = (randn(gen, m, k) * spread).to(device, IO_DTYPE)
    x[-1] = 0  # an all-zero row keeps the 1e-12 scale
    static = torch.tensor([0.004], device=device) if strategy == "static" else None  # saturates the largest
    act = "tensor" if strategy == "static" else strategy
    q, s = quantize_rows(x, static, act)
    q_ref, s_ref = quantize_rows_ref(x, static, act)
    assert q.dtype == torch.float8_e4m3fn and q.shape == (m, k) and s.shape == (m, 1) and s.dtype == torch.float32
    assert torch.equal(s, s_ref)
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))
    assert not torch.isnan(q.float()).any()
    # scaled back, the CPU serving path's fake quantization
    back = (q.float() * s).to(IO_DTYPE)
    torch.testing.assert_close(back, fake_quantize_activation(x, act, static), atol=0, rtol=0)


def test_quantize_rows_refuses_group_and_non_2d(device):
    x = torch.zeros(2, 64, dtype=IO_DTYPE, device=device)
    with pytest.raises(ValueError, match="strategy"):
        quantize_rows(x, None, "group")
    with pytest.raises(ValueError, match=r"\[M, K\]"):
        quantize_rows(x[None], None, "token")


def test_quantize_rows_of_zero_rows(device):
    q, s = quantize_rows(torch.zeros(0, 64, dtype=IO_DTYPE, device=device), None, "token")
    assert q.shape == (0, 64) and s.shape == (0, 1)
