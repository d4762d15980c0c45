"""Start and stop a real `python -m sglserve.launch_server` for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """A launched `python -m sglserve.launch_server`, its base URL and its log file."""

    def __init__(self, extra_args: List[str], log_path: str, env: Optional[Dict[str, str]] = None) -> None:
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.log = open(log_path, "w")
        cmd = [sys.executable, "-m", "sglserve.launch_server", "--port", str(self.port), *extra_args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env=None if env is None else {**os.environ, **env})

    def wait_ready(self, timeout: float = 300.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.read_log()[-4000:]}")
            try:
                if requests.get(self.base_url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"server not ready after {timeout}s:\n{self.read_log()[-4000:]}")

    def read_log(self) -> str:
        self.log.flush()
        with open(self.log_path) as f:
            return f.read()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def start_server(tmp_path_factory, extra_args: List[str], name: str = "server",
                 env: Optional[Dict[str, str]] = None) -> ServerProcess:
    """`env`: extra environment variables for the server (added to this process's)."""
    log = str(tmp_path_factory.mktemp(name) / "server.log")
    server = ServerProcess(extra_args, log, env)
    try:
        server.wait_ready()
    except Exception:
        server.stop(signal.SIGKILL)
        raise
    return server
