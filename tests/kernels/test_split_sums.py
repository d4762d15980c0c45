"""A split-K skinny GEMM that hands its partials on (numerics.SplitSums) to the fused residual-add
RMSNorm: the partials' total() is the reduce kernel's output bit for bit, and the norm kernels
(rmsnorm, rmsnorm_fp8) reading the partials give the bits they give reading that output, so
handing the sums on removes a launch a split GEMM and changes no value."""

from __future__ import annotations

import pytest
import torch

from sglserve.layers.layernorm import RMSNorm
from sglserve.layers.quantization.fp8_utils import quantize_per_channel
from sglserve_kernels.gemv import GemvConfig, skinny_gemm, skinny_gemm_fp8
from sglserve_kernels.layernorm import rmsnorm, rmsnorm_fp8
from sglserve_kernels.numerics import SplitSums
from sglserve_kernels.testing import randn

BF16 = torch.bfloat16
# The GEMMs' tensor-core paths on the CPU interpreter: fp32 io (its bf16 dot is not usable), as test_gemv.py
IO = BF16 if torch.cuda.is_available() else torch.float32

CONFIGS = {
    "fma_split2": GemvConfig(block_n=4, block_k=32, split_k=2, num_stages=1),
    "dot_split3": GemvConfig(block_n=16, block_k=32, split_k=3, use_dot=True),
    "fp8_dot_split2": GemvConfig(block_n=16, block_k=32, split_k=2, fp8_dot=True),
    "unsplit": GemvConfig(block_n=8, block_k=64, split_k=1, num_stages=1),
}


def _gemm(name, x, w, w_scale, bias, hand_on_sums):
    cfg = CONFIGS[name]
    if name.startswith("fp8"):
        return skinny_gemm_fp8(x, w, w_scale, None, None, "token", bias, cfg, hand_on_sums)
    return skinny_gemm(x, w.to(x.dtype) if w.dtype != x.dtype else w, bias, cfg, hand_on_sums)


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("m", [1, 2, 5])
def test_split_sums_total_is_the_reduce_kernels_output(m, name, with_bias, device, gen):
    n, k = 96, 192
    x = (randn(gen, m, k) * 2).to(device, IO)
    w, w_scale = quantize_per_channel(randn(gen, n, k) * 0.1)
    if not name.startswith("fp8"):
        w = randn(gen, n, k, scale=k ** -0.5)
    w, w_scale = w.to(device), w_scale.to(device)
    bias = randn(gen, n).to(device, IO) if with_bias else None
    want = _gemm(name, x, w, w_scale, bias, False)
    got = _gemm(name, x, w, w_scale, bias, True)
    if CONFIGS[name].split_k == 1:  # nothing to hand on: the GEMM's own output
        assert isinstance(got, torch.Tensor) and torch.equal(got, want)
        return
    assert isinstance(got, SplitSums) and got.partial.shape == (CONFIGS[name].split_k, m, n)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert torch.equal(got.total(), want)


def _sums(gen, splits, m, n, with_bias, device):
    partial = (randn(gen, splits, m, n) * 3).to(device)
    bias = randn(gen, n).to(device, BF16) if with_bias else None
    return SplitSums(partial, bias, BF16, torch.Size([m, n]))


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("splits,m,n", [(2, 1, 64), (4, 3, 96), (3, 5, 2048)])
def test_norm_reading_partials_equals_norm_reading_their_sum(splits, m, n, with_bias, device, gen):
    sums = _sums(gen, splits, m, n, with_bias, device)
    w = (1 + 0.5 * randn(gen, n)).to(device, BF16)
    r = randn(gen, m, n).to(device, BF16)
    want_out, want_res = rmsnorm(sums.total(), w, 1e-5, r.clone())
    got_out, got_res = rmsnorm(sums, w, 1e-5, r.clone())
    assert got_out.dtype == BF16 and torch.equal(got_res, want_res) and torch.equal(got_out, want_out)
    for static in (None, torch.tensor([0.02], device=device)):
        want_rows, want_res = rmsnorm_fp8(sums.total(), w, 1e-5, r.clone(), static)
        got_rows, got_res = rmsnorm_fp8(sums, w, 1e-5, r.clone(), static)
        assert torch.equal(got_res, want_res) and torch.equal(got_rows.scale, want_rows.scale)
        assert got_rows.dtype == BF16 and torch.equal(got_rows.q.view(torch.uint8), want_rows.q.view(torch.uint8))


def test_partials_need_the_residual_add(device, gen):
    sums = _sums(gen, 2, 1, 64, False, device)
    with pytest.raises(ValueError, match="residual"):
        rmsnorm(sums, torch.ones(64, device=device, dtype=BF16), 1e-5)


def test_rmsnorm_layer_takes_partials_on_every_path(device, gen):
    """The layer's torch path (a CUDA process without the norm kernel) sums them first: the same
    values as the kernel path, and as the layer given the reduced output."""
    sums = _sums(gen, 3, 2, 128, True, device)
    norm = RMSNorm(128, eps=1e-5).to(device, BF16)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * randn(gen, 128))
        r = randn(gen, 2, 128).to(device, BF16)
        want_out, want_res = norm.forward_native(sums.total(), r.clone())
        got_out, got_res = norm.forward_native(sums, r.clone())
        assert torch.equal(got_out, want_out) and torch.equal(got_res, want_res)
        kernel_out, kernel_res = norm.forward_cuda(rmsnorm, sums, r.clone())
        assert torch.equal(kernel_res, want_res)
        torch.testing.assert_close(kernel_out, want_out, atol=2e-2, rtol=2e-2)  # kernel vs torch: test_small_kernels
