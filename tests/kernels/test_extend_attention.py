"""Extend (prefill) attention over a paged prefix + causal new tokens vs its torch reference."""

from __future__ import annotations

import pytest
import torch

from sglserve_kernels.attn_decode import decode_attention_ref
from sglserve_kernels.attn_extend import extend_attention_fwd, extend_attention_ref
from sglserve_kernels.testing import PagedKV, default_scale, randn

HAS_CUDA = torch.cuda.is_available()


def make_batch(prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, page_size, dtype, device, gen):
    """Pool holding prefix + new tokens' slots; the new tokens' K/V also as contiguous inputs."""
    seq_lens = [p + e for p, e in zip(prefix_lens, extend_lens)]
    kv = PagedKV(seq_lens, page_size, num_kv_heads, head_dim, dtype, device, gen)
    total = sum(extend_lens)
    q = randn(gen, total, num_heads, head_dim, dtype=dtype, device=device)
    k = randn(gen, total, num_kv_heads, head_dim, dtype=dtype, device=device)
    v = randn(gen, total, num_kv_heads, head_dim, dtype=dtype, device=device)
    starts = [0]
    for e in extend_lens[:-1]:
        starts.append(starts[-1] + e)
    # The new tokens' slots stay poisoned: the kernel must take their K/V from k/v.
    for i, p in enumerate(prefix_lens):
        new_slots = kv.slots[i][p:].to(device)
        kv.k_buffer[new_slots] = float("nan")
        kv.v_buffer[new_slots] = float("nan")
    i32 = dict(dtype=torch.int32, device=device)
    meta = (torch.tensor(prefix_lens, **i32), torch.tensor(extend_lens, **i32), torch.tensor(starts, **i32))
    return kv, q, k, v, meta


def run(kv, q, k, v, meta, max_extend_len, scale):
    o = torch.full_like(q, float("nan"))
    extend_attention_fwd(q, k, v, o, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices,
                         *meta, max_extend_len, scale)
    ref = extend_attention_ref(q, k, v, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, *meta, scale)
    return o, ref


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim,page_size,prefix_lens,extend_lens",
    [
        (4, 4, 64, 1, [0], [9]),                     # plain prefill, MHA
        (4, 4, 64, 16, [0, 0, 0], [1, 33, 70]),      # several blocks of queries
        (8, 2, 64, 4, [5, 0, 40], [3, 20, 1]),       # GQA 4, prefix hits, one-token extend
        (16, 2, 128, 16, [17, 64], [40, 15]),        # GQA 8, head dim 128, partial last page
        (8, 1, 64, 8, [30], [34]),                   # MQA
        (4, 2, 96, 2, [7, 3], [12, 5]),              # head dim 96 padded
    ],
)
def test_extend_matches_reference(num_heads, num_kv_heads, head_dim, page_size, prefix_lens, extend_lens, device, gen):
    kv, q, k, v, meta = make_batch(prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, page_size,
                                   torch.float32, device, gen)
    out, ref = run(kv, q, k, v, meta, max(extend_lens), default_scale(head_dim))
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_extend_strided_inputs(device, gen):
    """q, k, v as views of one fused qkv projection output (the model's layout)."""
    h, hkv, d = 8, 2, 64
    prefix_lens, extend_lens = [6, 0], [10, 25]
    kv, _, _, _, meta = make_batch(prefix_lens, extend_lens, h, hkv, d, 4, torch.float32, device, gen)
    qkv = randn(gen, sum(extend_lens), (h + 2 * hkv) * d, device=device)
    q = qkv[:, : h * d].view(-1, h, d)
    k = qkv[:, h * d:(h + hkv) * d].view(-1, hkv, d)
    v = qkv[:, (h + hkv) * d:].view(-1, hkv, d)
    out, ref = run(kv, q, k, v, meta, 25, 0.2)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_extend_of_one_token_equals_decode(device, gen):
    """The last token of a prefill attends like a decode step over the full sequence."""
    prefix_lens, extend_lens = [20, 3], [1, 1]
    kv, q, k, v, meta = make_batch(prefix_lens, extend_lens, 8, 2, 64, 4, torch.float32, device, gen)
    out, _ = run(kv, q, k, v, meta, 1, 0.125)
    for i, p in enumerate(prefix_lens):  # decode reads the new token from the pool
        slot = kv.slots[i][p:p + 1].to(device)
        kv.k_buffer[slot] = k[i:i + 1]
        kv.v_buffer[slot] = v[i:i + 1]
    dec = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, 0.125)
    torch.testing.assert_close(out, dec, atol=2e-5, rtol=1e-4)


