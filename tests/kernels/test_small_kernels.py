"""KV store, RMSNorm (+ fused residual), RoPE and SiLU-and-mul vs their torch references."""

from __future__ import annotations

import pytest
import torch

from sglserve_kernels.activation import silu_and_mul, silu_and_mul_ref
from sglserve_kernels.kv_store import store_kv_cache, store_kv_cache_ref
from sglserve_kernels.layernorm import fused_add_rmsnorm, rmsnorm, rmsnorm_ref
from sglserve_kernels.rope import build_cos_sin_cache, rotary_embedding, rotary_embedding_ref
from sglserve_kernels.testing import randn

DTYPES = [torch.float32, torch.bfloat16]  # bf16 runs under the interpreter too (conftest rounds like the GPU)
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.bfloat16: dict(atol=2e-2, rtol=2e-2)}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens,num_kv_heads,head_dim", [(1, 1, 64), (7, 2, 128), (33, 8, 64)])
def test_store_kv_cache(num_tokens, num_kv_heads, head_dim, dtype, device, gen):
    slots = 64
    kb = torch.full((slots, num_kv_heads, head_dim), float("nan"), dtype=dtype, device=device)
    vb = torch.full_like(kb, float("nan"))
    loc = (torch.randperm(slots - 1, generator=gen)[:num_tokens] + 1).to(device)
    k = randn(gen, num_tokens, num_kv_heads * head_dim, device=device)  # fp32 in, cast on store
    v = randn(gen, num_tokens, num_kv_heads, head_dim, device=device)
    kr, vr = kb.clone(), vb.clone()
    store_kv_cache(kb, vb, loc, k, v)
    store_kv_cache_ref(kr, vr, loc, k, v)
    torch.testing.assert_close(kb, kr, equal_nan=True, atol=0, rtol=0)
    torch.testing.assert_close(vb, vr, equal_nan=True, atol=0, rtol=0)
    assert not torch.isnan(kb[loc]).any()


@pytest.mark.parametrize("k_scale,v_scale", [(1.0, 1.0), (0.05, 0.3), (0.002, 1.7)])  # last: K saturates
@pytest.mark.parametrize("in_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_tokens,num_kv_heads,head_dim", [(1, 1, 64), (7, 2, 128)])
def test_store_kv_cache_fp8(num_tokens, num_kv_heads, head_dim, in_dtype, k_scale, v_scale, device, gen):
    """FP8 pool: the same bytes as the torch store (x / scale, saturated, nearest E4M3), on
    values spanning E4M3's normal and subnormal ranges."""
    slots = 32
    kb = torch.full((slots, num_kv_heads, head_dim), float("nan"), device=device).to(torch.float8_e4m3fn)
    vb = kb.clone()
    loc = (torch.randperm(slots - 1, generator=gen)[:num_tokens] + 1).to(device)
    spread = torch.exp(torch.empty(num_tokens, num_kv_heads * head_dim).uniform_(-9, 2, generator=gen))
    k = (randn(gen, num_tokens, num_kv_heads * head_dim) * spread).to(device, in_dtype)
    v = (randn(gen, num_tokens, num_kv_heads, head_dim) * 0.5).to(device, in_dtype)
    kr, vr = kb.clone(), vb.clone()
    store_kv_cache(kb, vb, loc, k, v, k_scale, v_scale)
    store_kv_cache_ref(kr, vr, loc, k, v, k_scale, v_scale)
    assert torch.equal(kb.view(torch.uint8), kr.view(torch.uint8))
    assert torch.equal(vb.view(torch.uint8), vr.view(torch.uint8))
    assert not torch.isnan(kb[loc].float()).any()  # saturated, never NaN
    if k_scale == 0.002:
        assert kb[loc].float().abs().max() == 448.0
    # Dequantized, each value is within E4M3's half-ulp (2^-4 relative) of the input, or of 2^-10 * scale
    back = vb[loc].float() * v_scale
    err = (back - v.float().reshape(back.shape)).abs()
    assert torch.all(err <= v.float().reshape(back.shape).abs() * 2 ** -4 + 2 ** -10 * v_scale)


def test_store_kv_cache_fp8_rejects_bad_scales(device):
    kb = torch.zeros(4, 1, 16, device=device).to(torch.float8_e4m3fn)
    k = torch.zeros(1, 16, device=device)
    with pytest.raises(ValueError, match="scales must be > 0"):
        store_kv_cache(kb, kb.clone(), torch.tensor([1], device=device), k, k, 0.0, 1.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(1, 64), (5, 1000), (17, 4096)])
