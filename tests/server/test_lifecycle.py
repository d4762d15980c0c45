"""Start-up validation, clean shutdown, and a dying child taking the server down."""

from __future__ import annotations

import glob
import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest

from tests.helpers import start_server


def run_launcher(args, timeout=120):
    return subprocess.run([sys.executable, "-m", "sglserve.launch_server", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize(
    "args,flag",
    [
        (["--tp-size", "0"], "--tp-size"),
        (["--tp-size", "2", "--nnodes", "2"], "--dist-init-addr"),
        (["--tp-size", "3", "--nnodes", "2", "--dist-init-addr", "127.0.0.1:1234"], "--nnodes"),
        (["--page-size", "0"], "--page-size"),
        (["--schedule-policy", "random"], "--schedule-policy"),
        (["--mem-fraction-static", "1.5"], "--mem-fraction-static"),
        (["--device", "cpu", "--attention-backend", "triton"], "--attention-backend"),
        (["--model-path", "/nonexistent/model"], "--model-path"),
        (["--load-format", "pickle"], "--load-format"),
        (["--max-num-batched-tokens", "0", "--page-size", "4"], "--chunked-prefill-size"),
    ],
)
def test_invalid_flags_fail_at_start(args, flag):
    r = run_launcher(args)
    assert r.returncode != 0
    assert flag in r.stderr, r.stderr


@pytest.mark.skipif(importlib.util.find_spec("flashinfer") is not None, reason="flashinfer is installed here")
def test_flashinfer_backend_without_flashinfer_fails_at_start():
    r = run_launcher(["--attention-backend", "flashinfer"])
    assert r.returncode != 0
    assert "--attention-backend=flashinfer" in r.stderr and "pip install flashinfer-python" in r.stderr, r.stderr


def test_unambiguous_prefix_flags_work():
    from sglserve.server_args import prepare_server_args

    args = prepare_server_args(["--schedule-pol", "lpm", "--disable-radix", "--mem-fraction", "0.2"])
    assert args.schedule_policy == "lpm" and args.disable_radix_cache and args.mem_fraction_static == 0.2


def _children(pid):
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def test_sigterm_leaves_no_orphans_or_sockets(tmp_path_factory):
    before = set(glob.glob(os.path.join(tempfile.gettempdir(), "sglserve-*")))
    s = start_server(tmp_path_factory, ["--max-total-tokens", "4096"], name="sigterm")
    kids = _children(s.proc.pid)
    assert len(kids) >= 2
    code = s.stop(signal.SIGTERM)
    assert code == 0
    time.sleep(1)
    assert not any(k.is_running() and k.status() != psutil.STATUS_ZOMBIE for k in kids)
    after = set(glob.glob(os.path.join(tempfile.gettempdir(), "sglserve-*")))
    assert after <= before


def test_dead_child_takes_server_down(tmp_path_factory):
    s = start_server(tmp_path_factory, ["--max-total-tokens", "4096"], name="childdeath")
    kids = [k for k in _children(s.proc.pid) if "python" in k.name().lower()]
    scheduler = max(kids, key=lambda k: k.memory_info().rss)  # the one holding the model
    scheduler.kill()
    code = s.proc.wait(timeout=60)
    assert code != 0
    assert "exited with code" in s.read_log()
    s.stop()
