"""FlashInferAttnBackend vs the kernels' torch references on the ForwardBatches of
test_triton_backend (prefill, prefill after a cached prefix, decode), through the real pools, for
allocator pages of 1, 4 and 16 tokens (FlashInfer gets the pool's own pages), eager and CUDA-graph
decode plans; plus the library contract the backend relies on, checked on both implementations.

On the CPU the library is tests/kernels/fake_flashinfer.py (flashinfer-python 0.7.2.post1's
semantics, read from its source); with a GPU and flashinfer installed every test also runs on the
real library ("real" parameter), so a contract test that passes on both shows the fake is faithful.

The 4 failures on the H200 (flashinfer 0.7.2.post1, 4 failed / 7 passed): test_matches_reference
[real-16] and test_cuda_graph_plan_uses_stable_buffers[real] were recorded; the other two were, by
elimination, test_matches_reference[real-1] and [real-4] (the only other tests that reach the real
library; every fake test and the two library-free tests passed). All four had one cause: they ran
float32 first (the dtype list began with float32 and the graph test used World's float32 default),
and FlashInfer has no float32 kernels; plan() raises `KeyError: torch.float32` when it builds the
JIT module name. The old fake computed any dtype in torch, so the CPU suite could not see it.
Fixed by: the backend refuses a float32 model or pool with a clear ValueError (check_dtypes); the
tests run bf16 (and fp16 on the GPU); the fake raises the library's KeyError
(test_library_has_no_float32_kernels). Other mismatches between the old fake and the library, which
the tests did not trip but could hide bugs: it swallowed unknown keywords (**_) in constructors,
plan() and run() (the library: TypeError); it took the decode plan's optional arguments
positionally in its own order (the library: keyword-only, positional deprecated with another order)
and defaulted q_data_type to None (library: float16); it gave the prefill wrapper the decode
wrapper's buffer keywords (library: qo_indptr_buf, paged_kv_*_buf); it took the CUDA-graph batch
size from the indptr buffer and accepted no last_page_len buffer (library: the batch size is
len(last_page_len_buffer), every buffer must be a tensor, ValueError otherwise); it did not refuse a
plan for another batch size (ValueError); it cloned the plan's tensors (library: keeps
tensor.to(device), the caller's own tensor); it took only a tuple of 4-D caches in NHD (library:
3-D/4-D tuples or one 4-D/5-D [pages, 2, ...] tensor, NHD or HND).
"""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch

from sglserve.model_executor.forward_batch import ForwardMode
from sglserve_kernels.kv_indices import build_kv_indices, build_kv_indices_ref
from tests.kernels import fake_flashinfer
from tests.kernels.test_triton_backend import KVH, LAYERS, World, fake_runner, reference, run_layers

HAS_FLASHINFER = importlib.util.find_spec("flashinfer") is not None and torch.cuda.is_available()

STEPS = [([5, 12, 3], ForwardMode.EXTEND),  # prefill
         ([4, 1, 9], ForwardMode.EXTEND),   # continues after a cached prefix (chunked prefill)
         ([1, 1, 1], ForwardMode.DECODE),
         ([1, 1, 1], ForwardMode.DECODE)]
HQ, D = 8, 64


@pytest.fixture(params=["fake", pytest.param("real", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not HAS_FLASHINFER, reason="needs a CUDA GPU and flashinfer")])])
def fi(request, monkeypatch):
    """The flashinfer module under test (also installed as sys.modules["flashinfer"] for the backend)."""
    if request.param == "fake":
        monkeypatch.setitem(sys.modules, "flashinfer", fake_flashinfer.module())
    import flashinfer

    return flashinfer


def _backend(device, dtype, max_bs=4, pool_slots=512):
    from sglserve.layers.attention.flashinfer_backend import FlashInferAttnBackend

    runner = fake_runner(device, max_bs)
    runner.max_total_num_tokens, runner.dtype = pool_slots, dtype
    return FlashInferAttnBackend(runner)


def _dtypes(device):
    return [torch.bfloat16] if device == "cpu" else [torch.bfloat16, torch.float16]


