"""Decode attention (split-KV flash-decoding over the paged pool) vs its torch reference."""

from __future__ import annotations

import pytest
import torch

from sglserve_kernels.attn_decode import (
    MIN_TOKENS_PER_SPLIT,
    decode_attention,
    decode_attention_fwd,
    decode_attention_ref,
    decode_kv_splits,
)
from sglserve_kernels.testing import PagedKV, default_scale, randn

HAS_CUDA = torch.cuda.is_available()


def run_fwd(q, kv: PagedKV, num_kv_splits, max_kv_splits, sm_scale):
    """decode_attention_fwd with output and scratch poisoned first."""
    bs, h, d = q.shape
    o = torch.full_like(q, float("nan"))
    mid_o = torch.full((bs, h, max_kv_splits, d), float("nan"), device=q.device)
    mid_lse = torch.full((bs, h, max_kv_splits), float("nan"), device=q.device)
    return decode_attention_fwd(q, kv.k_buffer, kv.v_buffer, o, kv.req_to_token, kv.req_pool_indices,
                                kv.seq_lens, num_kv_splits, mid_o, mid_lse, sm_scale)


@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim,page_size,seq_lens",
    [
        (4, 4, 64, 1, [1, 17, 70]),          # MHA, dot-free path
        (8, 2, 64, 4, [5, 64, 65, 130]),     # GQA 4
        (16, 2, 128, 16, [1, 33, 200]),      # GQA 8, head dim 128
        (8, 8, 128, 16, [40]),               # MHA, d 128
        (8, 1, 64, 8, [3, 100]),             # MQA (group 8)
        (32, 1, 64, 1, [9, 77]),             # group 32 (two 16-row blocks)
        (4, 1, 80, 4, [13, 50]),             # head dim 80 padded to 128
    ],
)
def test_decode_matches_reference(num_heads, num_kv_heads, head_dim, page_size, seq_lens, device, gen):
    kv = PagedKV(seq_lens, page_size, num_kv_heads, head_dim, torch.float32, device, gen)
    q = randn(gen, len(seq_lens), num_heads, head_dim, device=device)
    scale = default_scale(head_dim)
    splits = decode_kv_splits(kv.seq_lens, num_kv_heads, 8)
    out = run_fwd(q, kv, splits, 8, scale)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, scale)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("splits", [[1, 1, 1], [2, 3, 4], [8, 8, 8], [7, 1, 5]])
def test_decode_any_split_count(splits, device, gen):
    """Forced split counts, including more splits than a short request can fill (empty splits)."""
    seq_lens = [3, 50, 129]
    kv = PagedKV(seq_lens, 4, 2, 64, torch.float32, device, gen)
    q = randn(gen, 3, 8, 64, device=device)
    n = torch.tensor(splits, dtype=torch.int32, device=device)
    out = run_fwd(q, kv, n, 8, 0.3)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, 0.3)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)


def test_decode_strided_q_and_empty_row(device, gen):
    """q as a view into a fused qkv buffer (row stride > H*D); a seq_len 0 row gives zeros."""
    seq_lens = [0, 20, 7]
    kv = PagedKV(seq_lens, 2, 2, 64, torch.float32, device, gen)
    qkv = randn(gen, 3, (8 + 2 * 2) * 64, device=device)
    q = qkv[:, : 8 * 64].view(3, 8, 64)
    out = decode_attention(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    torch.testing.assert_close(out, ref, atol=2e-5, rtol=1e-4)
    assert torch.all(out[0] == 0)


def test_decode_kv_splits_heuristic(device):
    seq_lens = torch.tensor([1, 64, 65, 1000, 100000], dtype=torch.int32, device=device)
    s = decode_kv_splits(seq_lens, num_kv_heads=1, max_kv_splits=16, num_sms=132)
    assert s.dtype == torch.int32 and s.device == seq_lens.device
    assert s.tolist() == [1, 1, 2, 16, 16]
    # A big batch already fills the GPU: one split each
    big = torch.full((512,), 4096, dtype=torch.int32, device=device)
    assert decode_kv_splits(big, 8, 16, num_sms=132).max().item() == 1
    # Writes into a preallocated buffer (CUDA-graph use) and returns the first bs entries
    buf = torch.zeros(8, dtype=torch.int32, device=device)
    out = decode_kv_splits(seq_lens[:3], 1, 16, out=buf, num_sms=132)
    assert out.data_ptr() == buf.data_ptr() and buf[:3].tolist() == [1, 1, 2]
    assert MIN_TOKENS_PER_SPLIT == 64


def test_decode_reference_is_attention(gen):
    """The reference itself against a dense softmax(q k^T) v on one request (guards the guard)."""
    kv = PagedKV([10], 1, 1, 16, torch.float32, "cpu", gen)
    q = randn(gen, 1, 2, 16)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, 0.25)
    k = kv.k_buffer[kv.slots[0], 0]
    v = kv.v_buffer[kv.slots[0], 0]
    dense = torch.softmax(q[0] @ k.T * 0.25, -1) @ v
    torch.testing.assert_close(ref[0], dense)


