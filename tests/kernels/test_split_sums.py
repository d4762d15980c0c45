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


ROPE_CASES = [  # tokens, q heads, kv heads, head dim, rotary dim, neox, splits
    (1, 4, 2, 64, 64, True, 4), (3, 8, 2, 128, 128, True, 2), (5, 4, 4, 64, 64, False, 3), (2, 4, 1, 128, 64, True, 2),
]


@pytest.mark.parametrize("pool", [None, BF16, torch.float8_e4m3fn])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("n,hq,hk,d,rot,neox,splits", ROPE_CASES)
def test_rope_reading_qkv_partials_equals_rope_on_their_sum(n, hq, hk, d, rot, neox, splits, with_bias, pool, device, gen):
    """qkv_proj's partials handed to RoPE: the buffer it fills (q, k rotated, v) and the KV pool bytes
    (bf16 and FP8 pools, partial rotary, both pair layouts) are those of RoPE after the reduce kernel;
    without a KV store (other backends) the buffer as well; the layer's torch path the same."""
    from sglserve.layers.rotary_embedding import RotaryEmbedding
    from sglserve_kernels.rope import KVStore, build_cos_sin_cache, rotary_embedding

    width = (hq + 2 * hk) * d
    sums = _sums(gen, splits, n, width, with_bias, device)
    cache = build_cos_sin_cache(rot, 4096, device=device)
    pos = torch.randint(0, 4096, (n,), generator=gen).to(device)
    loc = torch.randperm(32, generator=gen)[:n].to(device)
    scales = (0.01, 0.02) if pool == torch.float8_e4m3fn else (1.0, 1.0)
    out = []
    for from_sums in (False, True):
        qkv = torch.full((n, width), float("nan"), device=device).to(BF16) if from_sums else sums.total()
        q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)
        kb = torch.zeros(32, hk, d, device=device).to(pool or BF16)
        vb = torch.zeros(32, hk, d, device=device).to(pool or BF16)
        store = None if pool is None else KVStore(v, kb, vb, loc, *scales)
        if from_sums:
            rotary_embedding(pos, q, k, d, cache, neox, store, sums, v)
        else:
            rotary_embedding(pos, q, k, d, cache, neox, store)
        out.append((qkv, kb.view(torch.uint8), vb.view(torch.uint8)))
    for got, want in zip(out[1], out[0]):
        assert torch.equal(got, want)
    # the layer's torch path fills the buffer from the same sums
    layer = RotaryEmbedding(d, rot, 4096, 1.0 / (10000.0 ** (torch.arange(0, rot, 2).float() / rot)), neox).to(device)
    qkv = torch.empty(n, width, device=device, dtype=BF16)
    q, k, v = qkv.split([hq * d, hk * d, hk * d], dim=-1)
    want = sums.total()
    q_ref, k_ref = layer.forward_native(pos, *want.split([hq * d, hk * d, hk * d], dim=-1)[:2])
    q_got, k_got = layer.forward_native(pos, q, k, sums=sums, value=v)
    assert torch.equal(q_got, q_ref) and torch.equal(k_got, k_ref) and torch.equal(v, want[:, (hq + hk) * d:])


def test_rope_from_sums_needs_the_value_slice(device, gen):
    from sglserve_kernels.rope import build_cos_sin_cache, rotary_embedding

    sums = _sums(gen, 2, 1, 4 * 64, False, device)
    qkv = torch.empty(1, 4 * 64, device=device, dtype=BF16)
    q, k, v = qkv.split([128, 64, 64], dim=-1)
    with pytest.raises(ValueError, match="value"):
        rotary_embedding(torch.zeros(1, dtype=torch.long, device=device), q, k, 64, build_cos_sin_cache(64, 16, device=device),
                         True, None, sums)


def test_a_summing_norm_that_does_not_build_sums_in_torch(device, gen, monkeypatch, caplog):
    """A GPU where the summing norm variant fails to build costs speed, not the server: the
    partials are summed in torch (SplitSums.total) and the plain norm runs, with the same bits."""
    from sglserve_kernels import _utils, layernorm

    sums = _sums(gen, 2, 2, 64, True, device)
    w = (1 + 0.5 * randn(gen, 64)).to(device, BF16)
    r = randn(gen, 2, 64).to(device, BF16)
    want_out, want_res = rmsnorm(sums.total(), w, 1e-5, r.clone())
    real = layernorm._launch

    def broken(x, *args, **kwargs):
        if isinstance(x, SplitSums):
            raise RuntimeError("out of resource: registers")
        return real(x, *args, **kwargs)

    monkeypatch.setattr(_utils, "FAILED", set())
    monkeypatch.setattr(layernorm, "_launch", broken)
    with caplog.at_level("WARNING"):
        got_out, got_res = rmsnorm(sums, w, 1e-5, r.clone())
    assert "added in torch" in caplog.text
    assert torch.equal(got_out, want_out) and torch.equal(got_res, want_res)
