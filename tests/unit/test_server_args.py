"""ServerArgs as users meet it: --help describes every flag; defaults resolve per device."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

from sglserve.server_args import ServerArgs, prepare_server_args


def test_every_flag_is_described_in_help():
    out = subprocess.run([sys.executable, "-m", "sglserve.launch_server", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split())
    for f in dataclasses.fields(ServerArgs):
        assert ServerArgs.HELP.get(f.name), f"--{f.name} has no help text"
        assert "--" + f.name.replace("_", "-") in text


def test_cpu_defaults_and_step_budget_alias():
    args = prepare_server_args(["--device", "cpu"])
    assert args.attention_backend == "torch_native" and args.disable_cuda_graph and args.disable_overlap_schedule
    assert args.chunked_prefill_size == 2048
    # vLLM's name for the step's token budget sets the same field
    assert prepare_server_args(["--device", "cpu", "--max-num-batched-tokens", "256"]).chunked_prefill_size == 256
    assert prepare_server_args(["--device", "cpu", "--chunked-prefill-size", "512"]).chunked_prefill_size == 512


def test_stream_interval_flag():
    import pytest

    from sglserve.server_args import ServerArgsError

    assert prepare_server_args(["--device", "cpu"]).stream_interval == 1
    assert prepare_server_args(["--device", "cpu", "--stream-interval", "8"]).stream_interval == 8
    with pytest.raises(ServerArgsError, match="--stream-interval=0 must be >= 1"):
        ServerArgs(device="cpu", stream_interval=0)


def test_model_sized_defaults_on_cuda():
    """Step budget and graph batch sizes follow the model's weights per token; flags win."""
    from pathlib import Path

    from sglserve.configs.model_config import ModelConfig

    configs = Path(__file__).resolve().parents[2] / "benchmarks" / "configs"
    got = {}
    for folder in sorted(str(p) for p in configs.iterdir()):
        params = ModelConfig.from_pretrained(folder, load_format="dummy").params_per_token()
        sa = ServerArgs(model_path=folder, load_format="dummy", device="cpu")
        sa.chunked_prefill_size = sa.cuda_graph_max_bs = None  # as on CUDA before the model is read
        sa.resolve_model_defaults(params)
        got[folder.rsplit("/", 1)[-1]] = (sa.chunked_prefill_size, sa.cuda_graph_max_bs)
    assert got["Llama-3.1-8B-Instruct"] == (2560, 256)
    assert got["Qwen2.5-7B-Instruct"] == (2560, 256)
    assert got["SmolLM2-135M-Instruct"] == (32768, 2048)
    assert got["Qwen3-0.6B"] == (32768, 2048)
    sa = ServerArgs(model_path=str(configs / "Qwen3-0.6B"), load_format="dummy", device="cpu",
                    chunked_prefill_size=1024, cuda_graph_max_bs=64)
    sa.resolve_model_defaults(10**8)
    assert (sa.chunked_prefill_size, sa.cuda_graph_max_bs) == (1024, 64)
    big = ServerArgs(model_path=str(configs / "Qwen3-0.6B"), load_format="dummy", device="cpu")
    big.chunked_prefill_size = None
    big.resolve_model_defaults(7 * 10**10)  # 70B: the floor
    assert big.chunked_prefill_size == 2048
    # The CPU keeps its fixed defaults
    cpu = ServerArgs(model_path=str(configs / "Qwen3-0.6B"), load_format="dummy", device="cpu")
    assert (cpu.chunked_prefill_size, cpu.cuda_graph_max_bs) == (2048, 256)


def test_fp8_kv_cache_backends(monkeypatch):
    """--kv-cache-dtype fp8_e4m3 runs on torch_native and triton; FlashInfer (not wired) is refused."""
    import importlib.util

    import pytest

    from sglserve.server_args import ServerArgsError

    assert ServerArgs(device="cpu", kv_cache_dtype="fp8_e4m3").kv_cache_dtype == "fp8_e4m3"
    monkeypatch.setattr("sglserve.server_args.cuda_device_count", lambda: 1)  # validation only: nothing runs on it
    assert ServerArgs(device="cuda", attention_backend="triton", kv_cache_dtype="fp8_e4m3").attention_backend == "triton"
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "flashinfer" else find_spec(name, *a))
    with pytest.raises(ServerArgsError, match="fp8_e4m3 is implemented for the attention backends"):
        ServerArgs(device="cuda", attention_backend="flashinfer", kv_cache_dtype="fp8_e4m3")
    with pytest.raises(SystemExit):  # argparse choices
        prepare_server_args(["--device", "cpu", "--kv-cache-dtype", "fp8_e5m2"])


def test_device_resolves_without_importing_torch():
    """--device auto and --device cuda are checked through the driver and torch's version file:
    the launcher must not import torch before it spawns the scheduler (~3 s on a GPU host)."""
    import subprocess
    import sys

    import torch

    from sglserve.utils.cuda_probe import cuda_device_count, torch_built_with_cuda

    assert torch_built_with_cuda() == (torch.version.cuda is not None)
    if torch.version.cuda is None or not torch.cuda.is_available():
        assert cuda_device_count() == 0
    else:
        assert cuda_device_count() == torch.cuda.device_count()
    code = ("import sys; from sglserve.server_args import prepare_server_args as p; "
            "a = p(['--model-path', 'x', '--load-format', 'dummy']); print(a.device, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    device, imported = out.stdout.split()
    assert device == ("cuda" if torch.cuda.is_available() else "cpu") and imported == "False"


def test_api_server_count_flag_alias_and_validation():
    import pytest

    from sglserve.port_args import PortArgs
    from sglserve.server_args import ServerArgsError

    assert prepare_server_args(["--device", "cpu"]).api_server_count == 1
    assert prepare_server_args(["--device", "cpu", "--api-server-count", "3"]).api_server_count == 3
    assert prepare_server_args(["--device", "cpu", "--tokenizer-worker-num", "2"]).api_server_count == 2  # SGLang's name
    for bad in (0, -2):
        with pytest.raises(ServerArgsError, match=f"--api-server-count={bad} must be >= 1"):
            ServerArgs(device="cpu", api_server_count=bad)
    ports = PortArgs.create(3)
    try:
        assert len(set(ports.tokenizer_ipc_names)) == 3 and ports.tokenizer_ipc_name == ports.tokenizer_ipc_names[0]
        assert all(n.startswith(f"ipc://{ports.ipc_dir}/") for n in ports.tokenizer_ipc_names)
    finally:
        import shutil

        shutil.rmtree(ports.ipc_dir)
