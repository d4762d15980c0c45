"""Start-up to ready: launch the server, poll /health, print one JSON line with the time to ready
and the time of each start-up phase, read off the server's own log lines as they are written.

    python benchmarks/bench_startup.py [--runs 3] [--log server.log] [--result-file r.jsonl] -- \
        --model-path benchmarks/configs/Llama-3.1-8B-Instruct --load-format dummy --tokenizer-path TOK

Everything after `--` goes to `python -m sglserve.launch_server` (--host/--port are added). Each
log line is stamped with this process's clock when it arrives (the log's own timestamps have one
second resolution). Phases, in seconds since the launch (null when the line never came, e.g.
no graphs on the CPU), the last line of its kind counting (with --tp-size > 1 the slowest rank):
  launcher       "Starting sglserve"                     launcher imported, flags parsed
  imports        "Scheduler process started"             the scheduler's imports done
  config         "Model config read in"                  transformers' config read (its imports)
  device         "CUDA device cuda:N ready"              torch's CUDA init (context made while importing)
  weights        "Load weight end"                       weights loaded
  kv             "KV Cache is allocated"
  graphs         "Captured CUDA graphs"
  scheduler      "max_total_num_tokens="                 scheduler built
  fired_up       "The server is fired up"                the launcher has everything
  ready          first 200 from /health
`steps` holds each phase's time since the previous one present.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from typing import Dict, List, Optional, Tuple

MARKERS: List[Tuple[str, str]] = [
    ("launcher", "Starting sglserve"),
    ("imports", "Scheduler process started"),
    ("config", "Model config read in"),
    ("device", "CUDA device cuda:"),
    ("weights", "Load weight end"),
    ("kv", "KV Cache is allocated"),
    ("graphs", "Captured CUDA graphs"),
    ("scheduler", "max_total_num_tokens="),
    ("fired_up", "The server is fired up"),
]
GRAPH_SECONDS = re.compile(r"Captured CUDA graphs for (\d+) batch sizes .* in ([\d.]+) s")
HEALTH_POLL_S = 0.05


def phase_times(stamped: List[Tuple[float, str]]) -> Dict[str, Optional[float]]:
    """Phase -> seconds since launch of the last log line carrying its marker."""
    out: Dict[str, Optional[float]] = {name: None for name, _ in MARKERS}
    for t, line in stamped:
        for name, marker in MARKERS:
            if marker in line:
                out[name] = round(t, 3)
    return out


def steps(phases: Dict[str, Optional[float]]) -> Dict[str, float]:
    """Each present phase's time since the previous present one (the first since launch)."""
    out, prev = {}, 0.0
    for name, t in phases.items():
        if t is not None:
            out[name] = round(t - prev, 3)
            prev = t
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1.0) as r:
            return r.status == 200
    except (urllib.error.URLError, OSError):
        return False


def run_once(server_flags: List[str], port: int, timeout: float, log_path: Optional[str]) -> dict:
    """One launch: seconds to /health 200 and the phases; the server is stopped before returning."""
    cmd = [sys.executable, "-m", "sglserve.launch_server", *server_flags, "--host", "127.0.0.1", "--port", str(port)]
    stamped: List[Tuple[float, str]] = []
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True)

    def reader() -> None:
        for line in proc.stdout:
            stamped.append((time.monotonic() - t0, line.rstrip("\n")))

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    ready, error = None, None
    try:
        while ready is None:
            if proc.poll() is not None:
                error = f"server exited with code {proc.returncode} before ready"
                break
            if time.monotonic() - t0 > timeout:
                error = f"not ready after {timeout:g} s"
                break
            if healthy(port):
                ready = round(time.monotonic() - t0, 3)
            else:
                time.sleep(HEALTH_POLL_S)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        thread.join(5)
    if log_path:
        with open(log_path, "a") as f:
            f.writelines(f"+{t:8.3f} {line}\n" for t, line in stamped)
    phases = phase_times(stamped)
    phases["ready"] = ready
    result: dict = {"ready_s": ready, "phases": phases, "steps": steps(phases)}
    for _, line in stamped:
        m = GRAPH_SECONDS.search(line)
        if m:
            result["graph_sizes"], result["graph_capture_s"] = int(m.group(1)), float(m.group(2))
    if error:
        result["error"] = error
        result["log_tail"] = [line for _, line in stamped[-15:]]
    return result


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    server_flags: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, server_flags = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=1, help="launches in a row (the first also warms the page cache)")
    ap.add_argument("--port", type=int, default=0, help="default: a free port")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for /health per launch")
    ap.add_argument("--log", help="append every server log line, stamped with seconds since launch, here")
    ap.add_argument("--result-file", help="append the JSON line here too")
    ap.add_argument("--tag", default="startup")
    args = ap.parse_args(argv)
    if not server_flags:
        ap.error("give the server's flags after --, e.g. -- --model-path MODEL --load-format dummy")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    # `timeout` (stages.sh) sends SIGTERM: exit through run_once's finally, which stops the server
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    runs = []
    for _ in range(args.runs):
        r = run_once(server_flags, args.port or free_port(), args.timeout, args.log)
        runs.append(r)
        if "error" in r:
            break
    ok = [r["ready_s"] for r in runs if r["ready_s"] is not None]
    row = {"tag": args.tag, "flags": " ".join(server_flags), **runs[-1],
           "ready_s_runs": [r["ready_s"] for r in runs], "ready_s_min": min(ok) if ok else None}
    line = json.dumps(row)
    print(line, flush=True)
    if args.result_file:
        with open(args.result_file, "a") as f:
            f.write(line + "\n")
    return 1 if "error" in runs[-1] else 0


if __name__ == "__main__":
    sys.exit(main())
