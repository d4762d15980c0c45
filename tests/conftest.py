"""Shared fixtures: a real sglserve server on the default model, started once per session."""

from __future__ import annotations

from typing import Iterator

import pytest

from tests.helpers import ServerProcess, start_server


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except Exception:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session, exitstatus):
    """A child process a test left running fails the run here instead of hanging it: Python's
    exit joins every non-daemon multiprocessing child, and the server's children ignore SIGTERM
    (utils/process.py), so one leaked child would keep pytest alive forever."""
    import multiprocessing

    leaked = multiprocessing.active_children()
    if not leaked:
        return
    for proc in leaked:
        proc.kill()
        proc.join(10)
    names = ", ".join(f"{p.name} (pid {p.pid})" for p in leaked)
    session.config.get_terminal_writer().line(f"ERROR: tests left child processes running, killed: {names}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Iterator[ServerProcess]:
    """The default model (SmolLM2-135M-Instruct GGUF) on the CPU."""
    # The parsers change nothing for requests without tools / think tags (tests/server/test_openai_features.py)
    s = start_server(tmp_path_factory, ["--log-level", "info", "--max-total-tokens", "20000",
                                        "--tool-call-parser", "llama3", "--reasoning-parser", "qwen3"])
    yield s
    s.stop()
