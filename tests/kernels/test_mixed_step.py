"""Mixed steps on the Triton backend: the decoding requests of an extend pass go through the
decode kernel and the prefill ones through the extend kernel (equal to the kernels' torch
references), with the same Triton specializations every step, and the start-up warm-up
(sglserve/model_executor/warmup.py) meets every specialization a later mixed step uses: no
kernel compiles mid-serving (RESULTS.md R8's ~4 s stall).

Keys are Triton's own specialization of each launch (kernels/testing.specialization_key), so
this runs on the CPU interpreter, where nothing is compiled."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

import sglserve_kernels.attn_decode as attn_decode
import sglserve_kernels.attn_extend as attn_extend
from sglserve.configs.model_config import ModelConfig
from sglserve.layers.attention import create_attn_backend
from sglserve.layers.attention import triton_backend
from sglserve.layers.attention.triton_backend import TritonAttnBackend
from sglserve.model_executor.forward_batch import ForwardMode
from sglserve.model_executor.model_runner import ModelRunner
from sglserve.model_executor.warmup import largest_step, synthetic_extend_batch, warm_up_extend, warmup_shapes
from sglserve.server_args import ServerArgs
from sglserve_kernels.testing import LaunchRecorder, specialization_key
from tests.kernels.test_triton_backend import H, KVH, LAYERS, D, World, fake_runner, reference, run_layers

try:
    specialization_key([torch.zeros(1)], {})
except ImportError:  # Triton before 3.4: no native_specialize_impl
    pytest.skip("this Triton has no native_specialize_impl", allow_module_level=True)


@pytest.fixture
def recorders(monkeypatch):
    recs = {name: LaunchRecorder(getattr(mod, name)) for mod, name in
            ((attn_decode, "_decode_stage1"), (attn_decode, "_decode_stage2"), (attn_extend, "_extend_attn"))}
    for name, rec in recs.items():
        monkeypatch.setattr(attn_decode if name.startswith("_decode") else attn_extend, name, rec)
    return recs


def test_mixed_step_splits_and_matches_reference(recorders, device, gen):
    """Mixed steps with 1 and 2 prefill requests: the extend kernel's grid holds only the prefill
    requests, the decode kernel's only the decoding ones, the outputs equal the references, and
    the decoding rows' K/V written in the same pass are read back from the pool."""
    world = World(1, device, ["triton", "ref"])
    backend = TritonAttnBackend(fake_runner(device))
    steps = [([5, 12, 3], ForwardMode.EXTEND, 0), ([1, 1, 1], ForwardMode.DECODE, 0),
             ([6, 1, 1], ForwardMode.EXTEND, 2), ([3, 7, 1], ForwardMode.EXTEND, 1),
             ([1, 1, 1], ForwardMode.DECODE, 0), ([1, 2, 1], ForwardMode.EXTEND, 1)]
    for new_lens, mode, k in steps:
        make_fb = world.step(new_lens, mode, k)
        qkvs = [torch.randn(sum(new_lens), (H + 2 * KVH) * D, generator=gen).to(device) for _ in range(LAYERS)]
        want = reference(make_fb(), world.kv["ref"], world.r2t, qkvs)
        for rec in recorders.values():
            rec.launches.clear()
        got = run_layers(backend, make_fb(), world.kv["triton"], world.r2t, qkvs)
        for layer_id in range(LAYERS):
            torch.testing.assert_close(got[layer_id], want[layer_id], atol=2e-5, rtol=1e-4)
        ext, dec = recorders["_extend_attn"].launches, recorders["_decode_stage1"].launches
        if mode.is_extend():
            assert [g[0] for g, _ in ext] == [len(new_lens) - k] * LAYERS
            assert [g[0] for g, _ in dec] == ([k] * LAYERS if k else [])


def test_every_step_uses_one_specialization(recorders, device, gen, monkeypatch):
    """Over prefill, decode and mixed steps of varying shape each kernel has a single key: the
    decoding rows sliced out of the batch's columns would start 8 (int64 rows) or 4 (int32
    lengths) bytes off 16-byte alignment for some prefill counts, a variant of their own. (The
    split count, whose strides specialize too, is held at its maximum here by plenty of SMs;
    test_warmup_covers_every_later_mixed_step covers its variants.)"""
    monkeypatch.setattr(triton_backend, "num_sms", lambda *args: 1024)
    world = World(1, device, ["triton"])
    backend = TritonAttnBackend(fake_runner(device))
    steps = [([5, 12, 3], ForwardMode.EXTEND, 0), ([1, 1, 1], ForwardMode.DECODE, 0),
             ([6, 1, 1], ForwardMode.EXTEND, 2), ([3, 7, 1], ForwardMode.EXTEND, 1),
             ([2, 1, 1], ForwardMode.EXTEND, 2), ([1, 1, 1], ForwardMode.DECODE, 0), ([9, 2, 1], ForwardMode.EXTEND, 1)]
    for new_lens, mode, k in steps:
        fb = world.step(new_lens, mode, k)()
        qkvs = [torch.randn(sum(new_lens), (H + 2 * KVH) * D, generator=gen).to(device) for _ in range(LAYERS)]
        run_layers(backend, fb, world.kv["triton"], world.r2t, qkvs)
    for name, rec in recorders.items():
        assert len(rec.keys()) == 1, f"{name}: {len(rec.keys())} specializations"
    # The test can tell: a decode row slice at an odd request offset is a key of its own
    seq_lens = torch.arange(4, dtype=torch.int32)
    assert specialization_key([seq_lens[1:]], {}) != specialization_key([seq_lens[1:].clone()], {})


