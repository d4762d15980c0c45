"""Quantization and hub ids through the real server (`python -m sglserve.launch_server`).

- Refusals: an AWQ folder, a GPTQ folder (configs in the real layouts; the weights file is
  garbage, so reading it would fail differently) and `--quantization foo` exit non-zero within
  seconds with one line naming the method and the supported ones.
- Hub ids: a huggingface_hub cache laid out as huggingface_hub writes one (blobs, snapshots/<rev>
  symlinks, refs/main) under a temporary HF_HOME with HF_HUB_OFFLINE=1 holds a tiny FP8 block
  checkpoint (Qwen3-FP8 layout); `--model-path org/name` serves it, and its greedy output equals
  the dequantized reference's. A missing model gives one error line.
- A compressed-tensors FP8 checkpoint with static input scales, from a local folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time

import openai
import pytest
import requests
import torch

from tests.helpers import free_port, start_server
from tests.tiny_checkpoints import (
    tiny_config,
    tiny_state_dict,
    write_compressed_tensors_fp8,
    write_fp8_block,
    write_unquantized,
)
from tests.unit.model_driver import PagedModelRunner, load_model

PROMPT_IDS = [1, 523, 9407, 314, 1789, 28, 9124, 17, 30, 44]
NEW_TOKENS = 12
REVISION = "0123456789abcdef0123456789abcdef01234567"


def _launch(args, env=None, timeout=60):
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "sglserve.launch_server", "--port", str(free_port()), *args],
                          capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    return proc, time.monotonic() - t0


def _assert_refused(proc, elapsed, *words):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    assert elapsed < 10, f"refusal took {elapsed:.1f} s"
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for word in words:
        assert word in lines[0], lines[0]


def _garbage_checkpoint(folder, quantization_config):
    os.makedirs(folder)
    config = {**tiny_config(), "quantization_config": quantization_config}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    with open(os.path.join(folder, "model.safetensors"), "wb") as f:
        f.write(b"not a safetensors file")  # any read of a weight would fail on this


@pytest.mark.parametrize("method,qc", [
    ("awq", {"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm",
             "modules_to_not_convert": None}),
    ("gptq", {"quant_method": "gptq", "bits": 4, "group_size": 128, "damp_percent": 0.01, "desc_act": False,
              "sym": True, "true_sequential": True, "static_groups": False}),
])
def test_unsupported_checkpoint_refused_before_any_weight(tmp_path, method, qc):
    folder = str(tmp_path / method)
    _garbage_checkpoint(folder, qc)
    proc, elapsed = _launch(["--model-path", folder])
    _assert_refused(proc, elapsed, f"'{method}'", "supported: fp8")


def test_unknown_quantization_flag_refused():
    proc, elapsed = _launch(["--quantization", "foo"])
    _assert_refused(proc, elapsed, "'foo'", "supported: fp8")


def _lay_out_hub_cache(hf_home, repo_id, src):
    """huggingface_hub's cache: blobs/<sha256>, snapshots/<rev>/<file> -> ../../blobs/<sha256>, refs/main."""
    repo = os.path.join(hf_home, "hub", "models--" + repo_id.replace("/", "--"))
    os.makedirs(os.path.join(repo, "blobs"))
    os.makedirs(os.path.join(repo, "refs"))
    snapshot = os.path.join(repo, "snapshots", REVISION)
    for name in os.listdir(src):
        data = open(os.path.join(src, name), "rb").read()
        sha = hashlib.sha256(data).hexdigest()
        with open(os.path.join(repo, "blobs", sha), "wb") as f:
            f.write(data)
        os.makedirs(snapshot, exist_ok=True)
        os.symlink(os.path.join("..", "..", "blobs", sha), os.path.join(snapshot, name))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(REVISION)


def _reference_greedy(folder):
    model, config = load_model(folder)
    runner = PagedModelRunner(model, config)
    req = runner.new_req()
    first = runner.extend([req], [PROMPT_IDS]).next_token_logits
    return runner.greedy([req], first, NEW_TOKENS)[0]


