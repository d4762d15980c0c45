"""TritonAttnBackend vs the torch_native backend (and the kernels' references) on the same
ForwardBatches: prefill, prefill after a prefix hit (chunked prefill), then decode steps,
through the real ReqToTokenPool / MHATokenToKVPool / paged allocator."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Dict, List

import pytest
import torch

from sglserve.layers.attention.triton_backend import TritonAttnBackend, TritonDecodeMetadata
from sglserve.layers.radix_attention import RadixAttention
from sglserve.mem_cache.memory_pool import MHATokenToKVPool, PagedTokenToKVPoolAllocator, ReqToTokenPool
from sglserve.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglserve_kernels.attn_decode import decode_attention_ref
from sglserve_kernels.attn_extend import extend_attention_ref

try:
    from sglserve.layers.attention.torch_native_backend import TorchNativeAttnBackend
except ImportError:  # being written elsewhere; the kernel references still check us
    TorchNativeAttnBackend = None

H, KVH, D, LAYERS = 8, 2, 64, 2


def fake_runner(device, max_bs=4):
    return SimpleNamespace(
        model_config=SimpleNamespace(num_attention_heads=H, num_key_value_heads=KVH, head_dim=D),
        server_args=SimpleNamespace(cuda_graph_max_bs=max_bs, tp_size=1),
        device=device, max_running_requests=max_bs,
    )


class World:
    """Pools + allocator shared by the backends under test (each backend gets its own KV pool copy)."""

    def __init__(self, page_size: int, device: str, names: List[str], dtype: torch.dtype = torch.float32,
                 kv_scales=None):
        self.device = device
        self.r2t = ReqToTokenPool(8, 96, device)
        self.alloc = PagedTokenToKVPoolAllocator(512, page_size, "cpu")
        ks, vs = zip(*kv_scales) if kv_scales else (1.0, 1.0)
        self.kv: Dict[str, MHATokenToKVPool] = {
            n: MHATokenToKVPool(512, page_size, dtype, KVH, D, LAYERS, device, ks, vs) for n in names
        }
        for pool in self.kv.values():  # slots no request owns are poisoned; page 0 stays zero as
            for buf in pool.k_buffer + pool.v_buffer:  # torch_native reads it for padding (masked)
                buf[page_size:].fill_(float("nan"))
        self.rows = self.r2t.alloc(3)
        self.lens = [0, 0, 0]

    def step(self, new_lens: List[int], mode: ForwardMode, num_decoding: int = 0):
        prefix = list(self.lens)
        seq = [p + n for p, n in zip(prefix, new_lens)]
        last = [int(self.r2t.req_to_token[r, p - 1]) if p else 0 for r, p in zip(self.rows, prefix)]
        loc = self.alloc.alloc_extend(prefix, seq, last)
        cursor = 0
        for r, p, s in zip(self.rows, prefix, seq):
            self.r2t.req_to_token[r, p:s] = loc[cursor:cursor + s - p].to(self.device, torch.int32)
            cursor += s - p
        self.lens = seq
        ids = [1] * sum(new_lens)
        return lambda: ForwardBatch.build(mode, ids, self.rows, prefix, seq, loc, self.device,
                                          num_decoding=num_decoding)


def run_layers(backend, fb: ForwardBatch, pool, r2t, qkvs):
    fb.req_to_token_pool, fb.token_to_kv_pool, fb.attn_backend = r2t, pool, backend
    backend.init_forward_metadata(fb)
    outs = []
    for layer_id, qkv in enumerate(qkvs):
        layer = RadixAttention(H, D, D ** -0.5, KVH, layer_id)
        q, k, v = qkv.split([H * D, KVH * D, KVH * D], dim=-1)  # strided views, as in the models
        outs.append(layer(q, k, v, fb))
    return outs


def reference(fb: ForwardBatch, pool, r2t, qkvs):
    """Store with plain indexing, then the kernels' torch references."""
    outs = []
    for layer_id, qkv in enumerate(qkvs):
        q, k, v = qkv.split([H * D, KVH * D, KVH * D], dim=-1)
        pool.set_kv_buffer(layer_id, fb.out_cache_loc, k, v)
        kb, vb = pool.get_kv_buffer(layer_id)
        scales = pool.kv_scales(layer_id)
        q3 = q.reshape(-1, H, D)
        if fb.forward_mode.is_decode():
            o = decode_attention_ref(q3, kb, vb, r2t.req_to_token, fb.req_pool_indices, fb.seq_lens, D ** -0.5, *scales)
        else:
            # The new tokens were just stored (extend_prefix_lens marks them as not prefix)
            o = extend_attention_ref(q3, k.reshape(-1, KVH, D), v.reshape(-1, KVH, D), kb, vb, r2t.req_to_token,
                                     fb.req_pool_indices, fb.extend_prefix_lens, fb.extend_seq_lens,
                                     fb.extend_start_loc, D ** -0.5, *scales)
        outs.append(o.reshape(o.shape[0], -1))
    return outs


