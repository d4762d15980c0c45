"""FlashInferAttnBackend vs the kernels' torch references on the ForwardBatches of
test_triton_backend (prefill, prefill after a cached prefix, decode), through the real pools.

On the CPU the library is replaced by tests/kernels/fake_flashinfer.py (FlashInfer's documented
semantics in torch): that checks everything our backend computes and hands over (the CSR page
table from req_to_token, indptr, causal extend, the CUDA-graph buffers and their stable
addresses). With a GPU and flashinfer installed the same checks run on the real library."""

from __future__ import annotations

import importlib.util
import sys
from types import SimpleNamespace

import pytest
import torch

from sglserve.model_executor.forward_batch import ForwardMode
from tests.kernels import fake_flashinfer
from tests.kernels.test_triton_backend import KVH, LAYERS, World, fake_runner, reference, run_layers

HAS_FLASHINFER = importlib.util.find_spec("flashinfer") is not None and torch.cuda.is_available()

STEPS = [([5, 12, 3], ForwardMode.EXTEND),  # prefill
         ([4, 1, 9], ForwardMode.EXTEND),   # continues after a cached prefix (chunked prefill)
         ([1, 1, 1], ForwardMode.DECODE),
         ([1, 1, 1], ForwardMode.DECODE)]


@pytest.fixture(params=["fake", pytest.param("real", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not HAS_FLASHINFER, reason="needs a CUDA GPU and flashinfer")])])
def flashinfer_impl(request, monkeypatch):
    if request.param == "fake":
        monkeypatch.setitem(sys.modules, "flashinfer", fake_flashinfer.module())
    return request.param


def _backend(device, max_bs=4, pool_slots=512):
    from sglserve.layers.attention.flashinfer_backend import FlashInferAttnBackend

    runner = fake_runner(device, max_bs)
    runner.max_total_num_tokens = pool_slots
    return FlashInferAttnBackend(runner)


def _dtypes(device):
    return [torch.float32] if device == "cpu" else [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("page_size", [1, 4, 16])
def test_matches_reference(flashinfer_impl, page_size, device, gen):
    for dtype in _dtypes(device):
        world = World(page_size, device, ["fi", "ref"], dtype)
        backend = _backend(device)
        tol = dict(atol=2e-5, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
        for new_lens, mode in STEPS:
            make_fb = world.step(new_lens, mode)
            qkvs = [torch.randn(sum(new_lens), (8 + 2 * KVH) * 64, generator=gen).to(device, dtype)
                    for _ in range(LAYERS)]
            want = reference(make_fb(), world.kv["ref"], world.r2t, qkvs)
            got = run_layers(backend, make_fb(), world.kv["fi"], world.r2t, qkvs)
            for layer_id in range(LAYERS):
                torch.testing.assert_close(got[layer_id], want[layer_id], **tol,
                                           msg=lambda m: f"{dtype} {mode.name} layer {layer_id}: {m}")


def test_cuda_graph_plan_uses_stable_buffers(flashinfer_impl, device, gen):
    """Static batches (extra["cuda_graph"]) plan into buffers allocated once: the same wrapper and
    indices address for a batch size across steps, and the same results as the eager path."""
    world = World(1, device, ["graph", "ref"])
    backend = _backend(device, max_bs=4)
    make_fb = world.step([6, 3, 9], ForwardMode.EXTEND)
    qkvs = [torch.randn(18, (8 + 2 * KVH) * 64, generator=gen).to(device) for _ in range(LAYERS)]
    reference(make_fb(), world.kv["ref"], world.r2t, qkvs)
    run_layers(backend, make_fb(), world.kv["graph"], world.r2t, qkvs)
    wrappers, ptrs = set(), set()
    for _ in range(3):
        make_fb = world.step([1, 1, 1], ForwardMode.DECODE)
        qkvs = [torch.randn(3, (8 + 2 * KVH) * 64, generator=gen).to(device) for _ in range(LAYERS)]
        want = reference(make_fb(), world.kv["ref"], world.r2t, qkvs)
        fb = make_fb()
        fb.extra["cuda_graph"] = True
        got = run_layers(backend, fb, world.kv["graph"], world.r2t, qkvs)
        wrappers.add(id(fb.attn_metadata))
        ptrs.add(backend._graph_indices.data_ptr())
        for layer_id in range(LAYERS):
            torch.testing.assert_close(got[layer_id], want[layer_id], atol=2e-5, rtol=1e-4)
    assert len(wrappers) == 1 and len(ptrs) == 1
    assert fb.attn_metadata is not backend.decode_wrapper


def test_graph_replay_refused_beyond_indices_capacity(flashinfer_impl, device):
    backend = _backend(device, max_bs=4, pool_slots=64)  # capacity 2 x 64 slots
    small = SimpleNamespace(seq_lens_cpu=[10, 20, 30])
    shared_prefixes = SimpleNamespace(seq_lens_cpu=[60, 60, 60])  # radix sharing: more slots than the pool
    assert backend.can_replay_graph(small)
    assert not backend.can_replay_graph(shared_prefixes)


def test_missing_flashinfer_is_a_clear_error(monkeypatch, device):
    monkeypatch.setitem(sys.modules, "flashinfer", None)  # import flashinfer -> ImportError
    with pytest.raises(ImportError, match="pip install flashinfer-python"):
        _backend(device)
