"""Triton kernels on a real GPU at model shapes (Llama-3.1-8B: 32 q heads, 8 kv heads, head
dim 128; bf16): accuracy against the torch references, fp32 exactness (no silent tf32),
and decode attention captured in a CUDA graph and replayed with new sequence lengths.

The CPU suite (tests/kernels, TRITON_INTERPRET=1) checks the logic on small shapes; this
file checks what only the GPU can: compiled code, bf16 tensor-core paths, big grids, graphs.
Run together with tests/kernels (which run on CUDA too when it is present).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():  # skip before importing any @triton.jit module
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

pytestmark = pytest.mark.gpu


def _import_sglserve_kernels():
    try:
        import sglserve_kernels  # noqa: F401
    except ImportError:  # not pip-installed: map the name onto the repo's kernels/ folder
        root = Path(__file__).resolve().parents[2] / "kernels"
        spec = importlib.util.spec_from_file_location(
            "sglserve_kernels", root / "__init__.py", submodule_search_locations=[str(root)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules["sglserve_kernels"] = module
        spec.loader.exec_module(module)


_import_sglserve_kernels()

from sglserve.layers.attention.triton_backend import TritonAttnBackend  # noqa: E402
from sglserve.layers.radix_attention import RadixAttention  # noqa: E402
from sglserve.mem_cache.memory_pool import MHATokenToKVPool, ReqToTokenPool  # noqa: E402
from sglserve.model_executor.forward_batch import ForwardBatch, ForwardMode  # noqa: E402
from sglserve_kernels.activation import silu_and_mul, silu_and_mul_ref  # noqa: E402
from sglserve_kernels.attn_decode import decode_attention, decode_attention_ref  # noqa: E402
from sglserve_kernels.attn_extend import extend_attention, extend_attention_ref  # noqa: E402
from sglserve_kernels.kv_store import store_kv_cache, store_kv_cache_ref  # noqa: E402
from sglserve_kernels.layernorm import rmsnorm, rmsnorm_ref  # noqa: E402
from sglserve_kernels.rope import build_cos_sin_cache, rotary_embedding, rotary_embedding_ref  # noqa: E402
from sglserve.layers.sampler import sample, sampling_probs, sampling_probs_ref  # noqa: E402
from sglserve_kernels.testing import PagedKV, randn  # noqa: E402

H, KVH, D = 32, 8, 128  # Llama-3.1-8B
BF16_TOL = dict(atol=2e-2, rtol=2e-2)


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(H, KVH, D), (32, 32, 128), (28, 4, 128), (16, 2, 64)])
@pytest.mark.parametrize("page_size", [1, 16])
def test_decode_bf16_model_shapes(num_heads, num_kv_heads, head_dim, page_size, gen):
    seq_lens = [1, 17, 512, 1000, 4096, 8191]
    kv = PagedKV(seq_lens, page_size, num_kv_heads, head_dim, torch.bfloat16, "cuda", gen)
    q = randn(gen, len(seq_lens), num_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    out = decode_attention(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    torch.testing.assert_close(out.float(), ref.float(), **BF16_TOL)


def test_decode_fp32_is_exact_not_tf32(gen):
    """fp32 pools must take the ieee dot path: tf32 would miss this tolerance by ~100x."""
    kv = PagedKV([300, 2000], 16, KVH, D, torch.float32, "cuda", gen)
    q = randn(gen, 2, H, D, device="cuda", scale=4.0)
    out = decode_attention(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def test_decode_large_batch(gen):
    seq_lens = torch.randint(1, 2048, (256,), generator=gen).tolist()
    kv = PagedKV(seq_lens, 16, KVH, D, torch.bfloat16, "cuda", gen)
    q = randn(gen, 256, H, D, dtype=torch.bfloat16, device="cuda")
    out = decode_attention(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    torch.testing.assert_close(out.float(), ref.float(), **BF16_TOL)


def _extend_inputs(prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, dtype, gen):
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    kv = PagedKV(seq_lens, 16, num_kv_heads, head_dim, dtype, "cuda", gen)
    total = sum(extend_lens)
    q = randn(gen, total, num_heads, head_dim, dtype=dtype, device="cuda")
    k = randn(gen, total, num_kv_heads, head_dim, dtype=dtype, device="cuda")
    v = randn(gen, total, num_kv_heads, head_dim, dtype=dtype, device="cuda")
    starts = [0]
    for e in extend_lens[:-1]:
        starts.append(starts[-1] + e)
    i32 = dict(dtype=torch.int32, device="cuda")
    meta = (torch.tensor(prefix_lens, **i32), torch.tensor(extend_lens, **i32), torch.tensor(starts, **i32))
    return (q, k, v, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, *meta)


@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(H, KVH, D), (32, 32, 64), (28, 4, 128)])
def test_extend_bf16_model_shapes(num_heads, num_kv_heads, head_dim, gen):
    prefix_lens, extend_lens = [0, 0, 700, 16, 3000], [1, 2048, 129, 1000, 1]
    args = _extend_inputs(prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, torch.bfloat16, gen)
    out = extend_attention(*args, max(extend_lens))
    ref = extend_attention_ref(*args)
    torch.testing.assert_close(out.float(), ref.float(), **BF16_TOL)


def test_extend_fp32_is_exact_not_tf32(gen):
    args = _extend_inputs([100, 0], [300, 257], H, KVH, D, torch.float32, gen)
    out = extend_attention(*args, 300)
    torch.testing.assert_close(out, extend_attention_ref(*args), atol=1e-5, rtol=1e-4)


def test_small_kernels_bf16_model_shapes(gen):
    dt = torch.bfloat16
    x = randn(gen, 300, 4096, dtype=dt, device="cuda")
    r = randn(gen, 300, 4096, dtype=dt, device="cuda")
    w = randn(gen, 4096, dtype=dt, device="cuda", scale=0.1) + 1
    torch.testing.assert_close(rmsnorm(x, w, 1e-5), rmsnorm_ref(x, w, 1e-5), **BF16_TOL)
    ref_out, ref_res = rmsnorm_ref(x, w, 1e-5, r)
    out, res = rmsnorm(x, w, 1e-5, r.clone())
    torch.testing.assert_close(out, ref_out, **BF16_TOL)
    torch.testing.assert_close(res, ref_res, **BF16_TOL)

    gu = randn(gen, 300, 2 * 14336, dtype=dt, device="cuda")
    torch.testing.assert_close(silu_and_mul(gu), silu_and_mul_ref(gu), **BF16_TOL)

    cache = build_cos_sin_cache(D, 131072, base=500000.0, device="cuda")
    pos = torch.randint(0, 131072, (300,), generator=gen).cuda()
    qkv = randn(gen, 300, (H + 2 * KVH) * D, dtype=dt, device="cuda")
    q, k = qkv[:, : H * D], qkv[:, H * D:(H + KVH) * D]
    q_ref, k_ref = rotary_embedding_ref(pos, q.clone(), k.clone(), D, cache)
    rotary_embedding(pos, q, k, D, cache)
    torch.testing.assert_close(q, q_ref, **BF16_TOL)
    torch.testing.assert_close(k, k_ref, **BF16_TOL)

    kb = torch.zeros(5000, KVH, D, dtype=dt, device="cuda")
    vb = torch.zeros_like(kb)
    kr, vr = kb.clone(), vb.clone()
    loc = torch.randperm(5000, generator=gen)[:300].cuda()
    kn, vn = qkv[:, H * D:(H + KVH) * D], qkv[:, (H + KVH) * D:]
    store_kv_cache(kb, vb, loc, kn, vn)
    store_kv_cache_ref(kr, vr, loc, kn, vn)
    assert torch.equal(kb, kr) and torch.equal(vb, vr)


def test_sampling_large_vocab(gen):
    n, vocab = 32, 128256
    logits = (torch.randn(n, vocab, generator=gen) * 4).cuda()
    f = dict(device="cuda")
    t = torch.rand(n, generator=gen).cuda() + 0.3
    p = torch.rand(n, generator=gen).cuda() * 0.5 + 0.5
    k = torch.randint(0, 200, (n,), generator=gen).cuda()
    m = torch.where(torch.arange(n, **f) % 3 == 0, torch.full((n,), 0.05, **f), torch.zeros(n, **f))
    probs = sampling_probs(logits, t, p, k, m)
    probs = probs / probs.sum(-1, keepdim=True)
    torch.testing.assert_close(probs[:4], sampling_probs_ref(logits[:4], t[:4], p[:4], k[:4], m[:4]),
                               atol=1e-5, rtol=1e-3)
    greedy = torch.arange(n, **f) % 2 == 0
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        ids = sample(logits, t, p, k, m, greedy)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.equal(ids[greedy], logits.argmax(-1)[greedy])
    assert bool((probs[torch.arange(n, **f), ids] > 0).all())


def test_decode_backend_cuda_graph_replay(gen):
    """Capture one layer's decode (KV store + split-KV attention) once, replay it with new
    sequence lengths (so new split counts) and new inputs: the replays match the reference."""
    bs, max_ctx, page = 8, 4096, 16
    runner = SimpleNamespace(
        model_config=SimpleNamespace(num_attention_heads=H, num_key_value_heads=KVH, head_dim=D),
        server_args=SimpleNamespace(cuda_graph_max_bs=bs, tp_size=1), device="cuda", max_running_requests=bs,
    )
    backend = TritonAttnBackend(runner)
    r2t = ReqToTokenPool(bs + 1, max_ctx + 1, "cuda")
    num_tokens = bs * max_ctx
    pool = MHATokenToKVPool(num_tokens, page, torch.bfloat16, KVH, D, 1, "cuda")
    pool.k_buffer[0].normal_()
    pool.v_buffer[0].normal_()
    pages = torch.randperm(num_tokens // page, generator=gen) + 1  # page 0 reserved
    slots = (pages[:, None] * page + torch.arange(page)).flatten().view(bs, max_ctx)
    r2t.req_to_token[1:bs + 1, :max_ctx] = slots.to("cuda", torch.int32)

    rows = torch.arange(1, bs + 1, dtype=torch.int64, device="cuda")
    seq_lens = torch.ones(bs, dtype=torch.int32, device="cuda")
    loc = torch.zeros(bs, dtype=torch.int64, device="cuda")
    qkv = torch.zeros(bs, (H + 2 * KVH) * D, dtype=torch.bfloat16, device="cuda")
    fb = ForwardBatch(
        forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=torch.zeros(bs, dtype=torch.int64, device="cuda"),
        positions=torch.zeros(bs, dtype=torch.int64, device="cuda"), req_pool_indices=rows, seq_lens=seq_lens,
        out_cache_loc=loc, seq_lens_cpu=[1] * bs, req_to_token_pool=r2t, token_to_kv_pool=pool, attn_backend=backend,
    )
    layer = RadixAttention(H, D, D ** -0.5, KVH, 0)

    def step():
        q, k, v = qkv.split([H * D, KVH * D, KVH * D], dim=-1)
        return layer(q, k, v, fb)

    def set_batch(lens):
        seq_lens.copy_(torch.tensor(lens, dtype=torch.int32))
        loc.copy_(slots[torch.arange(bs), torch.tensor(lens) - 1])
        qkv.copy_(torch.randn(qkv.shape, generator=gen).to(qkv.dtype))
        backend.init_forward_metadata(fb)  # recomputes split counts into the captured buffers

    set_batch([1] * bs)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()

    seen_splits = set()
    for lens in ([1] * bs, [4096, 1, 2, 100, 65, 3000, 17, 512], torch.randint(1, max_ctx + 1, (bs,), generator=gen).tolist()):
        set_batch(lens)
        seen_splits.update(fb.attn_metadata.num_kv_splits.tolist())
        graph.replay()
        torch.cuda.synchronize()
        q = qkv[:, : H * D].reshape(bs, H, D)
        ref = decode_attention_ref(q, pool.k_buffer[0], pool.v_buffer[0], r2t.req_to_token, rows, seq_lens, D ** -0.5)
        torch.testing.assert_close(out.view(bs, H, D).float(), ref.float(), **BF16_TOL)
        # the graph stored this step's K at out_cache_loc
        torch.testing.assert_close(pool.k_buffer[0][loc], qkv[:, H * D:(H + KVH) * D].reshape(bs, KVH, D))
    if backend._splits_for(bs) > 1:  # true on any GPU with > 32 SMs
        assert len(seen_splits) > 1, f"replays never changed the split count: {seen_splits}"
