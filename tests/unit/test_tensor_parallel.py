"""Tensor parallelism on the CPU (gloo): TP=2 and TP=4 ranks, each holding its shard, give the
logits and greedy tokens of TP=1 on the tiny Llama, Qwen2 and Qwen3 configs of
test_model_parity.py (4 heads, 2 KV heads: TP=2 splits the KV heads, TP=4 replicates them),
with safetensors and dummy weights; and the sharding rules and their errors."""

from __future__ import annotations

import multiprocessing as mp
import socket
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from sglserve.distributed.shard import check_tp_shapes, kv_head_start, padded_vocab, valid_tp_sizes
from test_model_parity import CONFIGS
from tp_worker import run_rank, scenario

ARCHS = ["llama", "llama_tied", "qwen2", "qwen3"]
ATOL = 1e-5


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """(name, path, load format): each tiny model saved as safetensors, and Llama's config for dummy weights."""
    out = []
    for name in ARCHS:
        torch.manual_seed(0)
        hf = AutoModelForCausalLM.from_config(CONFIGS[name]).float().eval()
        with torch.no_grad():
            for pname, p in hf.named_parameters():
                p.uniform_(0.5, 1.5) if "norm" in pname else p.normal_(0.0, 0.1)
        folder = Path(tmp_path_factory.mktemp(f"tp_{name}"))
        hf.save_pretrained(folder)
        out.append((name, str(folder), "auto"))
    out.append(("llama_dummy", str(Path(out[0][1]) / "config.json"), "dummy"))
    return out


@pytest.fixture(scope="module")
def reference(cases):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return {name: scenario(path, fmt) for name, path, fmt in cases}
    finally:
        torch.set_num_threads(threads)


def run_tp(tp: int, cases) -> dict:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{s.getsockname()[1]}"
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=run_rank, args=(r, tp, addr, cases, results), daemon=True) for r in range(tp)]
    for p in procs:
        p.start()
    got: dict = {}
    try:
        for _ in range(tp * len(cases)):
            rank, name, out = results.get(timeout=300)
            assert name != "error", f"rank {rank} failed:\n{out}"
            got[(rank, name)] = {k: torch.from_numpy(v) if hasattr(v, "dtype") else v for k, v in out.items()}
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    return got


@pytest.mark.parametrize("tp", [2, 4])
def test_tp_matches_tp1(tp, cases, reference):
    got = run_tp(tp, cases)
    for name, _, _ in cases:
        ref = reference[name]
        for rank in range(tp):
            out = got[(rank, name)]
            for key in ("batched_tokens", "chunked_tokens", "hit_tokens"):
                assert out[key] == ref[key], f"{name} TP={tp} rank {rank} {key}"
            for key in ("batched_logits", "chunked_logits"):
                diff = (out[key] - ref[key]).abs().max().item()
                assert out[key].shape == ref[key].shape and diff <= ATOL, f"{name} TP={tp} rank {rank} {key}: {diff}"
            # every rank holds the same gathered logits, bit for bit: they sample the same token
            assert torch.equal(out["batched_logits"], got[(0, name)]["batched_logits"])


def test_shard_rules():
    assert [kv_head_start(2, 4, r) for r in range(4)] == [0, 0, 1, 1]  # replicated: two ranks per KV head
    assert [kv_head_start(8, 4, r) for r in range(4)] == [0, 2, 4, 6]
    assert padded_vocab(49152, 3) == 49152 and padded_vocab(257, 2) == 258
    assert valid_tp_sizes(9, 3, 1536) == [1, 3]  # SmolLM2-135M (1536 % 9 != 0)
    assert valid_tp_sizes(64, 8, 28672)[:6] == [1, 2, 4, 8, 16]  # Llama-3.1-70B
    check_tp_shapes(32, 8, 14336, 4)
    with pytest.raises(ValueError, match=r"--tp-size=3 .*num_attention_heads=32.*num_key_value_heads=8.*allows: \[1, 2, 4, 8, 16\]"):
        check_tp_shapes(32, 8, 14336, 3)
    with pytest.raises(ValueError, match="num_attention_heads=9"):
        check_tp_shapes(9, 3, 1536, 2)


def test_tp_flags(monkeypatch, tmp_path):
    from sglserve.server_args import ServerArgs, ServerArgsError, local_gpu_id, node_tp_ranks

    (tmp_path / "config.json").write_text("{}")
    base = dict(model_path=str(tmp_path), load_format="dummy")
    two_nodes = ServerArgs(**base, device="cpu", tp_size=4, nnodes=2, node_rank=1, dist_init_addr="10.0.0.1:5000")
    assert node_tp_ranks(two_nodes) == [2, 3] and local_gpu_id(two_nodes, 3) == 1
    with pytest.raises(ServerArgsError, match="--dist-init-addr='nohost' must be host:port"):
        ServerArgs(**base, device="cpu", tp_size=2, dist_init_addr="nohost")
    with pytest.raises(ServerArgsError, match="--node-rank=2 must be in 0..1"):
        ServerArgs(**base, device="cpu", tp_size=2, nnodes=2, node_rank=2, dist_init_addr="h:1")
    monkeypatch.setattr("sglserve.server_args.cuda_device_count", lambda: 2)
    assert ServerArgs(**base, device="cuda", tp_size=2).tp_size == 2
    with pytest.raises(ServerArgsError, match="--tp-size=4 needs 4 GPUs on this node .* but 2 are visible"):
        ServerArgs(**base, device="cuda", tp_size=4)
    assert ServerArgs(**base, device="cuda", tp_size=4, nnodes=2, dist_init_addr="h:1").tp_size == 4
