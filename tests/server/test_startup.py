"""Start-up runs side by side (launch_server.py): the children are spawned first and the HTTP
side prepares (web stack imports, tokenizer) while they load. A child failing meanwhile still
stops the launcher at once with its error, a failing HTTP side stops the children, and
benchmarks/bench_startup.py reads the phases off a real server's log."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tempfile
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FAULT_PATH = os.pathsep.join([os.path.join(HERE, "fault_injection"), REPO])
SLOW_PREP_S = 120


def ipc_dirs() -> set:
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "sglserve-*")))


def launch(env: dict, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "SGLSERVE_FAULT_INJECTION": "1", "PYTHONPATH": FAULT_PATH, **env}
    return subprocess.run([sys.executable, "-m", "sglserve.launch_server", "--max-total-tokens", "4096"],
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("mode,message", [
    ("1", "scheduler failed to start: RuntimeError: injected scheduler start-up fault"),
    ("exit", "scheduler process died during start-up (exit code 3)"),
])
def test_failing_scheduler_stops_launcher_while_http_side_still_prepares(mode, message):
    before = ipc_dirs()
    t0 = time.monotonic()
    r = launch({"SGLSERVE_FAULT_SCHEDULER_INIT": mode, "SGLSERVE_FAULT_SLOW_HTTP_PREP": str(SLOW_PREP_S)},
               timeout=SLOW_PREP_S + 60)
    elapsed = time.monotonic() - t0
    assert r.returncode == 1, r.stderr[-3000:]
    assert message in r.stderr, r.stderr[-3000:]
    assert elapsed < SLOW_PREP_S / 2, f"took {elapsed:.1f} s: the launcher waited for its HTTP side"
    assert "HTTP side prepared" not in r.stderr
    assert ipc_dirs() <= before


def test_failing_http_side_stops_the_ready_children():
    before = ipc_dirs()
    r = launch({"SGLSERVE_FAULT_HTTP_PREP": "1"}, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "injected HTTP-side start-up fault" in r.stderr, r.stderr[-3000:]
    assert "max_total_num_tokens=" in r.stderr  # the scheduler got ready first: the error is the HTTP side's
    assert "fired up" not in r.stderr
    assert ipc_dirs() <= before


def test_bench_startup_reports_phases_in_order():
    r = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "bench_startup.py"), "--", "--max-total-tokens",
                        "4096"], capture_output=True, text=True, timeout=300, cwd=REPO)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    row = json.loads(r.stdout.strip().splitlines()[-1])
    phases = row["phases"]
    assert row["ready_s"] is not None and row["ready_s"] == phases["ready"]
    assert phases["graphs"] is None and phases["device"] is None  # the CPU captures no graphs, makes no CUDA context
    order = ["launcher", "imports", "config", "weights", "kv", "scheduler", "fired_up", "ready"]
    times = [phases[p] for p in order]
    assert None not in times, phases
    assert times == sorted(times), phases
    assert abs(sum(row["steps"].values()) - row["ready_s"]) < 0.01
