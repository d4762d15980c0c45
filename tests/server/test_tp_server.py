"""--tp-size through the real server on the CPU (gloo), checked against TP=1 through HTTP:

- SmolLM2-135M (9 heads, 3 KV heads: TP=3 is the size its heads and MLP allow besides 1) at TP=3
  with a small step budget (chunked prefill) gives the greedy tokens of the TP=1 session server,
  for single prompts, a radix-cache hit and n > 1 (openai client), and seeded sampling.
- Two "nodes" (--nnodes 2 --node-rank 0/1 --dist-init-addr) of one rank each on this host, on a
  tiny Llama (4 heads, 2 KV heads), give the tokens of the in-process TP=1 Engine.
- Killing one rank's process takes the server down with a non-zero exit within 30 s, no orphans;
  so does freezing a node (SIGSTOP), through its heartbeat (distributed/node_watch.py).
- A tp size the heads do not allow fails at start with the sizes that would work.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time

import openai
import psutil
import pytest
import requests

from tests.helpers import ServerProcess, free_port, start_server
from tests.tiny_checkpoints import save_random_llama
from tests.server.reliability_helpers import wait_for

GREEDY = {"temperature": 0, "max_new_tokens": 12}
PROMPTS = ["The capital of France is", "def fibonacci(n):"]
LONG = " ".join(f"item {i}: the quick brown fox jumps over the lazy dog." for i in range(12))  # ~150 tokens


@pytest.fixture(scope="module")
def tp3(tmp_path_factory):
    s = start_server(tmp_path_factory, ["--tp-size", "3", "--max-total-tokens", "8000", "--chunked-prefill-size", "64",
                                        "--log-level", "info"], name="tp3")
    yield s
    s.stop()


def generate(server, text, sp=GREEDY, **extra):
    r = requests.post(server.base_url + "/generate", json={"text": text, "sampling_params": sp, **extra}, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


def test_tp3_greedy_matches_tp1(server, tp3):
    for text in PROMPTS:
        ref, got = generate(server, text), generate(tp3, text)
        assert got["output_ids"] == ref["output_ids"] and got["text"] == ref["text"], text


def test_tp3_chunked_prefill_and_radix_hit(server, tp3):
    """A ~150-token prompt is prefilled in 64-token chunks; the second time it hits the radix cache."""
    ref = generate(server, LONG)
    first = generate(tp3, LONG)
    again = generate(tp3, LONG + " And then")
    assert first["meta_info"]["prompt_tokens"] > 2 * 64
    assert first["output_ids"] == ref["output_ids"]
    assert again["meta_info"]["cached_tokens"] >= first["meta_info"]["prompt_tokens"] - 1
    assert again["output_ids"] == generate(server, LONG + " And then")["output_ids"]


def test_tp3_n_and_seeded_sampling_match_tp1(server, tp3):
    clients = [openai.OpenAI(base_url=s.base_url + "/v1", api_key="x") for s in (server, tp3)]
    greedy = [c.completions.create(model="default", prompt=PROMPTS[0], n=2, max_tokens=10, temperature=0)
              for c in clients]
    texts = [[ch.text for ch in sorted(r.choices, key=lambda ch: ch.index)] for r in greedy]
    assert texts[0] == texts[1] and texts[1][0] == texts[1][1]
    seeded = [c.completions.create(model="default", prompt=PROMPTS[1], max_tokens=10, temperature=0.8, seed=42)
              for c in clients]
    assert seeded[0].choices[0].text == seeded[1].choices[0].text


def _children(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def rank_pid(log: str, rank: int, size: int) -> int:
    m = re.search(rf"TP rank {rank}/{size} joined at .*, pid (\d+)", log)
    assert m, log[-3000:]
    return int(m.group(1))


def kill_and_wait(launcher: subprocess.Popen, pid: int, timeout: float = 30.0) -> float:
    t0 = time.time()
    os.kill(pid, signal.SIGKILL)
    try:
        launcher.wait(timeout + 5)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the launcher was still running {timeout + 5:.0f} s after a rank was killed")
    return time.time() - t0


def no_live(procs) -> bool:
    return not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]


def test_killing_a_rank_exits_nonzero_within_30s(tp3):
    """Last of the TP=3 tests: it takes that server down."""
    kids = _children(tp3.proc.pid)
    elapsed = kill_and_wait(tp3.proc, rank_pid(tp3.read_log(), 1, 3))
    log = tp3.read_log()
    assert elapsed < 30 and tp3.proc.returncode not in (0, None), log[-3000:]
    assert re.search(r"scheduler TP1 process \(pid \d+\) exited with code -9; shutting the server down", log), log[-3000:]
    assert wait_for(lambda: no_live(kids), 10)


TINY_IDS = [[5, 17, 99, 3, 42, 7, 250, 11], [1, 2, 3], list(range(40, 140))]
TINY_SP = {"temperature": 0, "max_new_tokens": 16, "ignore_eos": True}


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama (4 heads, 2 KV heads, vocab 256) saved as safetensors."""
    return save_random_llama(str(tmp_path_factory.mktemp("tiny_llama")), hidden=64, intermediate=128, vocab=256)


