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
