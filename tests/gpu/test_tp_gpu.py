"""Tensor parallelism on 2 GPUs (NCCL): the one-shot symmetric-memory all-reduce gives NCCL's
sums (eager and in CUDA graphs), and two "nodes" of one GPU each (--nnodes 2, one host, each
process seeing its own GPU) give the greedy tokens of a TP=1 server, fp32, tiny Llama.
Skipped with fewer than 2 GPUs. The CPU twins: tests/unit/test_tensor_parallel.py and
tests/server/test_tp_server.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import requests
import torch

pytestmark = pytest.mark.gpu

if torch.cuda.device_count() < 2:
    pytest.skip("needs 2 CUDA GPUs", allow_module_level=True)

from tests.helpers import ServerProcess, free_port  # noqa: E402
from tests.tiny_checkpoints import save_random_llama  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
IDS = [[5, 17, 99, 3, 42, 7, 250, 11], [1, 2, 3], list(range(40, 140))]
SP = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}


def test_symm_mem_all_reduce_matches_nccl():
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks/kernels/bench_all_reduce.py"), "--tp", "2",
                        "--tokens", "1", "8", "64", "4096"], capture_output=True, text=True, timeout=300)
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    print("\n".join(json.dumps(x) for x in rows))
    assert r.returncode == 0 and len(rows) == 8, r.stdout[-3000:] + r.stderr[-3000:]
    assert all(x["match_nccl"] for x in rows)
    assert all(x["one_shot"] == (x["kib"] <= 512) for x in rows), rows  # the one-shot path ran where it fits


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    return save_random_llama(str(tmp_path_factory.mktemp("tiny_llama_gpu")), hidden=256, intermediate=512, vocab=512)


def greedy(server: ServerProcess):
    out = []
    for ids in IDS:
        r = requests.post(server.base_url + "/generate", json={"input_ids": ids, "sampling_params": SP}, timeout=120)
        assert r.status_code == 200, r.text
        out.append(r.json()["output_ids"])
    return out


def test_two_nodes_nccl_match_tp1(tiny_llama, tmp_path):
    common = ["--model-path", tiny_llama, "--skip-tokenizer-init", "--dtype", "float32", "--max-total-tokens", "4096"]
    one = ServerProcess(common, str(tmp_path / "tp1.log"))
    try:
        one.wait_ready()
        expected = greedy(one)
    finally:
        one.stop()
    nodes = [*common, "--tp-size", "2", "--nnodes", "2", "--dist-init-addr", f"127.0.0.1:{free_port()}"]
    log1 = open(tmp_path / "node1.log", "w")
    node1 = subprocess.Popen([sys.executable, "-m", "sglserve.launch_server", *nodes, "--node-rank", "1"],
                             stdout=log1, stderr=subprocess.STDOUT, start_new_session=True,
                             env={**os.environ, "CUDA_VISIBLE_DEVICES": "1"})
    node0 = ServerProcess([*nodes, "--node-rank", "0"], str(tmp_path / "node0.log"), env={"CUDA_VISIBLE_DEVICES": "0"})
    try:
        node0.wait_ready()
        assert greedy(node0) == expected  # over NCCL: the one-shot all-reduce is for ranks of one node
    finally:
        node0.stop()
        if node1.poll() is None:
            os.killpg(node1.pid, signal.SIGKILL)
            node1.wait()
        log1.close()


@pytest.mark.parametrize("tp", [1, 3])
def test_smollm2_real_weights_top1_vs_transformers(tp, tmp_path):
    """SmolLM2's 9 heads / 3 KV heads split only at TP=3: its greedy tokens through the TP=3
    server, teacher-forced against transformers bf16, clear the engine test's bar (0.99) as TP=1's do."""
    path = os.environ.get("SGLSERVE_GPU_TEST_MODEL", "")
    if not path.endswith(".gguf") or torch.cuda.device_count() < tp:
        pytest.skip("needs SGLSERVE_GPU_TEST_MODEL (the SmolLM2 GGUF) and 3 GPUs")
    from transformers import AutoModelForCausalLM

    g = torch.Generator().manual_seed(1)  # the prompts of tests/gpu/test_engine_gpu.py
    prompts = [torch.randint(10, 4000, (int(n),), generator=g).tolist() for n in torch.randint(8, 200, (32,), generator=g)]
    server = ServerProcess(["--model-path", path, "--tp-size", str(tp), "--dtype", "bfloat16"], str(tmp_path / "s.log"))
    try:
        server.wait_ready()
        sp = {"temperature": 0, "max_new_tokens": 64, "ignore_eos": True}
        outs = [requests.post(server.base_url + "/generate", json={"input_ids": p, "sampling_params": sp},
                              timeout=120).json()["output_ids"] for p in prompts]
    finally:
        server.stop()
    hf = AutoModelForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                              torch_dtype=torch.bfloat16).cuda().eval()
    agree = total = 0
    with torch.no_grad():
        for p, out in zip(prompts, outs):
            pred = hf(torch.tensor([p + out], device="cuda")).logits[0, len(p) - 1:-1].argmax(-1).tolist()
            agree += sum(int(a == b) for a, b in zip(pred, out))
            total += len(out)
    print(f"SmolLM2 TP={tp}: top-1 agreement with transformers (teacher forced, bfloat16): {agree / total:.4f} "
          f"over {total} tokens")
    assert agree / total >= 0.99