GPU_ONLY = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("page_size,dtype", [(1, torch.float32), (4, torch.float32), (16, torch.float32),
                                             pytest.param(16, torch.bfloat16, marks=GPU_ONLY)])
def test_backend_matches_torch_native_and_reference(page_size, dtype, device, gen):
    names = ["triton", "ref"] + (["native"] if TorchNativeAttnBackend is not None else [])
    world = World(page_size, device, names, dtype)
    tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    backends = {"triton": TritonAttnBackend(fake_runner(device))}
    if TorchNativeAttnBackend is not None:
        backends["native"] = TorchNativeAttnBackend(fake_runner(device))
    steps = [([5, 12, 3], ForwardMode.EXTEND, 0),      # prefill
             ([4, 1, 9], ForwardMode.EXTEND, 0),       # continues after a cached prefix (chunked prefill)
             ([1, 1, 1], ForwardMode.DECODE, 0),
             ([7, 1, 1], ForwardMode.EXTEND, 2),       # mixed: the last two decode (decode kernel) in an extend
             ([1, 6, 1], ForwardMode.EXTEND, 1),       # mixed, the prefill rows' own first one a single token
             ([1, 1, 1], ForwardMode.DECODE, 0)]
    for new_lens, mode, num_decoding in steps:
        make_fb = world.step(new_lens, mode, num_decoding)
        qkvs = [torch.randn(sum(new_lens), (H + 2 * KVH) * D, generator=gen).to(device, dtype) for _ in range(LAYERS)]
        want = reference(make_fb(), world.kv["ref"], world.r2t, qkvs)
        for name, backend in backends.items():
            got = run_layers(backend, make_fb(), world.kv[name], world.r2t, qkvs)
            for layer_id in range(LAYERS):
                torch.testing.assert_close(got[layer_id], want[layer_id], **tol,
                                           msg=lambda m: f"{name} {mode.name} layer {layer_id}: {m}")
                for buf in ("k_buffer", "v_buffer"):  # stores are exact copies; NaN marks untouched slots
                    a = getattr(world.kv[name], buf)[layer_id].nan_to_num(nan=12345.0)
                    b = getattr(world.kv["ref"], buf)[layer_id].nan_to_num(nan=12345.0)
                    assert torch.equal(a, b), f"{name} {mode.name} layer {layer_id}: {buf} differs"


def test_decode_metadata_is_stable_and_allocation_free(device):
    """Same batch size -> same scratch and split-count addresses, new values (CUDA-graph replay)."""
    backend = TritonAttnBackend(fake_runner(device, max_bs=8))

    def meta_for(seq_lens):
        fb = SimpleNamespace(forward_mode=ForwardMode.DECODE, batch_size=len(seq_lens),
                             seq_lens=torch.tensor(seq_lens, dtype=torch.int32, device=device), attn_metadata=None)
        backend.init_forward_metadata(fb)
        return fb.attn_metadata

    a = meta_for([1, 2, 3])
    a_splits = a.num_kv_splits.clone()
    b = meta_for([700, 2000, 3])
    assert isinstance(a, TritonDecodeMetadata)
    for name in ("num_kv_splits", "mid_o", "mid_lse"):
        assert getattr(a, name).data_ptr() == getattr(b, name).data_ptr()
        assert getattr(a, name).shape == getattr(b, name).shape
    assert a_splits.tolist() == [1, 1, 1] and b.num_kv_splits.tolist()[0] > 1
    big = meta_for([5] * 20)  # beyond max_bs: still works (allocates)
    assert big.mid_o.shape[0] == 20