def test_extend_grid_larger_than_needed(device, gen):
    """max_extend_len above the real maximum (e.g. a padded bound) changes nothing."""
    kv, q, k, v, meta = make_batch([4, 0], [5, 2], 4, 4, 64, 1, torch.float32, device, gen)
    out, ref = run(kv, q, k, v, meta, 100, 0.125)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_extend_fp16(device, gen):
    """Half precision through tl.dot on the CPU (bf16 tl.dot is wrong in the 3.9 interpreter: GPU only)."""
    kv, q, k, v, meta = make_batch([4, 30], [5, 40], 8, 2, 64, 4, torch.float16, device, gen)
    out, ref = run(kv, q, k, v, meta, 40, 0.125)
    torch.testing.assert_close(out, ref, atol=4e-3, rtol=4e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(32, 8, 128), (32, 32, 64), (28, 4, 128)])
def test_extend_bf16(num_heads, num_kv_heads, head_dim, gen):
    prefix_lens, extend_lens = [0, 100, 513, 16], [300, 1, 257, 1000]
    kv, q, k, v, meta = make_batch(prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, 16,
                                   torch.bfloat16, "cuda", gen)
    out, ref = run(kv, q, k, v, meta, max(extend_lens), default_scale(head_dim))
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


# ---- FP8 pool (--kv-cache-dtype fp8_e4m3) -----------------------------------------------

@pytest.mark.parametrize("k_scale,v_scale", [(1.0, 1.0), (0.03, 0.02)])
@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim,page_size,prefix_lens,extend_lens,q_dtype",
    [
        (4, 4, 64, 1, [0], [9], torch.float32),               # plain prefill: new tokens only
        (8, 2, 64, 4, [5, 0, 40], [3, 20, 1], torch.float32),  # GQA, prefix hits from the FP8 pool
        (4, 2, 96, 2, [7], [12], torch.float32),               # head dim 96 padded
        (8, 2, 64, 4, [33], [17], torch.float16),              # half q: widened to fp16 for tl.dot
    ],
)
def test_extend_fp8_kv_matches_reference(num_heads, num_kv_heads, head_dim, page_size, prefix_lens, extend_lens,
                                         q_dtype, k_scale, v_scale, device, gen):
    """Prefix K/V from an FP8 pool, new K/V rounded through the same store: the reference
    dequantizes the same bytes."""
    kv, q, k, v, meta = make_batch(prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, page_size,
                                   torch.float32, device, gen)
    kv.to_fp8(k_scale, v_scale)
    q = q.to(q_dtype)
    o = torch.full_like(q, float("nan"))
    extend_attention_fwd(q, k, v, o, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices,
                         *meta, max(extend_lens), 0.125, k_scale, v_scale)
    ref = extend_attention_ref(q, k, v, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, *meta,
                               0.125, k_scale, v_scale)
    tol = dict(atol=2e-5, rtol=1e-4) if q_dtype == torch.float32 else dict(atol=4e-3, rtol=4e-3)
    torch.testing.assert_close(o, ref, **tol)


def test_extend_fp8_kv_equals_decode_over_stored_pool(device, gen):
    """A token's K/V read the same in its own prefill as from the pool later: the last token of
    an FP8 prefill attends like FP8 decode over the pool after the store."""
    from sglserve_kernels.attn_decode import decode_attention
    from sglserve_kernels.kv_store import store_kv_cache

    prefix_lens, extend_lens = [20, 3], [1, 1]
    kv, q, k, v, meta = make_batch(prefix_lens, extend_lens, 8, 2, 64, 4, torch.float32, device, gen)
    kv.to_fp8(0.05, 0.04)
    o = torch.empty_like(q)
    extend_attention_fwd(q, k, v, o, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices,
                         *meta, 1, 0.125, 0.05, 0.04)
    loc = torch.cat([kv.slots[i][p:p + 1] for i, p in enumerate(prefix_lens)]).to(device)
    store_kv_cache(kv.k_buffer, kv.v_buffer, loc, k, v, 0.05, 0.04)
    dec = decode_attention(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, 0.125,
                           k_scale=0.05, v_scale=0.04)
    torch.testing.assert_close(o, dec, atol=2e-5, rtol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(32, 8, 128), (9, 3, 64)])
def test_extend_fp8_kv_bf16(num_heads, num_kv_heads, head_dim, gen):
    prefix_lens, extend_lens = [0, 300, 1000], [517, 64, 1]
    kv, q, k, v, meta = make_batch(prefix_lens, extend_lens, num_heads, num_kv_heads, head_dim, 16,
                                   torch.bfloat16, "cuda", gen)
    kv.to_fp8(0.02, 0.03)
    o = torch.empty_like(q)
    extend_attention_fwd(q, k, v, o, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices,
                         *meta, max(extend_lens), None, 0.02, 0.03)
    ref = extend_attention_ref(q, k, v, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, *meta,
                               None, 0.02, 0.03)
    torch.testing.assert_close(o.float(), ref.float(), atol=2e-2, rtol=2e-2)