@pytest.mark.parametrize("num_heads,num_kv_heads", [(8, 2), (4, 4)])
def test_decode_fp16(num_heads, num_kv_heads, device, gen):
    """Half precision through tl.dot on the CPU too (the Triton 3.9 interpreter computes bf16
    tl.dot wrongly, so bf16 is checked on the GPU only; fp16 exercises the same casts)."""
    kv = PagedKV([5, 70, 129], 4, num_kv_heads, 64, torch.float16, device, gen)
    q = randn(gen, 3, num_heads, 64, dtype=torch.float16, device=device)
    out = decode_attention(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    torch.testing.assert_close(out, ref, atol=4e-3, rtol=4e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(32, 8, 128), (32, 32, 64), (28, 4, 128)])
def test_decode_bf16(num_heads, num_kv_heads, head_dim, gen):
    seq_lens = [1, 300, 2048, 4097]
    kv = PagedKV(seq_lens, 16, num_kv_heads, head_dim, torch.bfloat16, "cuda", gen)
    q = randn(gen, len(seq_lens), num_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    out = decode_attention(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)


# ---- FP8 pool (--kv-cache-dtype fp8_e4m3): the reference dequantizes the same bytes -----

FP8_SCALES = [(1.0, 1.0), (0.03, 0.02)]  # default, and calibrated-like scales (stored values ~ +-100)


@pytest.mark.parametrize("k_scale,v_scale", FP8_SCALES)
@pytest.mark.parametrize(
    "num_heads,num_kv_heads,head_dim,page_size,seq_lens,q_dtype",
    [
        (4, 4, 64, 1, [1, 17, 70], torch.float32),     # MHA, dot-free path
        (8, 2, 64, 4, [5, 65, 130], torch.float32),    # GQA 4, several splits
        (4, 1, 80, 4, [13, 50], torch.float32),        # MQA, head dim 80 padded
        (8, 2, 64, 4, [5, 70], torch.float16),         # half q: K/V widened to fp16 for tl.dot
    ],
)
def test_decode_fp8_kv_matches_reference(num_heads, num_kv_heads, head_dim, page_size, seq_lens, q_dtype,
                                         k_scale, v_scale, device, gen):
    kv = PagedKV(seq_lens, page_size, num_kv_heads, head_dim, torch.float32, device, gen).to_fp8(k_scale, v_scale)
    assert kv.k_buffer.dtype == torch.float8_e4m3fn
    q = randn(gen, len(seq_lens), num_heads, head_dim, dtype=q_dtype, device=device)
    scale = default_scale(head_dim)
    splits = decode_kv_splits(kv.seq_lens, num_kv_heads, 8)
    o = torch.full_like(q, float("nan"))
    mid_o = torch.full((len(seq_lens), num_heads, 8, head_dim), float("nan"), device=device)
    mid_lse = torch.full((len(seq_lens), num_heads, 8), float("nan"), device=device)
    out = decode_attention_fwd(q, kv.k_buffer, kv.v_buffer, o, kv.req_to_token, kv.req_pool_indices, kv.seq_lens,
                               splits, mid_o, mid_lse, scale, k_scale, v_scale)
    ref = decode_attention_ref(q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens,
                               scale, k_scale, v_scale)
    tol = dict(atol=2e-5, rtol=1e-4) if q_dtype == torch.float32 else dict(atol=4e-3, rtol=4e-3)
    torch.testing.assert_close(out, ref, **tol)


def test_decode_fp8_kv_scales_are_applied(device, gen):
    """The scales matter: the same bytes under other scales give the reference's other answer
    (guards against a kernel that ignores them, which scale 1.0 alone would not catch)."""
    kv = PagedKV([40, 90], 4, 2, 64, torch.float32, device, gen).to_fp8(1.0, 1.0)
    q = randn(gen, 2, 8, 64, device=device)
    args = (q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens, 0.125)
    plain = decode_attention(*args)
    scaled = decode_attention(*args, k_scale=0.5, v_scale=3.0)
    torch.testing.assert_close(scaled, decode_attention_ref(*args, k_scale=0.5, v_scale=3.0), atol=2e-5, rtol=1e-4)
    assert not torch.allclose(plain, scaled, atol=1e-2)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(32, 8, 128), (32, 32, 64), (9, 3, 64)])
def test_decode_fp8_kv_bf16(num_heads, num_kv_heads, head_dim, gen):
    seq_lens = [1, 300, 2048, 4097]
    kv = PagedKV(seq_lens, 16, num_kv_heads, head_dim, torch.float32, "cuda", gen).to_fp8(0.02, 0.03)
    q = randn(gen, len(seq_lens), num_heads, head_dim, dtype=torch.bfloat16, device="cuda")
    args = (q, kv.k_buffer, kv.v_buffer, kv.req_to_token, kv.req_pool_indices, kv.seq_lens)
    out = decode_attention(*args, k_scale=0.02, v_scale=0.03)
    ref = decode_attention_ref(*args, k_scale=0.02, v_scale=0.03)
    torch.testing.assert_close(out.float(), ref.float(), atol=2e-2, rtol=2e-2)
