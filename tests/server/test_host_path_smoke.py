"""benchmarks/host_path/run.py end to end on the CPU in QUICK mode (N=16, a few steps): the in-process
scheduler and detokenizer timings and the real server with the free forward (site/sitecustomize.py)
driven by bench_serving. The issue-10 host-path numbers come from this script, so it must not break
unnoticed while the scheduler is rebuilt. Also: the GPU stage script parses (its dry run needs minutes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_host_path_quick_on_cpu(tmp_path):
    out = tmp_path / "hp.json"
    env = {**os.environ, "QUICK": "1"}
    r = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "host_path", "run.py"), "--result-file", str(out),
                        "--log-dir", str(tmp_path), "--http-backends", "sglserve", "openai-chat"], env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    res = json.loads(out.read_text())
    (row,) = res["inproc"]
    assert row["n"] == 16 and row["step_us"]["host"] > 0 and row["detokenizer"]["step_us"]["detokenize"] > 0
    assert row["detokenizer"]["chars_per_step"] > 0  # the stub's ids are real SmolLM2 text
    assert [h["backend"] for h in res["http"]] == ["sglserve", "openai-chat"]  # /generate, then chat
    for http in res["http"]:
        assert http["completed"] == 16 and http["failed"] == 0
        assert http["total_output_tokens"] == 16 * http["output_len"]  # ignore_eos: every token arrives
        assert http["output_throughput"] > 0 and http["server_cpu"]["cpu_s"]["scheduler"] >= 0
    assert "scheduler host" in r.stdout and "HTTP /generate" in r.stdout and "openai-chat" in r.stdout


def test_stage_script_parses():
    r = subprocess.run(["bash", "-n", os.path.join(REPO, "benchmarks", "device", "stages.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
