"""The scheduler in-process on a tiny random Llama: batching, chunking, retraction, no leaks.

Every request's greedy output must equal what it produces alone, however the scheduler
batched, chunked, cached or retracted it.
"""

from __future__ import annotations

import random
from typing import Dict, List

import pytest
import torch

from sglserve.model_executor.forward_batch import ForwardMode

from sglserve.io_struct import TokenizedGenerateReqInput
from sglserve.scheduler.scheduler import Scheduler
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.server_args import ServerArgs


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=128, max_position_embeddings=512, eos_token_id=None,
                      bos_token_id=None)
    model = LlamaForCausalLM(cfg)
    d = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(d, safe_serialization=True)
    return str(d)


class CollectingScheduler(Scheduler):
    """Keeps what would go to the detokenizer instead of sending it."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.outputs: Dict[str, List[int]] = {}
        self.finish: Dict[str, dict] = {}

    def stream_output(self, reqs):
        for r in reqs:
            if r.finished():
                self.outputs[r.rid] = list(r.output_ids)
                self.finish[r.rid] = r.finished_reason


def make(model_dir, **kw) -> CollectingScheduler:
    args = ServerArgs(model_path=model_dir, skip_tokenizer_init=True, device="cpu", random_seed=0, **kw)
    return CollectingScheduler(args, None)


def submit(s: Scheduler, rid: str, ids: List[int], max_new: int) -> None:
    sp = SamplingParams(temperature=0, max_new_tokens=max_new, ignore_eos=True)
    sp.verify()
    s.handle_generate_request(TokenizedGenerateReqInput(rid=rid, input_text=None, input_ids=ids, sampling_params=sp))


def run_until_idle(s: Scheduler, max_steps: int = 10000) -> None:
    for _ in range(max_steps):
        if not s.step():
            return
    raise AssertionError("scheduler did not finish")


def workload(seed=0, n=12):
    rng = random.Random(seed)
    shared = [rng.randrange(128) for _ in range(40)]
    reqs = []
    for i in range(n):
        prompt = (shared[: rng.randrange(0, 40)] if i % 2 else []) + [rng.randrange(128) for _ in range(rng.randrange(3, 60))]
        reqs.append((f"r{i}", prompt, rng.randrange(1, 40)))
    return reqs


@pytest.fixture(scope="module")
def alone_outputs(tiny_model_dir):
    s = make(tiny_model_dir, max_total_tokens=4096, disable_radix_cache=True)
    out = {}
    for rid, ids, n in workload():
        submit(s, rid, ids, n)
        run_until_idle(s)
        out[rid] = s.outputs[rid]
    return out


@pytest.mark.parametrize(
    "kw",
    [
        dict(max_total_tokens=4096),
        dict(max_total_tokens=4096, page_size=4),
        dict(max_total_tokens=4096, chunked_prefill_size=16, page_size=4),
        dict(max_total_tokens=4096, schedule_policy="lpm"),
        dict(max_total_tokens=4096, disable_radix_cache=True, chunked_prefill_size=8),
        dict(max_total_tokens=4096, max_running_requests=3),
        # A small step budget: most steps mix decode tokens with prefill chunks
        dict(max_total_tokens=4096, chunked_prefill_size=8),
        # A pool so small that decode must retract requests back to the queue
        dict(max_total_tokens=200, chunked_prefill_size=32),
        dict(max_total_tokens=200, page_size=8, chunked_prefill_size=32),
        # Overlap scheduling (the GPU default) exercised on the CPU
        dict(max_total_tokens=4096, overlap=True),
        dict(max_total_tokens=200, chunked_prefill_size=32, overlap=True),
        # The CUDA layout: req_to_token on the "device" plus the host copy the scheduler reads
        dict(max_total_tokens=4096, chunked_prefill_size=16, page_size=4, overlap=True, mirror=True),
        dict(max_total_tokens=200, chunked_prefill_size=32, overlap=True, mirror=True),
    ],
)
def test_batched_equals_alone_and_no_leak(tiny_model_dir, alone_outputs, kw, monkeypatch):
    import sglserve.scheduler.running_batch as rb

    if kw["max_total_tokens"] == 200:
        # Admission expects few future tokens, so decode runs out of KV and must retract
        monkeypatch.setattr(rb, "INIT_NEW_TOKEN_RATIO", 0.01)
        monkeypatch.setattr(rb, "MIN_NEW_TOKEN_RATIO", 0.01)
    kw = dict(kw)
    overlap = kw.pop("overlap", False)
    mirror = kw.pop("mirror", False)
    s = make(tiny_model_dir, **kw)
    s.enable_overlap = overlap
    pool = s.kv.req_to_token_pool
    if mirror:
        pool.host = pool.req_to_token.clone()
    overlapped = []
    orig_rows = s._look_ahead_rows

    def spy_rows(pending):
        rows = orig_rows(pending)
        overlapped.append(None if rows is None else (len(rows), len(pending.sample_reqs), pending.batch.forward_mode))
        return rows

    s._look_ahead_rows = spy_rows
    retracted = []
    orig = s.running.make_room

    def spy(planner, fail):
        before = len(planner.waiting)
        orig(planner, fail)
        retracted.append(len(planner.waiting) - before)

    s.running.make_room = spy
    for rid, ids, n in workload():
        submit(s, rid, ids, n)
    run_until_idle(s)
    assert s.outputs == alone_outputs
    assert all(f["type"] == "length" for f in s.finish.values())
    if mirror:  # every write reached both copies
        assert torch.equal(pool.host, pool.req_to_token)
    assert s.check_memory_integrity()
    assert s.tree_cache.protected_size() == 0
    if kw["max_total_tokens"] == 200:
        assert sum(x for x in retracted if x > 0) > 0, "the small pool should have forced a retraction"
    if overlap:
        assert sum(r is not None for r in overlapped) > 10, "decode steps should have overlapped"
        # Requests finish at different steps: a finish need not break the overlap
        assert any(o is not None and o[0] < o[1] for o in overlapped), "no overlapped step dropped a finished row"
        # Prefill and mixed steps look ahead too
        assert any(o is not None and o[2] == ForwardMode.EXTEND for o in overlapped), "no extend step looked ahead"


def test_radix_hit_reported(tiny_model_dir):
    s = make(tiny_model_dir, max_total_tokens=4096)
    prompt = list(range(1, 50))
    submit(s, "a", prompt, 4)
    run_until_idle(s)
    submit(s, "b", prompt, 4)
    batch = s.get_next_batch_to_run()
    assert batch.reqs[0].cached_tokens == len(prompt) - 1
    s.run_and_process(batch)
    run_until_idle(s)
    assert s.outputs["a"] == s.outputs["b"]


def test_abort_frees_everything(tiny_model_dir):
    s = make(tiny_model_dir, max_total_tokens=4096, chunked_prefill_size=8)
    submit(s, "long", list(range(1, 100)), 50)
    submit(s, "other", list(range(5, 20)), 50)
    s.run_and_process(s.get_next_batch_to_run())  # first chunk of "long"
    s.abort_request("long")
    s.abort_request("other")
    run_until_idle(s)
    assert s.finish["long"]["type"] == "abort" and s.finish["other"]["type"] == "abort"
    assert s.check_memory_integrity()


def test_too_long_prompt_rejected_not_crashed(tiny_model_dir):
    s = make(tiny_model_dir, max_total_tokens=4096)
    submit(s, "big", [1] * 600, 4)
    assert s.finish["big"]["type"] == "abort"
    assert "longer than the model's context length (512 tokens)" in s.finish["big"]["message"]


def test_cache_report_flag_logs_hit_rate(tiny_model_dir, caplog):
    s = make(tiny_model_dir, max_total_tokens=4096, enable_cache_report=True)
    prompt = list(range(1, 40))
    with caplog.at_level("INFO", logger="sglserve.scheduler.scheduler"):
        submit(s, "a", prompt, 2)
        run_until_idle(s)
        submit(s, "b", prompt, 2)
        run_until_idle(s)
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Prefill batch")]
    assert lines[-1].endswith(f"cache hit rate: {100 * 38 / 78:.2f}%")
    quiet = make(tiny_model_dir, max_total_tokens=4096)
    caplog.clear()
    with caplog.at_level("INFO", logger="sglserve.scheduler.scheduler"):
        submit(quiet, "c", prompt, 2)
        run_until_idle(quiet)
    quiet_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Prefill batch")]
    assert quiet_lines and not any("cache hit rate" in line for line in quiet_lines)


def test_mixed_steps_stay_within_budget_and_equal_alone(tiny_model_dir, alone_outputs):
    """One forward per step over the token budget: running requests' decode tokens ride along
    with prefill chunks, no step exceeds the budget (but for the prefill floor), and every
    request's greedy output equals what it gives alone (fp32)."""
    s = make(tiny_model_dir, max_total_tokens=4096, chunked_prefill_size=32)
    steps = []  # (prefill tokens, decode tokens) per forward
    orig = s.batch_runner.launch

    def spy(batch, input_ids=None, marks=None, between_layers=None):
        n_prefill = len(batch.reqs) - batch.num_decoding
        if batch.forward_mode.is_extend():
            steps.append((sum(r.extend_input_len for r in batch.reqs[:n_prefill]), batch.num_decoding))
        else:
            steps.append((0, len(batch.reqs)))
        return orig(batch, input_ids, marks, between_layers)

    s.batch_runner.launch = spy
    for rid, ids, n in workload():
        submit(s, rid, ids, n)
    run_until_idle(s)
    assert s.outputs == alone_outputs
    mixed = [(p, d) for p, d in steps if p and d]
    assert len(mixed) >= 3, steps
    assert all(p <= max(32 - d, 32 // 4) for p, d in steps), steps
    assert s.check_memory_integrity()


def _submit_open_ended(s: Scheduler, n: int) -> None:
    """Requests without max_new_tokens: up to the context length, as a chat without max_tokens."""
    rng = random.Random(3)
    for i in range(n):
        sp = SamplingParams(temperature=0, ignore_eos=True)
        sp.verify()
        s.handle_generate_request(TokenizedGenerateReqInput(rid=f"open{i}", input_text=None,
                                                            input_ids=[rng.randrange(128) for _ in range(20)], sampling_params=sp))


def test_open_ended_requests_run_together_with_clip(tiny_model_dir, monkeypatch):
    """SGLang's SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION: each request is expected to take at most
    the clip more tokens, so four requests without max_new_tokens run side by side in a pool far
    smaller than their context; retraction settles a wrong guess; nobody waits forever."""
    monkeypatch.setenv("SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION", "16")
    s = make(tiny_model_dir, max_total_tokens=320)
    _submit_open_ended(s, 4)
    most_running = 0
    for _ in range(20000):
        busy = s.step()
        most_running = max(most_running, len(s.running))
        if not busy:
            break
    assert most_running == 4
    assert set(s.finish) == {f"open{i}" for i in range(4)}
    assert s.check_memory_integrity()


def test_open_ended_requests_never_hang_without_clip(tiny_model_dir):
    """Without the variable each request expects min(context, 4096) x 0.7 more tokens, more than
    the whole pool: the head request still runs whenever nothing else does, so every request ends."""
    s = make(tiny_model_dir, max_total_tokens=320)
    _submit_open_ended(s, 4)
    run_until_idle(s, max_steps=20000)
    assert set(s.finish) == {f"open{i}" for i in range(4)}
    assert s.check_memory_integrity()


def test_bad_clip_variable_fails_at_start(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION", "lots")
    with pytest.raises(ValueError, match="SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION"):
        make(tiny_model_dir, max_total_tokens=320)


@pytest.mark.parametrize("bs", [1, 3, 17, 257])
def test_decode_batch_rows_are_aligned(tiny_model_dir, bs):
    """Every tensor of a decode step starts 16-byte aligned whatever the batch size: an odd size
    once gave `positions` an 8-byte alignment, a Triton variant (RoPE) the warm-up had not met,
    compiled mid-serving (V11)."""
    s = make(tiny_model_dir, max_total_tokens=4096, max_running_requests=512)
    for i in range(bs):
        submit(s, f"a{i}", [1 + i % 100, 2, 3], 4)
    s.step()  # the prefill
    s.step() if s._pending is not None else None
    batch = s.kv.new_batch(list(s.running.reqs), ForwardMode.DECODE)
    fb = batch.prepare_for_decode()
    assert fb.batch_size == bs
    for t in (fb.input_ids, fb.positions, fb.req_pool_indices, fb.out_cache_loc):
        assert t.shape[0] == bs and t.data_ptr() % 16 == 0
