"""CPU time of a running sglserve server's three processes over a command (issue 10 asks for it).

Why: the host path is three Python processes; which one saturates a core tells where to work.
The launcher is the HTTP process; its spawned children, in start order, are the scheduler then
the detokenizer (launch_server.launch_subprocesses); multiprocessing's resource tracker is skipped.
With --api-server-count N > 1 the HTTP workers come next ("http0".."http<N-1>") and the launcher only
watches ("launcher"); "http" is then the sum of the launcher and its workers, so the column means
the same thing for any N.

  python benchmarks/host_path/proc_cpu.py --pid <launcher pid> --out cpu.json -- <command ...>
runs the command and writes {"wall_s", "cores": {http, scheduler, detokenizer}, "cpu_s": {...}}
(cores = CPU seconds / wall seconds), also printed as one line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Dict

import psutil


def server_procs(pid: int) -> Dict[str, psutil.Process]:
    launcher = psutil.Process(pid)
    kids = [c for c in launcher.children(recursive=False)
            if "resource_tracker" not in " ".join(c.cmdline())]
    kids.sort(key=lambda c: c.create_time())
    procs = {"http" if len(kids) <= 2 else "launcher": launcher}
    for name, proc in zip(("scheduler", "detokenizer"), kids):
        procs[name] = proc
    for k, proc in enumerate(kids[2:]):  # --api-server-count's HTTP workers
        procs[f"http{k}"] = proc
    return procs


def cpu_seconds(procs: Dict[str, psutil.Process]) -> Dict[str, float]:
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            out[name] = t.user + t.system
        except psutil.Error:
            out[name] = float("nan")
    return out


class CpuWindow:
    """with CpuWindow(pid) as w: ...  then w.result(): cores used by each process in the block."""

    def __init__(self, pid: int) -> None:
        self.procs = server_procs(pid)

    def __enter__(self) -> "CpuWindow":
        self.t0, self.c0 = time.perf_counter(), cpu_seconds(self.procs)
        return self

    def __exit__(self, *exc) -> None:
        self.t1, self.c1 = time.perf_counter(), cpu_seconds(self.procs)

    def result(self) -> Dict[str, object]:
        wall = self.t1 - self.t0
        cpu = {k: self.c1[k] - self.c0[k] for k in self.c0}
        if "launcher" in cpu:
            cpu["http"] = sum(v for k, v in cpu.items() if k == "launcher" or k[4:].isdigit() and k.startswith("http"))
        return {"wall_s": round(wall, 3), "cpu_s": {k: round(v, 3) for k, v in cpu.items()},
                "cores": {k: round(v / wall, 3) for k, v in cpu.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pid", type=int, required=True, help="the launcher's pid (python -m sglserve.launch_server)")
    ap.add_argument("--out", help="append the result as one JSON line")
    ap.add_argument("--tag", default="")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    with CpuWindow(args.pid) as w:
        rc = subprocess.call(cmd)
    res = {"tag": args.tag, **w.result(), "rc": rc}
    print("process CPU (cores): " + json.dumps(res), flush=True)
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(res) + "\n")
    return rc


if __name__ == "__main__":
    sys.exit(main())
