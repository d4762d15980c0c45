"""x handed to a W8A8 GEMM already in FP8 (numerics.Fp8Rows) by the kernel before it: the fused
RMSNorm and SiLU-and-mul kernels equal the two steps they replace bit for bit, and the GEMMs give
the same bits from FP8 rows as from x they quantize themselves, on every path (FMA, tensor-core
dot, FP8 dot, split K), so turning the fusion on changes no output."""

from __future__ import annotations

import pytest
import torch

import sglserve_kernels
from sglserve.layers.quantization.fp8_utils import fake_quantize_activation, quantize_per_channel
from sglserve_kernels.activation import MAX_FP8_ROW, silu_and_mul_fp8, silu_and_mul_ref
from sglserve_kernels.gemv import GemvConfig, skinny_gemm_fp8
from sglserve_kernels.layernorm import rmsnorm_fp8, rmsnorm_ref
from sglserve_kernels.numerics import Fp8Rows, quantize_rows_ref
from sglserve_kernels.testing import randn

BF16 = torch.bfloat16
# The GEMMs' tensor-core paths on the CPU interpreter: fp32 io (its bf16 dot is not usable), as test_gemv.py
IO = BF16 if torch.cuda.is_available() else torch.float32


def assert_rows_equal(got: Fp8Rows, x: torch.Tensor, static):
    q_ref, s_ref = quantize_rows_ref(x, static, "tensor" if static is not None else "token")
    assert got.q.dtype == torch.float8_e4m3fn and got.dtype == x.dtype and got.shape == x.shape
    assert torch.equal(got.scale, s_ref)
    assert torch.equal(got.q.view(torch.uint8), q_ref.view(torch.uint8))
    act = "tensor" if static is not None else "token"
    assert torch.equal(got.dequantize(), fake_quantize_activation(x, act, static))


@pytest.mark.parametrize("static", [None, 0.01])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("m,d", [(1, 64), (3, 96), (5, 2048)])
def test_rmsnorm_fp8_is_rmsnorm_then_quantize_rows(m, d, residual, static, device, gen):
    x = (randn(gen, m, d) * 3).to(device, BF16)
    w = (1 + 0.5 * randn(gen, d)).to(device, BF16)
    r = randn(gen, m, d).to(device, BF16) if residual else None
    scale = None if static is None else torch.tensor([static], device=device)
    want = rmsnorm_ref(x, w, 1e-6, r)
    got = rmsnorm_fp8(x, w, 1e-6, None if r is None else r.clone(), scale)
    if residual:
        (got, got_res), (want, want_res) = got, want
        assert torch.equal(got_res, want_res)
    assert_rows_equal(got, want, scale)


@pytest.mark.parametrize("static", [None, 0.002])
@pytest.mark.parametrize("m,inter", [(1, 64), (4, 352), (2, 4096)])
def test_silu_and_mul_fp8_is_silu_and_mul_then_quantize_rows(m, inter, static, device, gen):
    x = (randn(gen, m, 2 * inter) * 2).to(device, BF16)
    scale = None if static is None else torch.tensor([static], device=device)
    assert_rows_equal(silu_and_mul_fp8(x, scale), silu_and_mul_ref(x), scale)


def test_silu_and_mul_fp8_declines_rows_wider_than_a_program(device):
    assert silu_and_mul_fp8(torch.zeros(1, 2 * (MAX_FP8_ROW + 16), dtype=BF16, device=device)) is None


CONFIGS = {
    "fma": GemvConfig(block_n=8, block_k=64, split_k=1, num_stages=1),
    "fma_split": GemvConfig(block_n=4, block_k=64, split_k=2, num_stages=1),
    "dot": GemvConfig(block_n=16, block_k=64, split_k=1, use_dot=True),
    "fp8_dot": GemvConfig(block_n=16, block_k=64, split_k=2, fp8_dot=True),
}


