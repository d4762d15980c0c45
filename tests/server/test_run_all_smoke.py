"""benchmarks/run_all.sh end to end on the CPU (QUICK=1, a tiny random Llama config): every workload
W1-W5, the transformers peer of W1/W2/W5 and the live servers of W3/W4 write their JSON lines, and
benchmarks/plot.py draws every figure from them. The GPU pass runs the same script at full scale."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

from tests.helpers import free_port

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORDS = "the a of to and in is it you that he was for on are with as his they at be this from".split()


def _tiny_config(path) -> str:
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=49152, max_position_embeddings=4096).save_pretrained(path)
    return str(path)


def _sharegpt_file(path, n: int = 80) -> str:
    """ShareGPT's format: conversations of human/gpt turns (the loader takes the first pair)."""
    rng = random.Random(0)

    def text(k: int) -> str:
        return " ".join(rng.choice(WORDS) for _ in range(k))

    rows = [{"id": f"c{i}", "conversations": [{"from": "human", "value": text(rng.randrange(8, 60))},
                                              {"from": "gpt", "value": text(rng.randrange(8, 40))}]}
            for i in range(n)]
    path.write_text(json.dumps(rows))
    return str(path)


def _rows(path: str) -> list:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_run_all_quick_on_cpu_then_plot(tmp_path):
    results, plots = tmp_path / "results", tmp_path / "plots"
    cfg = _tiny_config(tmp_path / "tiny")
    env = {**os.environ, "PYTHON": sys.executable, "QUICK": "1", "MODEL": cfg, "SMALL_MODEL": cfg,
           "RESULTS": str(results), "PORT": str(free_port()), "SHAREGPT": _sharegpt_file(tmp_path / "sharegpt.json"),
           "SERVER_ARGS": "--device cpu --max-total-tokens 60000"}
    r = subprocess.run(["bash", os.path.join(REPO, "benchmarks", "run_all.sh")], env=env, cwd=REPO,
                       capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert _rows(results / "w1_sglserve.jsonl")[-1]["median_decode_latency_s"] > 0
    assert _rows(results / "w1_hf.jsonl")[-1]["median_decode_latency"] > 0
    for name in ("w2", "w5"):
        ours, peer = _rows(results / f"{name}_sglserve.jsonl")[-1], _rows(results / f"{name}_hf.jsonl")[-1]
        assert ours["total_output_tokens"] == peer["total_output_tokens"] > 0, name  # same workload, ignore_eos
    w3 = {row["tag"]: row for row in _rows(results / "w3_sharegpt.jsonl")}
    assert set(w3) == {"w3_rate_inf", "w3_rate_8"}
    assert all(row["completed"] == 64 and row["p99_itl_ms"] > 0 for row in w3.values())
    w4 = {row["tag"]: row for row in _rows(results / "w4_gsp.jsonl")}
    assert w4["w4_radix_on"]["cache_hit_rate"] > 0.5 and w4["w4_radix_off"]["cache_hit_rate"] == 0
    p = subprocess.run([sys.executable, os.path.join(REPO, "benchmarks", "plot.py"), "--results", str(results),
                        "--out", str(plots)], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    pngs = sorted(f for f in os.listdir(plots) if f.endswith(".png"))
    assert pngs == ["w125_vs_hf.png", "w3_throughput_vs_rate.png", "w3_ttft_itl_dist.png", "w4_cache_on_off.png"]
    assert all(os.path.getsize(plots / f) > 10_000 for f in pngs)
