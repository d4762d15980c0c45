"""benchmarks/bench_startup.py's log parsing: phases from stamped log lines, steps between them."""

from __future__ import annotations

import importlib.util
import os

import pytest

PATH = os.path.join(os.path.dirname(__file__), "..", "..", "benchmarks", "bench_startup.py")
spec = importlib.util.spec_from_file_location("bench_startup", PATH)
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)

LOG = [
    (0.10, "[t] Starting sglserve: model m on cuda"),
    (4.00, "[t Scheduler TP0] Scheduler process started (imports done, 3.8 s after the process began); loading"),
    (4.50, "[t Scheduler TP1] Scheduler process started (imports done, 4.3 s after the process began); loading"),
    (4.60, "[t Scheduler TP0] Model config read in 0.40 s (LlamaForCausalLM)"),
    (4.70, "[t Scheduler TP0] CUDA device cuda:0 ready in 0.05 s (0.00 s of it waiting for its context, made while importing)"),
    (5.00, "[t Scheduler TP0] Load weight end. elapsed=0.3 s"),
    (5.20, "[t Scheduler TP0] KV Cache is allocated. #tokens: 10"),
    (8.00, "[t Scheduler TP0] Captured CUDA graphs for 22 batch sizes (max 256) in 2.62 s"),
    (8.50, "[t Scheduler TP0] max_total_num_tokens=10, step token budget"),
    (8.90, "[t] The server is fired up and ready to roll! http://127.0.0.1:1"),
]


def test_phases_take_the_last_line_of_each_kind():
    phases = bench.phase_times(LOG)
    assert phases == {"launcher": 0.1, "imports": 4.5, "config": 4.6, "device": 4.7, "weights": 5.0, "kv": 5.2, "graphs": 8.0, "scheduler": 8.5,
                      "fired_up": 8.9}


def test_steps_skip_missing_phases():
    phases = bench.phase_times([line for line in LOG if "Captured" not in line[1]])
    phases["ready"] = 9.0
    steps = bench.steps(phases)
    assert "graphs" not in steps
    assert steps["scheduler"] == pytest.approx(8.5 - 5.2)
    assert steps["launcher"] == pytest.approx(0.1)
    assert sum(steps.values()) == pytest.approx(9.0)


def test_server_flags_are_required():
    with pytest.raises(SystemExit):
        bench.main(["--runs", "1"])
