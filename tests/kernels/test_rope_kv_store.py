"""RoPE that also writes the layer's new K and V into the KV pool (kernels/rope.py with a KVStore):
the same pool bytes and the same rotated q/k as rotary_embedding followed by store_kv_cache, for
bf16 and FP8 pools, partial rotary, both pair layouts; and the layer's torch path keeps the
contract (RotaryEmbedding.forward_native with a kv_store)."""

from __future__ import annotations

import pytest
import torch

from sglserve_kernels.kv_store import store_kv_cache
from sglserve_kernels.rope import KVStore, build_cos_sin_cache, rotary_embedding
from sglserve_kernels.testing import randn

FP8 = torch.float8_e4m3fn
CASES = [  # tokens, q heads, kv heads, head dim, rotary dim, neox
    (1, 4, 2, 64, 64, True), (7, 8, 2, 128, 128, True), (5, 4, 4, 64, 64, False), (6, 4, 1, 128, 64, True),
    (3, 6, 2, 80, 80, True),
]


def _qkv(gen, n, hq, hk, d, dtype, device):
    qkv = randn(gen, n, (hq + 2 * hk) * d, dtype=dtype, device=device)
    return qkv, qkv[:, : hq * d], qkv[:, hq * d:(hq + hk) * d], qkv[:, (hq + hk) * d:]


@pytest.mark.parametrize("pool_dtype", [torch.bfloat16, FP8])
@pytest.mark.parametrize("n,hq,hk,d,rot,neox", CASES)
def test_rope_with_kv_store_is_rope_then_store(n, hq, hk, d, rot, neox, pool_dtype, device, gen):
    dtype = torch.bfloat16
    cache = build_cos_sin_cache(rot, 4096, device=device)
    pos = torch.randint(0, 4096, (n,), generator=gen).to(device)
    loc = torch.randperm(32, generator=gen)[:n].to(device)
    scales = (0.01, 0.02) if pool_dtype == FP8 else (1.0, 1.0)
    pools = []
    for fused in (False, True):
        qkv, q, k, v = _qkv(torch.Generator().manual_seed(1), n, hq, hk, d, dtype, device)
        kb = torch.zeros(32, hk, d, device=device).to(pool_dtype)
        vb = torch.zeros(32, hk, d, device=device).to(pool_dtype)
        if fused:
            rotary_embedding(pos, q, k, d, cache, neox, KVStore(v, kb, vb, loc, *scales))
        else:
            rotary_embedding(pos, q, k, d, cache, neox)
            store_kv_cache(kb, vb, loc, k, v, *scales)
        pools.append((qkv, kb, vb))
    (qkv0, kb0, vb0), (qkv1, kb1, vb1) = pools
    assert torch.equal(qkv0, qkv1)
    assert torch.equal(kb0.view(torch.uint8), kb1.view(torch.uint8)) and torch.equal(vb0.view(torch.uint8), vb1.view(torch.uint8))
    assert kb1.float().abs().sum() > 0 and vb1.float().abs().sum() > 0


@pytest.mark.parametrize("pool_dtype", [torch.bfloat16, FP8])
def test_layer_torch_path_keeps_the_kv_store_contract(pool_dtype, device, gen):
    """RotaryEmbedding.forward_native with a kv_store writes what the kernel writes."""
    from sglserve.layers.rotary_embedding import get_rope
    import sglserve_kernels

    n, hq, hk, d = 5, 4, 2, 64
    rope = get_rope(d, 4096, 10000.0).to(device)
    pos = torch.randint(0, 4096, (n,), generator=gen).to(device)
    loc = torch.tensor([3, 9, 0, 17, 5], device=device)
    scales = (0.01, 0.02) if pool_dtype == FP8 else (1.0, 1.0)
    pools = []
    for native in (True, False):
        qkv, q, k, v = _qkv(torch.Generator().manual_seed(2), n, hq, hk, d, torch.bfloat16, device)
        kb = torch.zeros(32, hk, d, device=device).to(pool_dtype)
        vb = torch.zeros(32, hk, d, device=device).to(pool_dtype)
        store = KVStore(v, kb, vb, loc, *scales)
        if native:
            q, k = rope.forward_native(pos, q, k, kv_store=store)
        else:
            q, k = rope.forward_cuda(sglserve_kernels.rotary_embedding, pos, q, k, kv_store=store)
        pools.append((q, k, kb, vb))
    for a, b in zip(*pools):
        assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))


def test_a_storing_rope_that_does_not_build_falls_back_to_the_store_kernel(device, gen, monkeypatch, caplog):
    from sglserve_kernels import _utils, rope

    real = rope._rope

    class StoringVariantBroken:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                if kwargs["STORE_KV"]:
                    raise RuntimeError("out of resource: registers")
                return real[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(_utils, "FAILED", set())
    monkeypatch.setattr(rope, "_rope", StoringVariantBroken())
    n, hq, hk, d = 4, 4, 2, 64
    cache = build_cos_sin_cache(d, 4096, device=device)
    pos = torch.randint(0, 4096, (n,), generator=gen).to(device)
    loc = torch.tensor([1, 7, 2, 30], device=device)
    pools = []
    for fused in (True, False):
        qkv, q, k, v = _qkv(torch.Generator().manual_seed(3), n, hq, hk, d, torch.bfloat16, device)
        kb, vb = torch.zeros(32, hk, d, dtype=torch.bfloat16, device=device), torch.zeros(32, hk, d, dtype=torch.bfloat16, device=device)
        with caplog.at_level("WARNING"):
            if fused:
                rotary_embedding(pos, q, k, d, cache, True, KVStore(v, kb, vb, loc))
            else:
                rotary_embedding(pos, q, k, d, cache, True)
                store_kv_cache(kb, vb, loc, k, v)
        pools.append((qkv, kb, vb))
    assert "RoPE and the KV store run apart" in caplog.text
    for a, b in zip(*pools):
        assert torch.equal(a, b)