@pytest.mark.parametrize("page_size,kv_scales", [(1, [(1.0, 1.0), (1.0, 1.0)]), (4, [(0.05, 0.03), (0.5, 2.0)])])
def test_backend_fp8_kv_matches_torch_native_and_reference(page_size, kv_scales, device, gen):
    """--kv-cache-dtype fp8_e4m3: the Triton store writes the torch store's bytes (per-layer scales)
    and its attention matches the torch_native backend reading the same FP8 pool."""
    fp8 = torch.float8_e4m3fn
    names = ["triton", "ref"] + (["native"] if TorchNativeAttnBackend is not None else [])
    world = World(page_size, device, names, fp8, kv_scales)
    backends = {"triton": TritonAttnBackend(fake_runner(device))}
    if TorchNativeAttnBackend is not None:
        backends["native"] = TorchNativeAttnBackend(fake_runner(device))
    steps = [([5, 12, 3], ForwardMode.EXTEND, 0), ([4, 1, 9], ForwardMode.EXTEND, 0),
             ([1, 1, 1], ForwardMode.DECODE, 0), ([6, 1, 1], ForwardMode.EXTEND, 2)]
    for new_lens, mode, num_decoding in steps:
        make_fb = world.step(new_lens, mode, num_decoding)
        qkvs = [torch.randn(sum(new_lens), (H + 2 * KVH) * D, generator=gen).to(device) for _ in range(LAYERS)]
        want = reference(make_fb(), world.kv["ref"], world.r2t, qkvs)
        for name, backend in backends.items():
            got = run_layers(backend, make_fb(), world.kv[name], world.r2t, qkvs)
            for layer_id in range(LAYERS):
                torch.testing.assert_close(got[layer_id], want[layer_id], atol=2e-5, rtol=1e-4,
                                           msg=lambda m: f"{name} {mode.name} layer {layer_id}: {m}")
                for buf in ("k_buffer", "v_buffer"):
                    a = getattr(world.kv[name], buf)[layer_id]
                    b = getattr(world.kv["ref"], buf)[layer_id]
                    assert a.dtype == fp8 and torch.equal(a.view(torch.uint8), b.view(torch.uint8)), \
                        f"{name} {mode.name} layer {layer_id}: {buf} differs"


@pytest.mark.parametrize("static", [None, 0.02])
def test_decode_hands_the_w8a8_o_proj_fp8_rows(static, device, gen):
    """A decode step asked for the o_proj's FP8 input (RadixAttention's fp8_output) returns
    numerics.Fp8Rows: its usual output quantized per token (or with the static scale) bit for bit.
    An extend step ignores the request and returns its output as usual."""
    from sglserve.layers.quantization.base import Fp8Input
    from sglserve_kernels.numerics import Fp8Rows, quantize_rows_ref

    world = World(4, device, ["plain", "fp8"])
    backend = TritonAttnBackend(fake_runner(device))
    scale = None if static is None else torch.tensor([static], device=device)
    for new_lens, mode in (([5, 12, 3], ForwardMode.EXTEND), ([1, 1, 1], ForwardMode.DECODE)):
        make_fb = world.step(new_lens, mode)
        qkv = torch.randn(sum(new_lens), (H + 2 * KVH) * D, generator=gen).to(device)
        outs = {}
        for name, fp8_output in (("plain", None), ("fp8", Fp8Input(scale))):
            fb = make_fb()
            fb.req_to_token_pool, fb.token_to_kv_pool, fb.attn_backend = world.r2t, world.kv[name], backend
            backend.init_forward_metadata(fb)
            q, k, v = qkv.split([H * D, KVH * D, KVH * D], dim=-1)
            outs[name] = RadixAttention(H, D, D ** -0.5, KVH, 0)(q, k, v, fb, fp8_output=fp8_output)
        if mode == ForwardMode.EXTEND:
            assert torch.equal(outs["fp8"], outs["plain"])
            continue
        rows = outs["fp8"]
        assert isinstance(rows, Fp8Rows) and rows.shape == outs["plain"].shape
        q_ref, s_ref = quantize_rows_ref(outs["plain"], scale, "tensor" if static is not None else "token")
        assert torch.equal(rows.scale, s_ref) and torch.equal(rows.q.view(torch.uint8), q_ref.view(torch.uint8))
