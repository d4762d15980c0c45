"""Programmatic dependent launch (kernels/pdl.py): off where it cannot run, and on a Hopper GPU a
chain of the decode step's kernels captured in a CUDA graph gives the same bits with and without
it (each kernel must wait for the one before it before reading its output or writing)."""

from __future__ import annotations

import pytest
import torch

from sglserve_kernels.activation import silu_and_mul
from sglserve_kernels.gemv import GemvConfig, skinny_gemm, skinny_gemm_fp8
from sglserve_kernels.layernorm import fused_add_rmsnorm
from sglserve_kernels.pdl import PDL_ENV, pdl_args, pdl_enabled
from sglserve.layers.quantization.fp8_utils import quantize_per_channel
from sglserve_kernels.testing import randn


def test_off_on_the_cpu_and_when_disabled(monkeypatch):
    assert pdl_args(torch.zeros(1)) == {"PDL": False}
    if torch.cuda.is_available():
        monkeypatch.setenv(PDL_ENV, "0")
        assert not pdl_enabled(torch.zeros(1, device="cuda"))


def _chain(x, residual, norm_w, w_up, s_up, w_down, s_down, w_o):
    """norm -> FP8 GEMM (FMA path, split 2) -> SiLU-mul -> FP8 GEMM (fp8_dot, split 3) -> bf16 GEMM."""
    h, residual = fused_add_rmsnorm(x, residual, norm_w, 1e-6)
    up = skinny_gemm_fp8(h, w_up, s_up, None, None, "token", None, GemvConfig(8, 512, 2, 4, 1, False))
    act = silu_and_mul(up)
    down = skinny_gemm_fp8(act, w_down, s_down, None, None, "token", None,
                           GemvConfig(64, 256, 3, 4, 3, False, fp8_dot=True))
    return skinny_gemm(down, w_o, None, GemvConfig(16, 128, 3, 4, 2, True)), residual


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (9, 0),
                    reason="needs a Hopper GPU")
@pytest.mark.parametrize("m", [1, 2, 8])
def test_graph_chain_same_bits_with_and_without(m, monkeypatch):
    gen = torch.Generator().manual_seed(m)
    d, inter = 1024, 2816
    norm_w = randn(gen, d, dtype=torch.bfloat16, device="cuda")
    w_up, s_up = (t.cuda() for t in quantize_per_channel(randn(gen, 2 * inter, d, scale=d ** -0.5)))
    w_down, s_down = (t.cuda() for t in quantize_per_channel(randn(gen, d, inter, scale=inter ** -0.5)))
    w_o = randn(gen, d, d, dtype=torch.bfloat16, device="cuda", scale=d ** -0.5)
    x0 = randn(gen, m, d, dtype=torch.bfloat16, device="cuda")
    r0 = randn(gen, m, d, dtype=torch.bfloat16, device="cuda")

    monkeypatch.setenv(PDL_ENV, "0")
    expect, expect_r = _chain(x0.clone(), r0.clone(), norm_w, w_up, s_up, w_down, s_down, w_o)

    monkeypatch.setenv(PDL_ENV, "1")
    assert pdl_enabled(x0)
    x, r = x0.clone(), r0.clone()
    _chain(x.clone(), r.clone(), norm_w, w_up, s_up, w_down, s_down, w_o)  # compile outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out, out_r = _chain(x, r, norm_w, w_up, s_up, w_down, s_down, w_o)
    for _ in range(20):  # replays back to back: a kernel reading before its producer finished would show
        x.copy_(x0)
        r.copy_(r0)
        graph.replay()
        torch.cuda.synchronize()
        assert torch.equal(out, expect) and torch.equal(out_r, expect_r)