def _server_greedy(server):
    body = {"input_ids": PROMPT_IDS,
            "sampling_params": {"temperature": 0, "max_new_tokens": NEW_TOKENS, "ignore_eos": True}}
    r = requests.post(server.base_url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()["output_ids"]


@pytest.fixture(scope="module")
def tiny_sd():
    config = tiny_config()
    return config, tiny_state_dict(config)


def test_hub_id_offline_serves_fp8_block_checkpoint(tmp_path_factory, tiny_sd):
    config, sd = tiny_sd
    root = tmp_path_factory.mktemp("hub")
    src = str(root / "src")
    ref = write_fp8_block(src, sd, config)
    ref_folder = write_unquantized(str(root / "ref"), ref, config, torch.float32, tokenizer=False)
    hf_home = str(root / "hf_home")
    _lay_out_hub_cache(hf_home, "tiny-org/tiny-llama-fp8", src)
    env = {"HF_HOME": hf_home, "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)

    missing, elapsed = _launch(["--model-path", "tiny-org/missing"], env=env)
    _assert_refused(missing, elapsed, "'tiny-org/missing'", "HF_HUB_OFFLINE")
    bad_rev, elapsed = _launch(["--model-path", "tiny-org/tiny-llama-fp8", "--revision", "v9"], env=env)
    _assert_refused(bad_rev, elapsed, "'tiny-org/tiny-llama-fp8'")

    server = start_server(tmp_path_factory, ["--model-path", "tiny-org/tiny-llama-fp8", "--revision", "main",
                                             "--max-total-tokens", "4096"], name="hub", env=env)
    try:
        log = server.read_log()
        assert "fp8 checkpoint" in log and "block [128, 128]" in log, log[-3000:]
        client = openai.Client(base_url=server.base_url + "/v1", api_key="none")
        assert [m.id for m in client.models.list().data] == ["tiny-org/tiny-llama-fp8"]
        info = requests.get(server.base_url + "/get_model_info", timeout=10).json()
        assert info["model_path"].endswith(os.path.join("snapshots", REVISION))
        got = _server_greedy(server)
        assert got == _reference_greedy(ref_folder)
        out = client.completions.create(model="tiny-org/tiny-llama-fp8", prompt="Hello", max_tokens=5, temperature=0)
        assert out.usage.completion_tokens == 5 or out.choices[0].finish_reason == "stop"
    finally:
        server.stop()
    shutil.rmtree(hf_home)


def test_compressed_tensors_static_checkpoint_serves(tmp_path_factory, tiny_sd):
    """RedHatAI-style FP8 (per-tensor weight scales, static input scales) from a local folder,
    with an FP8 KV cache on top."""
    config, sd = tiny_sd
    root = tmp_path_factory.mktemp("ct")
    fp32 = write_unquantized(str(root / "fp32"), sd, config, torch.float32, tokenizer=False)
    from tests.unit.test_fp8_loading import _calibration_amax

    folder = str(root / "ct")
    ref = write_compressed_tensors_fp8(folder, sd, config, "tensor", "static", _calibration_amax(fp32))
    ref_folder = write_unquantized(str(root / "ref"), ref, config, torch.float32, tokenizer=False)
    server = start_server(tmp_path_factory, ["--model-path", folder, "--max-total-tokens", "4096",
                                             "--kv-cache-dtype", "fp8_e4m3"], name="ct")
    try:
        info = requests.get(server.base_url + "/get_server_info", timeout=10).json()
        assert info["kv_cache_dtype"] == "fp8_e4m3"
        assert "dtype: torch.float8_e4m3fn" in server.read_log()
        got = _server_greedy(server)
        want = _reference_greedy(ref_folder)
        # FP8 activations and KV: the continuation agrees with the dequantized reference on most tokens
        assert sum(a == b for a, b in zip(got, want)) >= NEW_TOKENS - 2, (got, want)
    finally:
        server.stop()


def test_default_model_fp8_weights_and_kv(tmp_path_factory):
    """SmolLM2 (GGUF) quantized at load, FP8 KV: the chat answer survives."""
    server = start_server(tmp_path_factory, ["--quantization", "fp8", "--kv-cache-dtype", "fp8_e4m3",
                                             "--max-total-tokens", "8192"], name="smol-fp8")
    try:
        client = openai.Client(base_url=server.base_url + "/v1", api_key="none")
        resp = client.chat.completions.create(
            model="default", messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0, max_tokens=24)
        assert "Paris" in resp.choices[0].message.content
        assert "quantized at load" in server.read_log()
    finally:
        server.stop()