TOL = dict(atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_matches_reference(fi, page_size, device, gen):
    for dtype in _dtypes(device):
        world = World(page_size, device, ["fi", "ref"], dtype)
        backend = _backend(device, dtype)
        for new_lens, mode in STEPS:
            make_fb = world.step(new_lens, mode)
            qkvs = [torch.randn(sum(new_lens), (HQ + 2 * KVH) * D, generator=gen).to(device, dtype)
                    for _ in range(LAYERS)]
            want = reference(make_fb(), world.kv["ref"], world.r2t, qkvs)
            got = run_layers(backend, make_fb(), world.kv["fi"], world.r2t, qkvs)
            for layer_id in range(LAYERS):
                torch.testing.assert_close(got[layer_id], want[layer_id], **TOL,
                                           msg=lambda m: f"{dtype} {mode.name} layer {layer_id}: {m}")


@pytest.mark.parametrize("page_size", [1, 16])
def test_cuda_graph_plan_uses_stable_buffers(fi, page_size, device, gen):
    """Static batches (extra["cuda_graph"]) plan into buffers allocated once: the same wrapper and
    indices address for a batch size across steps (crossing a 16-token page boundary), and the
    same results as the eager path."""
    dtype = torch.bfloat16
    world = World(page_size, device, ["graph", "ref"], dtype)
    backend = _backend(device, dtype, max_bs=4)
    make_fb = world.step([6, 3, 15], ForwardMode.EXTEND)
    qkvs = [torch.randn(24, (HQ + 2 * KVH) * D, generator=gen).to(device, dtype) for _ in range(LAYERS)]
    reference(make_fb(), world.kv["ref"], world.r2t, qkvs)
    run_layers(backend, make_fb(), world.kv["graph"], world.r2t, qkvs)
    wrappers, ptrs = set(), set()
    for _ in range(3):
        make_fb = world.step([1, 1, 1], ForwardMode.DECODE)
        qkvs = [torch.randn(3, (HQ + 2 * KVH) * D, generator=gen).to(device, dtype) for _ in range(LAYERS)]
        want = reference(make_fb(), world.kv["ref"], world.r2t, qkvs)
        fb = make_fb()
        fb.extra["cuda_graph"] = True
        got = run_layers(backend, fb, world.kv["graph"], world.r2t, qkvs)
        wrappers.add(id(fb.attn_metadata))
        ptrs.add(backend._graph_indices.data_ptr())
        assert fb.attn_metadata.is_cuda_graph_enabled
        for layer_id in range(LAYERS):
            torch.testing.assert_close(got[layer_id], want[layer_id], **TOL)
    assert len(wrappers) == 1 and len(ptrs) == 1
    assert fb.attn_metadata is not backend.decode_wrapper
    n = 3 + 1  # the graph wrapper reads the backend's buffers: indptr [bs + 1] in pages, last_page_len [bs]
    seq = world.lens
    pages = [-(-s // page_size) for s in seq]
    assert backend._graph_indptr[:n].tolist() == [0, pages[0], pages[0] + pages[1], sum(pages)]
    assert backend._graph_last_page_len[:3].tolist() == [s - (p - 1) * page_size for s, p in zip(seq, pages)]


def test_graph_batch_beyond_capture_size_is_refused(fi, device):
    backend = _backend(device, torch.bfloat16, max_bs=2)
    with pytest.raises(ValueError, match="CUDA-graph batch of 3"):
        backend._graph_wrapper(3)


def test_graph_replay_refused_beyond_indices_capacity(fi, device):
    backend = _backend(device, torch.bfloat16, max_bs=4, pool_slots=64)  # capacity 2 x 64 slots
    small = SimpleNamespace(seq_lens_cpu=[10, 20, 30])
    shared_prefixes = SimpleNamespace(seq_lens_cpu=[60, 60, 60])  # radix sharing: more slots than the pool
    assert backend.can_replay_graph(small)
    assert not backend.can_replay_graph(shared_prefixes)


def test_float32_is_refused_clearly(fi, device):
    with pytest.raises(ValueError, match="no float32 kernels.*--attention-backend triton"):
        _backend(device, torch.float32)


def test_missing_flashinfer_is_a_clear_error(monkeypatch, device):
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # import flashinfer -> ImportError
    with pytest.raises(ImportError, match="pip install flashinfer-python"):
        _backend(device, torch.bfloat16)


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_build_kv_indices_matches_reference(page_size, device, gen):
    r2t = torch.randint(0, 10_000, (6, 300), generator=gen, dtype=torch.int32).to(device)
    for lens in ([1, 17, 300], [16, 32, 5, 64, 1], [299]):
        rows = torch.randperm(6, generator=gen)[: len(lens)].to(device)
        seq = torch.tensor(lens, dtype=torch.int32, device=device)
        pages = torch.tensor([-(-n // page_size) for n in lens])
        indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
        indptr[1:] = pages.cumsum(0)
        indptr = indptr.to(device)
        got = torch.full((int(indptr[-1]) + 3,), -7, dtype=torch.int32, device=device)
        want = got.clone()
        build_kv_indices(r2t, rows, seq, indptr, got, page_size=page_size)
        build_kv_indices_ref(r2t, rows, seq, indptr, want, page_size=page_size)
        assert torch.equal(got, want) and got[-3:].eq(-7).all()


# ---- the library contract (fake and real alike) ----------------------------------------------------


def _problem(device, dtype, page_size, lens, gen):
    """A paged cache with shuffled pages and a reference attention output for one decode step."""
    pages = [-(-n // page_size) for n in lens]
    perm = torch.randperm(sum(pages) + 2, generator=gen)[: sum(pages)] + 1
    indptr = torch.zeros(len(lens) + 1, dtype=torch.int32)
    indptr[1:] = torch.tensor(pages).cumsum(0)
    last = torch.tensor([n - (p - 1) * page_size for n, p in zip(lens, pages)], dtype=torch.int32)
    k = torch.randn(sum(pages) + 3, page_size, KVH, D, generator=gen).to(device, dtype)
    v = torch.randn(sum(pages) + 3, page_size, KVH, D, generator=gen).to(device, dtype)
    q = torch.randn(len(lens), HQ, D, generator=gen).to(device, dtype)
    want = []
    for i, n in enumerate(lens):
        ks = k[perm[indptr[i]:indptr[i + 1]].to(device)].reshape(-1, KVH, D)[:n].float().repeat_interleave(HQ // KVH, 1)
        vs = v[perm[indptr[i]:indptr[i + 1]].to(device)].reshape(-1, KVH, D)[:n].float().repeat_interleave(HQ // KVH, 1)
        p = (torch.einsum("hd,lhd->hl", q[i].float(), ks) * D ** -0.5).softmax(-1)
        want.append(torch.einsum("hl,lhd->hd", p, vs))
    return q, k, v, indptr, perm.to(torch.int32), last, torch.stack(want).to(dtype)


def _ws(device):
    return torch.zeros(128 * 1024 * 1024 if device == "cuda" else 1024, dtype=torch.uint8, device=device)


@pytest.mark.parametrize("page_size", [1, 16])
def test_library_decode_layouts_and_last_page_len(fi, page_size, device, gen):
    """kv_len = (pages - 1) * page_size + last_page_len; the (k, v) tuple, one [pages, 2, ...]
    tensor and the HND layout give the same attention."""
    lens = [1, 15, 16, 17, 40]
    q, k, v, indptr, indices, last, want = _problem(device, torch.bfloat16, page_size, lens, gen)
    plan = dict(q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16, sm_scale=D ** -0.5)
    for layout, cache in (("NHD", (k, v)), ("NHD", torch.stack([k, v], 1)),
                          ("HND", (k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()))):
        w = fi.BatchDecodeWithPagedKVCacheWrapper(_ws(device), layout)
        w.plan(indptr, indices.to(device), last, HQ, KVH, D, page_size, **plan)
        torch.testing.assert_close(w.run(q, cache), want, **TOL, msg=lambda m: f"{layout}: {m}")
    if page_size == 1:  # pages of one token may also be passed as 3-D [slots, heads, dim]
        w.plan(indptr, indices.to(device), last, HQ, KVH, D, 1, **plan)
        w2 = fi.BatchDecodeWithPagedKVCacheWrapper(_ws(device), "NHD")
        w2.plan(indptr, indices.to(device), last, HQ, KVH, D, 1, **plan)
        torch.testing.assert_close(w2.run(q, (k[:, 0], v[:, 0])), want, **TOL)


def test_library_has_no_float32_kernels(fi, device, gen):
    """What failed the four H200 tests: plan() for float32 raises KeyError (the JIT module's name)."""
    q, k, v, indptr, indices, last, _ = _problem(device, torch.float32, 1, [3, 5], gen)
    w = fi.BatchDecodeWithPagedKVCacheWrapper(_ws(device), "NHD")
    with pytest.raises(KeyError):
        w.plan(indptr, indices.to(device), last, HQ, KVH, D, 1, q_data_type=torch.float32, kv_data_type=torch.float32)
    p = fi.BatchPrefillWithPagedKVCacheWrapper(_ws(device), "NHD")
    with pytest.raises(KeyError):
        p.plan(torch.tensor([0, 1, 2], dtype=torch.int32), indptr, indices.to(device), last, HQ, KVH, D, 1,
               causal=True, q_data_type=torch.float32)


def test_library_run_checks_planned_dtype_and_keywords(fi, device, gen):
    q, k, v, indptr, indices, last, _ = _problem(device, torch.bfloat16, 1, [3, 5], gen)
    w = fi.BatchDecodeWithPagedKVCacheWrapper(_ws(device), "NHD")
    w.plan(indptr, indices.to(device), last, HQ, KVH, D, 1)  # q_data_type defaults to float16
    with pytest.raises(ValueError, match="dtype of q"):
        w.run(q, (k, v))
    with pytest.raises(TypeError):
        w.plan(indptr, indices.to(device), last, HQ, KVH, D, 1, causal=True)  # decode plan has no `causal`
    with pytest.raises(TypeError):  # the prefill wrapper's buffer keywords are *_buf, not *_buffer
        fi.BatchPrefillWithPagedKVCacheWrapper(_ws(device), "NHD", paged_kv_indptr_buffer=indptr)


def test_library_cuda_graph_wrapper_contract(fi, device, gen):
    """Buffers at construction fix the batch size (len(last_page_len_buffer)); plan copies into
    them; another batch size, or more indices than the buffer holds, is a ValueError."""
    q, k, v, indptr, indices, last, want = _problem(device, torch.bfloat16, 16, [5, 40, 17], gen)
    bufs = dict(paged_kv_indptr_buffer=torch.zeros(4, dtype=torch.int32, device=device),
                paged_kv_indices_buffer=torch.zeros(8, dtype=torch.int32, device=device),
                paged_kv_last_page_len_buffer=torch.zeros(3, dtype=torch.int32, device=device))
    with pytest.raises(ValueError):
        fi.BatchDecodeWithPagedKVCacheWrapper(_ws(device), "NHD", use_cuda_graph=True,
                                              **{**bufs, "paged_kv_last_page_len_buffer": None})
    with pytest.raises(ValueError):
        fi.BatchDecodeWithPagedKVCacheWrapper(_ws(device), "NHD", use_cuda_graph=True,
                                              **{**bufs, "paged_kv_indptr_buffer": bufs["paged_kv_indptr_buffer"][:3]})
    w = fi.BatchDecodeWithPagedKVCacheWrapper(_ws(device), "NHD", use_cuda_graph=True, **bufs)
    plan = dict(q_data_type=torch.bfloat16, sm_scale=D ** -0.5)
    w.plan(indptr, indices.to(device), last, HQ, KVH, D, 16, **plan)
    assert bufs["paged_kv_indptr_buffer"].tolist() == indptr.tolist()
    assert bufs["paged_kv_last_page_len_buffer"].tolist() == last.tolist()
    assert bufs["paged_kv_indices_buffer"][: len(indices)].tolist() == indices.tolist()
    torch.testing.assert_close(w.run(q, (k, v)), want, **TOL)
    with pytest.raises(ValueError, match="batch size"):
        w.plan(indptr[:3], indices[: int(indptr[2])].to(device), last[:2], HQ, KVH, D, 16, **plan)
    with pytest.raises(ValueError):
        w.plan(torch.tensor([0, 3, 6, 9], dtype=torch.int32), torch.zeros(9, dtype=torch.int32, device=device),
               last, HQ, KVH, D, 16, **plan)
