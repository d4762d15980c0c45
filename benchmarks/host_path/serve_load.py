"""The real server on the CPU with the free forward (site/sitecustomize.py), driven by the
project's load generator: HTTP-delivered output tokens/s at N concurrent streaming /generate
requests, and how many cores each server process used meanwhile.

One server serves every N (start-up costs ~20 s on this CPU); its max_running_requests is the
largest N, so each run has all of its requests decoding at once.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Any, Dict, List, Sequence

from proc_cpu import CpuWindow

HERE = os.path.dirname(os.path.abspath(__file__))


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Server:
    def __init__(self, model_dir: str, tokenizer_path: str, table: Sequence[int], port: int, max_n: int,
                 context: int, extra_args: List[str], log_path: str) -> None:
        self.port, self.log_path = port, log_path
        fd, self.ids_path = tempfile.mkstemp(prefix="hp-ids-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump(list(table), f)
        # 1-wide stub logits: a step with a chunked prompt gathers its sampled rows, a ~400 MB copy at
        # 2000 rows of the full vocabulary on this CPU that is an asynchronous gather on a GPU (hp_stubs)
        env = dict(os.environ, SGLSERVE_BENCH_FREE_FORWARD=self.ids_path, SGLSERVE_BENCH_LOGITS_WIDTH="1",
                   PYTHONPATH=os.pathsep.join([os.path.join(HERE, "site"), os.environ.get("PYTHONPATH", "")]))
        cmd = [sys.executable, "-m", "sglserve.launch_server", "--model-path", model_dir, "--load-format", "dummy",
               "--tokenizer-path", tokenizer_path, "--device", "cpu", "--host", "127.0.0.1", "--port", str(port),
               "--max-running-requests", str(max_n), "--max-total-tokens", str(max_n * context + 4096),
               "--context-length", str(context), *extra_args]
        self.cmd = cmd
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 300) -> float:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log_path}")
            if _healthy(self.port):
                return time.perf_counter() - t0
            time.sleep(0.5)
        raise RuntimeError(f"server not healthy after {timeout} s; see {self.log_path}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        os.unlink(self.ids_path)


def run_load(server: Server, tokenizer_path: str, n: int, input_len: int, output_len: int, out_file: str,
             backend: str = "sglserve") -> Dict[str, Any]:
    """N prompts of input_len random tokens (sent as text), output_len tokens each, all at once,
    through /generate (backend sglserve) or /v1/chat/completions (openai-chat)."""
    cmd = [sys.executable, "-m", "sglserve.bench_serving", "--backend", backend, "--port", str(server.port),
           "--tokenizer", tokenizer_path, "--dataset-name", "random", "--num-prompts", str(n),
           "--random-input-len", str(input_len), "--random-output-len", str(output_len),
           "--random-range-ratio", "1", "--request-rate", "inf", "--disable-tqdm", "--output-file", out_file,
           "--tag", f"host_path_{backend}_n{n}"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with CpuWindow(server.proc.pid) as w:
        r = subprocess.run(cmd, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    client_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if r.returncode != 0:
        raise RuntimeError(f"bench_serving failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    with open(out_file) as f:
        row = [json.loads(line) for line in f if line.strip()][-1]
    keep = ("completed", "failed", "duration", "total_output_tokens", "output_throughput", "median_ttft_ms",
            "median_itl_ms", "p99_itl_ms", "max_itl_ms")
    cpu = w.result()
    # The window also holds the client's start-up (imports, tokenizer, dataset) while the server
    # idles: cores over the load's own duration are the better figure.
    dur = row.get("duration") or cpu["wall_s"]
    cpu["cores_during_load"] = {k: round(v / dur, 3) for k, v in cpu["cpu_s"].items()}
    cpu["client_cores_during_load"] = round(client_cpu / dur, 3)
    # CPU µs per delivered token: unlike tok/s, barely moved by other load on a shared machine
    toks = max(row.get("total_output_tokens") or 0, 1)
    cpu["us_per_token"] = {**{k: round(v / toks * 1e6, 1) for k, v in cpu["cpu_s"].items()},
                           "client": round(client_cpu / toks * 1e6, 1)}
    return {**{k: row.get(k) for k in keep}, "server_cpu": cpu}