@pytest.mark.parametrize("static", [None, 0.02])
@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("m", [1, 2, 5])
def test_gemv_from_fp8_rows_equals_gemv_that_quantizes(m, name, static, device, gen):
    n, k = 48, 192
    x = (randn(gen, m, k) * 2).to(device, IO)
    w, w_scale = quantize_per_channel(randn(gen, n, k) * 0.1)
    w, w_scale = w.to(device), w_scale.to(device)
    bias = randn(gen, n).to(device, IO)
    scale = None if static is None else torch.tensor([static], device=device)
    q, s = quantize_rows_ref(x.float(), scale, "tensor" if static is not None else "token")
    rows = Fp8Rows(q.to(device), s.to(device), IO)
    cfg = CONFIGS[name]
    want = skinny_gemm_fp8(x, w, w_scale, None, scale, "token", bias, cfg)
    got = skinny_gemm_fp8(rows, w, w_scale, None, scale, "token", bias, cfg)
    assert got.dtype == IO and torch.equal(got, want)
    # the layer hook takes FP8 rows as well
    linear = sglserve_kernels.fp8_linear(rows, w, w_scale, None, scale, "token", bias)
    torch.testing.assert_close(linear.float(), want.float(), atol=2e-2, rtol=2e-2)


def test_gemv_refuses_fp8_rows_for_grouped_or_weight_only(device, gen):
    rows = Fp8Rows(torch.zeros(1, 128, device=device).to(torch.float8_e4m3fn), torch.ones(1, 1, device=device), BF16)
    w, w_scale = quantize_per_channel(randn(gen, 32, 128))
    with pytest.raises(ValueError, match="FP8 rows"):
        skinny_gemm_fp8(rows, w.to(device), w_scale.to(device), None, None, None)


def test_layers_hand_fp8_rows_to_the_linear(device, gen):
    """The layers' CUDA path with fp8_input: RMSNorm and SiluAndMul give Fp8Rows, and the W8A8
    linear computes from them what it computes from their unquantized output."""
    from sglserve.layers.activation import SiluAndMul
    from sglserve.layers.layernorm import RMSNorm
    from sglserve.layers.linear import RowParallelLinear
    from sglserve.layers.quantization.config import Fp8Scheme
    from sglserve.layers.quantization.fp8 import Fp8LinearMethod

    linear = RowParallelLinear(96, 40, bias=False)
    linear.weight.data = randn(gen, 40, 96) * 0.1
    method = Fp8LinearMethod(Fp8Scheme("fp8", False, "channel", None, "dynamic", "token"))
    method.create_weights(linear)
    method.process_weights_after_loading(linear)
    linear.quant_method = method
    spec = linear.fp8_input()
    assert spec is not None and spec.input_scale is None
    norm = RMSNorm(96).to(device, IO)
    x = randn(gen, 3, 96).to(device, IO)
    rows = norm.forward_cuda(sglserve_kernels.rmsnorm, x, fp8_input=spec)
    assert isinstance(rows, Fp8Rows)
    plain = norm.forward_cuda(sglserve_kernels.rmsnorm, x)
    assert torch.equal(rows.dequantize(), fake_quantize_activation(plain, "token"))
    linear.to(device)
    torch.testing.assert_close(method.apply(linear, rows, None).float(), method.apply(linear, plain, None).float(),
                               atol=2e-2, rtol=2e-2)
    # above 16 rows off CUDA the kernel declines: Fp8Rows dequantize to what the linear would have rounded
    if device == "cpu":
        x20 = randn(gen, 20, 96).to(device, IO)
        rows20 = norm.forward_cuda(sglserve_kernels.rmsnorm, x20, fp8_input=spec)
        assert torch.equal(method.apply(linear, rows20, None), method.apply(linear, norm.forward_cuda(sglserve_kernels.rmsnorm, x20), None))
    act = SiluAndMul()
    h = randn(gen, 2, 192).to(device, IO)
    rows = act.forward_cuda(sglserve_kernels.silu_and_mul, h, fp8_input=spec)
    assert isinstance(rows, Fp8Rows) and rows.shape == (2, 96)
    plain = act.forward_cuda(sglserve_kernels.silu_and_mul, h)
    assert torch.equal(rows.dequantize(), fake_quantize_activation(plain, "token"))