@contextlib.contextmanager
def two_nodes(tiny_llama: str, tmp_path):
    """Node 1 (rank 1) and node 0 (rank 0, HTTP) of one TP=2 server on this host; (node0, node1, node 1's log)."""
    common = ["--model-path", tiny_llama, "--skip-tokenizer-init", "--max-total-tokens", "4096", "--tp-size", "2",
              "--nnodes", "2", "--dist-init-addr", f"127.0.0.1:{free_port()}"]
    node1_log = open(tmp_path / "node1.log", "w")
    node1 = subprocess.Popen([sys.executable, "-m", "sglserve.launch_server", *common, "--node-rank", "1"],
                             stdout=node1_log, stderr=subprocess.STDOUT, start_new_session=True)
    node0 = ServerProcess([*common, "--node-rank", "0"], str(tmp_path / "node0.log"))
    try:
        node0.wait_ready()
        yield node0, node1, tmp_path / "node1.log"
    finally:
        node0.stop(signal.SIGKILL)
        if node1.poll() is None:
            os.killpg(node1.pid, signal.SIGKILL)
            node1.wait()
        node1_log.close()


def test_two_nodes_match_tp1_and_a_dead_node_stops_the_server(tiny_llama, tmp_path):
    import sglserve

    engine = sglserve.Engine(model_path=tiny_llama, skip_tokenizer_init=True, device="cpu")
    try:
        expected = [engine.generate(input_ids=ids, sampling_params=TINY_SP)["output_ids"] for ids in TINY_IDS]
    finally:
        engine.shutdown()
    with two_nodes(tiny_llama, tmp_path) as (node0, node1, node1_log):
        for ids, want in zip(TINY_IDS, expected):
            r = requests.post(node0.base_url + "/generate", json={"input_ids": ids, "sampling_params": TINY_SP},
                              timeout=120)
            assert r.status_code == 200 and r.json()["output_ids"] == want, r.text
        node1_text = node1_log.read_text()
        assert "Node 1 of 2: TP ranks [1] ready." in node1_text, node1_text[-2000:]
        kids = _children(node0.proc.pid) + _children(node1.pid)
        elapsed = kill_and_wait(node0.proc, rank_pid(node1_text, 1, 2))
        assert elapsed < 30 and node0.proc.returncode not in (0, None), node0.read_log()[-3000:]
        assert node1.wait(30) not in (0, None)
        assert wait_for(lambda: no_live(kids), 10)


def test_a_frozen_node_stops_the_server_through_its_heartbeat(tiny_llama, tmp_path):
    """A host that stops without closing its sockets (power, network; here SIGSTOP of node 1's
    processes): no collective fails, since rank 0 only sends while idle, but node 1's heartbeat stops."""
    with two_nodes(tiny_llama, tmp_path) as (node0, node1, node1_log):
        assert wait_for(lambda: "TP ranks [1] ready." in node1_log.read_text(), 30)
        os.killpg(node1.pid, signal.SIGSTOP)
        t0 = time.time()
        try:
            node0.proc.wait(30)
        except subprocess.TimeoutExpired:
            pytest.fail("node 0 still serving 30 s after node 1 froze")
        log = node0.read_log()
        assert node0.proc.returncode not in (0, None), log[-3000:]
        assert re.search(r"node 1 sent no heartbeat for \d+ s .*; shutting the server down", log), log[-3000:]
        assert time.time() - t0 < 30


def test_tp_size_the_heads_do_not_allow_fails_at_start(tiny_llama):
    r = subprocess.run([sys.executable, "-m", "sglserve.launch_server", "--model-path", tiny_llama,
                        "--skip-tokenizer-init", "--tp-size", "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    out = r.stdout + r.stderr
    assert "--tp-size=3 does not fit the model: num_attention_heads=4 is not divisible by it" in out, out[-3000:]
    assert "Tensor parallel sizes this model allows: [1, 2, 4]" in out, out[-3000:]
