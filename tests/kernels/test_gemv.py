"""Skinny GEMM (M <= 16) vs its torch references: bf16/fp32 weights, FP8 weights with per-channel
and block scales, weight-only and W8A8 activations, split-K, odd N/K, bias; the runtime dispatch
(table lookup) and the FP8 hook against the CPU path's numerics (Fp8LinearMethod)."""

from __future__ import annotations

import pytest
import torch

from sglserve.layers.quantization.fp8_utils import (
    dequantize,
    fake_quantize_activation,
    quantize_per_block,
    quantize_per_channel,
)
from sglserve_kernels.fp8_rows import ACT_GROUP, ACT_STATIC, ACT_TENSOR, ACT_TOKEN, quantize_activation
from sglserve_kernels.gemv import (
    GemvConfig,
    skinny_gemm,
    skinny_gemm_fp8,
    skinny_gemm_fp8_ref,
    skinny_gemm_ref,
)
from sglserve_kernels.testing import randn

HAS_CUDA = torch.cuda.is_available()
gpu = [pytest.mark.gpu, pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")]
# On the CPU interpreter fp32 io (exact products); on the GPU bf16, what the server runs.
IO_DTYPE = torch.bfloat16 if HAS_CUDA else torch.float32
TOL = {torch.float32: dict(atol=1e-4, rtol=1e-4), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}

# (M, N, K): odd N and K, K not a multiple of BLOCK_K, M across 1..16
SHAPES = [(1, 40, 96), (2, 33, 200), (3, 64, 128), (7, 17, 130), (16, 48, 256)]
CONFIGS = [GemvConfig(block_n=16, block_k=32, split_k=1, num_warps=2, num_stages=1),
           GemvConfig(block_n=4, block_k=64, split_k=2, num_warps=4, num_stages=1),  # FMA path, < 16 columns
           GemvConfig(block_n=32, block_k=64, split_k=3, num_warps=4, num_stages=2, use_dot=True)]
if HAS_CUDA:  # the real shapes too
    SHAPES += [(1, 6144, 4096), (4, 4096, 14336), (16, 2560, 8192)]
    CONFIGS += [GemvConfig(8, 512, 1, 4, 1, False), GemvConfig(64, 128, 2, 4, 3, True)]


@pytest.mark.parametrize("cfg", CONFIGS, ids=str)
@pytest.mark.parametrize("m,n,k", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_skinny_gemm(m, n, k, cfg, with_bias, device, gen):
    x = randn(gen, m, k, dtype=IO_DTYPE, device=device)
    w = randn(gen, n, k, dtype=IO_DTYPE, device=device, scale=k ** -0.5)
    bias = randn(gen, n, dtype=IO_DTYPE, device=device) if with_bias else None
    torch.testing.assert_close(skinny_gemm(x, w, bias, cfg), skinny_gemm_ref(x, w, bias), **TOL[IO_DTYPE])


def _fp8_case(gen, m, n, k, block, device):
    x = randn(gen, m, k, dtype=IO_DTYPE, device=device) * (torch.rand(m, 1, generator=gen) * 4).to(device, IO_DTYPE)
    w = randn(gen, n, k, scale=k ** -0.5)
    q, s = quantize_per_block(w, block) if block else quantize_per_channel(w)
    return x, q.to(device), s.to(device)


FP8_CASES = [  # (activation strategy, static input scale, weight block)
    (None, False, None), ("token", False, None), ("tensor", False, None), ("tensor", True, None),
    (None, False, (32, 64)), ("token", False, (32, 64)), ("group", False, (32, 64)),
]


@pytest.mark.parametrize("act,static,block", FP8_CASES, ids=str)
@pytest.mark.parametrize("m,n,k", [(1, 40, 128), (2, 33, 192), (5, 64, 256), (16, 50, 320)])
@pytest.mark.parametrize("split_k,use_dot", [(1, False), (2, True)])
def test_skinny_gemm_fp8(m, n, k, act, static, block, split_k, use_dot, device, gen):
    x, q, s = _fp8_case(gen, m, n, k, block, device)
    input_scale = torch.tensor([0.02], device=device) if static else None
    bias = randn(gen, n, dtype=IO_DTYPE, device=device)
    cfg = GemvConfig(block_n=16, block_k=64 if block else 32, split_k=split_k, num_warps=2, num_stages=1,
                     use_dot=use_dot)
    y = skinny_gemm_fp8(x, q, s, block, input_scale, act, bias, cfg)
    ref = skinny_gemm_fp8_ref(x, q, s, block, input_scale, act, bias)
    torch.testing.assert_close(y, ref, **TOL[IO_DTYPE])
    # the CPU serving path (Fp8LinearMethod.apply without a kernel), up to its bf16 roundings
    xc = x if act is None else fake_quantize_activation(x, act, input_scale, block[1] if block else 128)
    cpu = torch.nn.functional.linear(xc, dequantize(q, s, block, x.dtype), bias)
    torch.testing.assert_close(y.float(), cpu.float(), atol=5e-2, rtol=5e-2)


class _LaunchSpy:
    """Counts launches of a Triton kernel (`kernel[grid](...)`) with FP8_DOT=True and passes them on."""

    def __init__(self, kernel):
        self.kernel, self.launches = kernel, 0

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches += bool(kwargs.get("FP8_DOT"))
            return self.kernel[grid](*args, **kwargs)

        return launch


@pytest.mark.parametrize("act,static", [("token", False), ("tensor", False), ("tensor", True)], ids=str)
@pytest.mark.parametrize("m,n,k", [(1, 40, 128), (2, 33, 192), (5, 64, 256), (16, 50, 320)])
@pytest.mark.parametrize("split_k", [1, 2])
def test_fp8_dot_path(m, n, k, act, static, split_k, device, gen, monkeypatch):
    """GemvConfig(fp8_dot=True): W8A8 per-channel with x in FP8 too, on the tensor cores. It runs
    the FP8_DOT kernel (not the dequantizing path) and matches the float8 reference."""
    from sglserve_kernels import gemv

    spy = _LaunchSpy(gemv._gemv_kernel)
    monkeypatch.setattr(gemv, "_gemv_kernel", spy)
    x, q, s = _fp8_case(gen, m, n, k, None, device)
    input_scale = torch.tensor([0.02], device=device) if static else None
    bias = randn(gen, n, dtype=IO_DTYPE, device=device)
    cfg = GemvConfig(block_n=16, block_k=32, split_k=split_k, num_warps=4, num_stages=1, fp8_dot=True)
    y = skinny_gemm_fp8(x, q, s, None, input_scale, act, bias, cfg)
    assert spy.launches == 1
    torch.testing.assert_close(y, skinny_gemm_fp8_ref(x, q, s, None, input_scale, act, bias), **TOL[IO_DTYPE])


@pytest.mark.parametrize("act,static", [("token", False), ("tensor", False), ("tensor", True)], ids=str)
@pytest.mark.parametrize("m,split_k", [(1, 2), (3, 1), (16, 3)])
def test_fp8_dot_quantizes_x_like_quantize_rows(m, split_k, act, static, device, gen):
    """The FP8_DOT path multiplies quantize_rows' FP8 x and row scales: with one-hot W rows every
    output is one product, q[m, j] * scale[m], exact in fp32, so it must be quantize_rows' to the
    bit. Rows of different ranges (the per-tensor amax is the largest row's), an all-zero row, K
    across several tiles and splits."""
    from sglserve_kernels.fp8_rows import quantize_rows

    n, k = 48, 320
    x = randn(gen, m, k, dtype=IO_DTYPE, device=device) * torch.logspace(-3, 2, m).to(device, IO_DTYPE)[:, None]
    x[m // 2] = 0
    cols = torch.randperm(k, generator=gen)[:n]
    w = torch.zeros(n, k)
    w[torch.arange(n), cols] = 1.0
    input_scale = torch.tensor([0.02], device=device) if static else None
    cfg = GemvConfig(block_n=16, block_k=32, split_k=split_k, num_warps=4, num_stages=1, fp8_dot=True)
    y = skinny_gemm_fp8(x, w.to(torch.float8_e4m3fn).to(device), torch.ones(n, 1, device=device), None,
                        input_scale, act, None, cfg)
    q, scale = quantize_rows(x, input_scale, act)
    expect = (q.float()[:, cols.to(device)] * scale).to(x.dtype)
    assert torch.equal(y, expect)


@pytest.mark.parametrize("act,block", [(None, None), ("token", (32, 64)), ("group", (32, 64))], ids=str)
def test_fp8_dot_only_where_it_applies(act, block, device, gen, monkeypatch):
    """Weight-only FP8 and block-scaled weights have no per-row FP8 x: fp8_dot configs run the usual path."""
    from sglserve_kernels import gemv

    spy = _LaunchSpy(gemv._gemv_kernel)
    monkeypatch.setattr(gemv, "_gemv_kernel", spy)
    x, q, s = _fp8_case(gen, 2, 40, 128, block, device)
    cfg = GemvConfig(block_n=16, block_k=32, split_k=1, num_warps=2, num_stages=1, fp8_dot=True)
    y = skinny_gemm_fp8(x, q, s, block, None, act, None, cfg)
    assert spy.launches == 0
    torch.testing.assert_close(y, skinny_gemm_fp8_ref(x, q, s, block, None, act, None), **TOL[IO_DTYPE])


@pytest.mark.parametrize("strategy", ["token", "tensor", "static", "group"])
@pytest.mark.parametrize("m,k", [(1, 4096), (3, 320), (16, 9000)])
def test_activation_prequant_is_the_cpu_path(strategy, m, k, device, gen):
    """The pre-kernel's output is bit for bit `fake_quantize_activation` (the CPU serving path),
    in the io dtype, including rows longer than one pre-kernel tile and an all-zero row."""
    if strategy == "group" and k % 64:
        k = 384
    x = randn(gen, m, k, dtype=IO_DTYPE, device=device) * (torch.rand(m, 1, generator=gen) * 8).to(device, IO_DTYPE)
    x[-1, : k // 2] = 0  # the group of zeros keeps the 1e-12 scale
    if m > 1:
        x[0] = 0
    static = torch.tensor([0.03], device=device) if strategy == "static" else None
    mode = {"token": ACT_TOKEN, "tensor": ACT_TENSOR, "static": ACT_STATIC, "group": ACT_GROUP}[strategy]
    got = quantize_activation(x, mode, static, 64 if strategy == "group" else None)
    want = fake_quantize_activation(x, "tensor" if strategy == "static" else strategy, static, 64)
    assert got.dtype == x.dtype
    torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_fp8_activation_rounding_is_torch_cast(device, gen):
    """The in-kernel E4M3 rounding equals torch's cast for every binade, ties, subnormals and
    saturation: with W = identity and a unit per-tensor static scale, y is x rounded to FP8."""
    k = 64
    vals = torch.cat([torch.linspace(-500, 500, 32 * k // 2), torch.logspace(-12, 2.7, 32 * k // 2)])
    x = vals[torch.randperm(vals.numel(), generator=gen)].reshape(32, k)
    x[0, :8] = torch.tensor([52.0, 50.0, -50.0, 125.0, 2.0 ** -10, 3 * 2.0 ** -11, 449.0, -1e9])
    eye = torch.eye(k).to(torch.float8_e4m3fn).to(device)
    one = torch.ones(k, 1, device=device)
    for rows in x.split(16):
        rows = rows.to(device)
        y = skinny_gemm_fp8(rows, eye, one, None, torch.ones(1, device=device), "tensor",
                            config=GemvConfig(16, 64, 1, 2, 1, True))
        want = rows.float().clamp(-448, 448).to(torch.float8_e4m3fn).float()
        torch.testing.assert_close(y.float(), want, atol=0, rtol=0)


def test_bad_input_is_a_clear_error(device, gen):
    x = randn(gen, 17, 32, device=device)
    w = randn(gen, 8, 32, device=device)
    with pytest.raises(ValueError, match="at most 16"):
        skinny_gemm(x, w)
    with pytest.raises(ValueError, match="does not fit"):
        skinny_gemm(x[:2], randn(gen, 8, 31, device=device))
    with pytest.raises(ValueError, match="power of two"):
        skinny_gemm(x[:2], w, config=GemvConfig(block_n=24))
    q, s = quantize_per_block(w.cpu(), (16, 16))
    with pytest.raises(ValueError, match="block_k"):
        skinny_gemm_fp8(x[:2], q.to(device), s.to(device), (16, 16), config=GemvConfig(block_k=32))


def test_empty_and_3d_input(device, gen):
    w = randn(gen, 24, 40, device=device)
    assert skinny_gemm(randn(gen, 0, 40, device=device), w).shape == (0, 24)
    x = randn(gen, 2, 3, 40, device=device)
    torch.testing.assert_close(skinny_gemm(x, w, config=CONFIGS[0]), skinny_gemm_ref(x, w), **TOL[torch.float32])
