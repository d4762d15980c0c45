"""--step-trace-path: one row per resolved step, in order, saying what the step held; and the
Triton compile monitor's warning."""

from __future__ import annotations

import json
import logging

import pytest

from tests.unit.test_scheduler import make, run_until_idle, submit, tiny_model_dir, workload  # noqa: F401


@pytest.mark.parametrize("overlap", [False, True])
def test_trace_has_one_ordered_row_per_step(tiny_model_dir, tmp_path, overlap):
    path = tmp_path / "steps.jsonl"
    s = make(tiny_model_dir, max_total_tokens=4096, chunked_prefill_size=16, step_trace_path=str(path))
    s.enable_overlap = overlap
    for rid, ids, n in workload(seed=3):
        submit(s, rid, ids, n)
    run_until_idle(s)
    s.step_trace.flush()
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == s.stats.forward_ct
    for r in rows:
        assert r["launch"] <= r["launched"] <= r["resolve"] <= r["synced"] <= r["sent"]
        assert r["mode"] in ("extend", "decode")
        assert (r["prefill_reqs"] > 0) == (r["mode"] == "extend")
        assert r["prefill_tokens"] <= 16  # the step budget
    assert [r["sent"] for r in rows] == sorted(r["sent"] for r in rows)
    assert sum(r["prefill_tokens"] for r in rows) == s.stats.total_prefill_tokens
    assert any(r["looked_ahead"] for r in rows) == overlap
    # With look-ahead, a step is resolved between the next step's layers once the device is done
    # with it (on the CPU: at once), not after the next launch has ended
    assert any(b["launch"] < a["resolve"] < b["launched"] for a, b in zip(rows, rows[1:])) == overlap
    # A launch made while the step before was in flight says when each layer was enqueued
    timed = [r for r in rows if "first_layer_end" in r]
    assert bool(timed) == overlap
    for r in timed:
        assert r["prepared"] <= r["first_layer_end"] <= r["last_layer_end"] <= r["forwarded"]
        assert r["max_layer_gap_ms"] >= 0 and r["max_gap_layer"] >= 1


def test_no_trace_by_default(tiny_model_dir):
    assert make(tiny_model_dir, max_total_tokens=4096).step_trace is None


def test_jit_monitor_names_a_late_compile(caplog):
    from sglserve.utils.jit_monitor import JitMonitor

    m = JitMonitor()
    with caplog.at_level(logging.WARNING, logger="sglserve.utils.jit_monitor"):
        assert m.before(key="k", repr="decode_kernel[num_warps=4](bs: i32)") is False
        m.after(key="k", repr="decode_kernel[num_warps=4](bs: i32)")
    assert m.compiles == 1
    assert "warm-up missed" in caplog.text and "key=k" in caplog.text


def test_install_sets_triton_hooks_once(monkeypatch):
    knobs = pytest.importorskip("triton").knobs
    from sglserve.utils.jit_monitor import install_jit_monitor

    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", None)
    m = install_jit_monitor()
    assert m is not None and knobs.runtime.jit_cache_hook == m.before and knobs.runtime.jit_post_compile_hook == m.after
    assert install_jit_monitor() is None  # hooks already set: left alone


def test_in_flight_step_waits_for_a_mixed_steps_last_layer_only(tiny_model_dir, tmp_path, monkeypatch):
    """With the device never done early (is_done False), the step before a mixed step is resolved
    after that step's last layer, before its logits; the step before a decode step after its launch.
    Outputs stay those of the plain schedule."""
    from sglserve.scheduler.overlap import LaunchedBatch

    reqs = workload(seed=5)
    plain = make(tiny_model_dir, max_total_tokens=4096, chunked_prefill_size=16)
    for rid, ids, n in reqs:
        submit(plain, rid, ids, n)
    run_until_idle(plain)

    monkeypatch.setattr(LaunchedBatch, "is_done", lambda self: False)
    path = tmp_path / "steps.jsonl"
    s = make(tiny_model_dir, max_total_tokens=4096, chunked_prefill_size=16, step_trace_path=str(path))
    s.enable_overlap = True
    for rid, ids, n in reqs:
        submit(s, rid, ids, n)
    run_until_idle(s)
    s.step_trace.flush()
    assert s.outputs == plain.outputs
    rows = sorted((json.loads(line) for line in path.read_text().splitlines()), key=lambda r: r["launch"])
    inside = before_logits = 0
    for a, b in zip(rows, rows[1:]):
        if "first_layer_end" not in b:  # b was not launched while a was in flight
            continue
        if b["mode"] == "extend":
            assert b["launch"] < a["resolve"] < b["forwarded"]
            before_logits += 1
        else:
            assert a["resolve"] > b["launched"]
        inside += b["launch"] < a["resolve"] < b["launched"]
    assert before_logits > 0 and inside == before_logits


def test_jit_monitor_counts_start_up_then_warns(caplog):
    from sglserve.utils.jit_monitor import JitMonitor

    m = JitMonitor(serving=False)
    with caplog.at_level(logging.INFO, logger="sglserve.utils.jit_monitor"):
        for k in ("a", "b"):
            m.before(key=k)
            m.after(key=k)
        assert m.startup_variants == 2 and m.compiles == 0 and not caplog.records
        m.start_serving()
        assert "2 kernel variants compiled or loaded from the disk cache during start-up" in caplog.text
        m.before(key="c")
        m.after(key="c")
    assert m.compiles == 1 and "warm-up missed" in caplog.text