@pytest.fixture(scope="module")
def tiny_runner(tmp_path_factory):
    """A one-layer Llama ModelRunner on the CPU with the Triton backend swapped in (ServerArgs
    refuses triton on --device cpu: tests/kernels/test_triton_fp8_model.py does the same)."""
    folder = tmp_path_factory.mktemp("tiny_llama_mixed")
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4 * 32,
           "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4,
           "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 512,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(cfg))
    sa = ServerArgs(model_path=str(folder), load_format="dummy", device="cpu", dtype="float32",
                    max_total_tokens=1024, max_running_requests=4, context_length=256, skip_tokenizer_init=True,
                    chunked_prefill_size=16)
    runner = ModelRunner(ModelConfig.from_server_args(sa), sa)
    runner.attn_backend = create_attn_backend("triton", runner)
    return runner


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                    reason="a CPU ModelRunner driving Triton: the interpreter's; on the GPU profile_mixed.py "
                           "counts the compiles of the first mixed step after the server's warm-up")
def test_warmup_covers_every_later_mixed_step(tiny_runner, recorders):
    """warm_up_extend runs prefill and mixed forwards through the Triton backend (decoding rows in
    the decode kernel), and mixed steps of other shapes afterwards meet no new specialization."""
    counts = tiny_runner.attn_backend.warmup_decoding_counts(tiny_runner.max_running_requests)
    assert counts == [1, 2, 3, 4]  # 8 SMs on the interpreter, 2 KV heads: 8, 4, 3, 2 splits
    n = warm_up_extend(tiny_runner)
    assert n == len(warmup_shapes(counts)) + 1 == 1 + 5 + 1  # + the largest step: 16 tokens beside 4 rows
    assert largest_step(tiny_runner) == (16, 4)
    decode_rows = {g[0] for g, _ in recorders["_decode_stage1"].launches}
    assert decode_rows == set(counts), decode_rows
    warm = {name: rec.keys() for name, rec in recorders.items()}
    assert all(warm.values())
    for n_prefill, k in [(3, 1), (5, 2), (7, 3), (12, 4), (17, 1), (32, 3), (33, 2), (6, 4)]:
        out = tiny_runner.forward(synthetic_extend_batch(n_prefill, k, tiny_runner.device))
        assert out.next_token_logits.shape[0] == 1 + k and torch.isfinite(out.next_token_logits).all()
    for name, rec in recorders.items():
        assert rec.keys() <= warm[name], f"{name}: a mixed step after the warm-up met a new specialization"


def test_warmup_shapes_cover_alignments_and_decode_counts():
    shapes = warmup_shapes([1, 2, 3, 5, 9, 17, 33])
    assert shapes[0] == (1, 0)  # a plain prefill
    assert {n for n, _ in shapes} == {1, 2, 4, 8, 16}
    assert [k for _, k in shapes[1:]] == [1, 2, 3, 5, 9, 17, 33]
    assert warmup_shapes([1, 4]) == [(1, 0), (1, 1), (2, 4), (4, 1), (8, 1), (16, 1)]


def test_triton_decoding_counts_cover_every_split_count(device):
    backend = TritonAttnBackend(fake_runner(device, max_bs=64))
    counts = backend.warmup_decoding_counts(64)
    splits = {backend._splits_for(bs) for bs in range(1, 65)}
    assert sorted(backend._splits_for(k) for k in counts) == sorted(splits, ) and len(counts) == len(splits)
    assert counts[0] == 1 and backend.warmup_decoding_counts(2) == [k for k in counts if k <= 2]


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="--dry runs on the Triton interpreter")
def test_profile_mixed_dry_run(capsys):
    """benchmarks/kernels/profile_mixed.py --dry: the stage's mixed-step profile on tiny shapes."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "kernels", "profile_mixed.py")
    spec = importlib.util.spec_from_file_location("profile_mixed", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--dry"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    assert [r["tag"] for r in lines] == ["mixed_first_step", "mixed_step"]
    step = lines[1]
    assert step["num_decoding"] == module.DRY["num_decoding"] and step["prefill_tokens"] == module.DRY["prefill_tokens"][0]
    for key in ("attn_split_ms_per_layer", "attn_unsplit_ms_per_layer", "forward_split_ms", "forward_unsplit_ms"):
        assert step[key] > 0, key


def test_largest_step_that_does_not_fit_is_skipped_with_a_warning(tiny_runner, monkeypatch, caplog):
    """Start-up goes on (serving allocates as it goes) when the memory beside the KV pool cannot
    hold the largest step; the warning names the shape and the flags that shrink it."""
    import logging

    from sglserve.model_executor import warmup

    def oom(fb):
        raise torch.OutOfMemoryError("CUDA out of memory (test)")

    monkeypatch.setattr(tiny_runner, "forward", oom)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    with caplog.at_level(logging.WARNING, logger=warmup.__name__):
        assert warmup._reserve_largest_step(tiny_runner) is None
    assert "16 prefill tokens beside 4 decoding rows" in caplog.text and "--max-running-requests" in caplog.text