def test_a_fused_kernel_that_does_not_build_falls_back(device, gen, monkeypatch, caplog):
    """A fused kernel that fails to build on this GPU costs speed, not the server: the layer gets
    None from it, runs the norm (or SiLU-and-mul) alone, and the GEMM quantizes as before."""
    from sglserve.layers.activation import SiluAndMul
    from sglserve.layers.layernorm import RMSNorm
    from sglserve.layers.quantization.base import Fp8Input
    from sglserve_kernels import _utils, activation, layernorm

    class Broken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                raise RuntimeError("out of resource: registers\nmore")
            return launch

    monkeypatch.setattr(_utils, "FAILED", set())
    monkeypatch.setattr(layernorm, "_rmsnorm", Broken())
    monkeypatch.setattr(activation, "_silu_and_mul_fp8", Broken())
    norm = RMSNorm(64).to(device, BF16)
    x = randn(gen, 2, 64).to(device, BF16)
    with caplog.at_level("WARNING"):
        assert rmsnorm_fp8(x, norm.weight, 1e-6) is None
        assert silu_and_mul_fp8(randn(gen, 2, 128).to(device, BF16)) is None
    assert "rmsnorm_fp8" in caplog.text and "run apart" in caplog.text
    monkeypatch.undo()  # the plain kernels again; the fused ones stay marked failed
    monkeypatch.setattr(_utils, "FAILED", {("rmsnorm_fp8", 64, BF16, False, False, 0), ("silu_and_mul_fp8", 64, BF16, False)})
    out = norm.forward_cuda(sglserve_kernels.rmsnorm, x, fp8_input=Fp8Input())
    assert isinstance(out, torch.Tensor) and torch.equal(out, norm.forward_cuda(sglserve_kernels.rmsnorm, x))
    h = randn(gen, 2, 128).to(device, BF16)
    act = SiluAndMul()
    assert torch.equal(act.forward_cuda(sglserve_kernels.silu_and_mul, h, fp8_input=Fp8Input()),
                       act.forward_cuda(sglserve_kernels.silu_and_mul, h))


@pytest.mark.parametrize("static", [None, 0.01])
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim,seq_lens,splits", [
    (4, 4, 64, [1, 17, 70], [1, 2, 3]),        # MHA; a request with more splits than tokens
    (8, 2, 128, [5, 130], [8, 4]),             # GQA 4, head dim 128
    (6, 2, 80, [40], [3]),                     # heads and head dim both padded in the merge
])
def test_decode_attention_fp8_rows_are_its_output_quantized(num_heads, num_kv_heads, head_dim, seq_lens, splits,
                                                           static, device, gen):
    """Decode attention handing o_proj FP8 rows (the merge stage quantizes) equals its usual output
    quantized by quantize_rows, per token or static, bit for bit; o is left unwritten."""
    from sglserve_kernels.attn_decode import decode_attention_fwd
    from sglserve_kernels.testing import PagedKV

    bs = len(seq_lens)
    kv = PagedKV(seq_lens, 4, num_kv_heads, head_dim, IO, device, gen)
    q = randn(gen, bs, num_heads, head_dim).to(device, IO)
    n = torch.tensor(splits, dtype=torch.int32, device=device)

    def run(out_fp8=None, scale=None):
        o = torch.full_like(q, float("nan"))
        mid_o = torch.zeros((bs, num_heads, 8, head_dim), device=device)
        mid_lse = torch.zeros((bs, num_heads, 8), device=device)
        return decode_attention_fwd(q, kv.k_buffer, kv.v_buffer, o, kv.req_to_token, kv.req_pool_indices, kv.seq_lens,
                                    n, mid_o, mid_lse, 0.125, out_fp8=out_fp8, out_fp8_static=scale), o

    plain, _ = run()
    scale = None if static is None else torch.tensor([static], device=device)
    target = Fp8Rows(torch.empty((bs, num_heads * head_dim), dtype=torch.float8_e4m3fn, device=device),
                     torch.empty((bs, 1), device=device), IO)
    rows, o = run(target, scale)
    assert rows is target and torch.isnan(o).all()
    assert_rows_equal(rows, plain.reshape(bs, -1), scale)