def test_rmsnorm(rows, hidden, dtype, device, gen):
    x = randn(gen, rows, hidden, dtype=dtype, device=device)
    w = randn(gen, hidden, dtype=dtype, device=device, scale=0.5) + 1
    x0 = x.clone()
    out = rmsnorm(x, w, 1e-6)
    torch.testing.assert_close(out, rmsnorm_ref(x0, w, 1e-6), **TOL[dtype])
    assert torch.equal(x, x0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rows,hidden", [(3, 128), (9, 576)])
def test_rmsnorm_with_residual(rows, hidden, dtype, device, gen):
    x = randn(gen, rows, hidden, dtype=dtype, device=device)
    r = randn(gen, rows, hidden, dtype=dtype, device=device)
    w = randn(gen, hidden, dtype=dtype, device=device, scale=0.5) + 1
    ref_out, ref_res = rmsnorm_ref(x, w, 1e-5, r)
    x0 = x.clone()
    out, res = rmsnorm(x, w, 1e-5, r.clone())
    torch.testing.assert_close(out, ref_out, **TOL[dtype])
    torch.testing.assert_close(res, ref_res, **TOL[dtype])
    assert torch.equal(x, x0)
    # SGLang's in-place form: both buffers overwritten
    xi, ri = x.clone(), r.clone()
    xo, ro = fused_add_rmsnorm(xi, ri, w, 1e-5)
    assert xo.data_ptr() == xi.data_ptr() and ro.data_ptr() == ri.data_ptr()
    torch.testing.assert_close(xi, ref_out, **TOL[dtype])
    torch.testing.assert_close(ri, ref_res, **TOL[dtype])


def test_rmsnorm_strided_rows(device, gen):
    base = randn(gen, 6, 256, device=device)
    x = base[:, :128]  # row stride 256
    w = randn(gen, 128, device=device)
    torch.testing.assert_close(rmsnorm(x, w, 1e-6), rmsnorm_ref(x, w, 1e-6), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "num_tokens,num_q,num_kv,head_dim,rotary_dim,is_neox",
    [
        (1, 4, 4, 64, 64, True),
        (9, 8, 2, 128, 128, True),
        (5, 32, 8, 64, 64, False),     # GPT-J interleaved pairs
        (6, 4, 1, 128, 64, True),      # partial rotary: last 64 dims untouched
        (3, 6, 2, 80, 80, True),       # non-power-of-two head and rotary dims
    ],
)
def test_rope(num_tokens, num_q, num_kv, head_dim, rotary_dim, is_neox, dtype, device, gen):
    cache = build_cos_sin_cache(rotary_dim, 4096, base=10000.0, device=device)
    pos = torch.randint(0, 4096, (num_tokens,), generator=gen).to(device)
    # q and k as views of one fused qkv output, flattened heads: the model's layout
    qkv = randn(gen, num_tokens, (num_q + 2 * num_kv) * head_dim, dtype=dtype, device=device)
    q = qkv[:, : num_q * head_dim]
    k = qkv[:, num_q * head_dim:(num_q + num_kv) * head_dim]
    v_before = qkv[:, (num_q + num_kv) * head_dim:].clone()
    q_ref, k_ref = rotary_embedding_ref(pos, q.clone(), k.clone(), head_dim, cache, is_neox)
    q_out, k_out = rotary_embedding(pos, q, k, head_dim, cache, is_neox)
    assert q_out.data_ptr() == q.data_ptr()
    torch.testing.assert_close(q, q_ref, **TOL[dtype])
    torch.testing.assert_close(k, k_ref, **TOL[dtype])
    assert torch.equal(qkv[:, (num_q + num_kv) * head_dim:], v_before)


def test_rope_matches_transformers_rotate_half(gen):
    """Our neox layout equals transformers' Llama apply_rotary_pos_emb."""
    d, n = 64, 7
    cache = build_cos_sin_cache(d, 128, base=500000.0)
    pos = torch.randint(0, 128, (n,), generator=gen)
    q = randn(gen, n, 2, d)
    cos_half, sin_half = cache[pos, : d // 2], cache[pos, d // 2:]
    cos = torch.cat([cos_half, cos_half], -1)[:, None, :]
    sin = torch.cat([sin_half, sin_half], -1)[:, None, :]

    def rotate_half(x):
        return torch.cat([-x[..., d // 2:], x[..., : d // 2]], -1)

    hf = q * cos + rotate_half(q) * sin
    ours, _ = rotary_embedding_ref(pos, q.clone(), q.clone(), d, cache, True)
    torch.testing.assert_close(ours, hf, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_tokens,inter", [(1, 64), (7, 1000), (4, 2816)])
def test_silu_and_mul(num_tokens, inter, dtype, device, gen):
    x = randn(gen, num_tokens, 2 * inter, dtype=dtype, device=device, scale=3.0)
    torch.testing.assert_close(silu_and_mul(x), silu_and_mul_ref(x), **TOL[dtype])


def test_empty_inputs(device):
    x = torch.empty(0, 64, device=device)
    assert silu_and_mul(x).shape == (0, 32)
    assert rmsnorm(x, torch.ones(64, device=device), 1e-6).shape == (0, 64)


@pytest.mark.parametrize("seq_lens,rows", [([1], 1), ([5, 0, 17], 4), ([700, 3, 1029, 64], 6)])
@pytest.mark.parametrize("r2t_dtype", [torch.int32, torch.int64])
def test_build_kv_indices(seq_lens, rows, r2t_dtype, device, gen):
    from sglserve_kernels.kv_indices import build_kv_indices, build_kv_indices_ref

    r2t = torch.randint(0, 1 << 20, (rows, 1100), generator=gen, dtype=torch.int64).to(device, r2t_dtype)
    rpi = torch.randperm(rows, generator=gen)[: len(seq_lens)].to(device)
    lens = torch.tensor(seq_lens, dtype=torch.int32, device=device)
    indptr = torch.zeros(len(seq_lens) + 1, dtype=torch.int32, device=device)
    torch.cumsum(lens, 0, out=indptr[1:])
    total = int(indptr[-1])
    out = torch.full((total + 8,), -1, dtype=torch.int32, device=device)
    want = out.clone()
    build_kv_indices(r2t, rpi, lens, indptr, out)
    build_kv_indices_ref(r2t, rpi, lens, indptr, want)
    assert torch.equal(out, want)
    assert (out[total:] == -1).all()  # nothing written past indptr[-1]
