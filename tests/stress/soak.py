"""Soak: waves of concurrent clients for N minutes, then the same report as the load test.

    python tests/stress/soak.py --minutes 10 [--clients 100] [--leavers 0.3] [--url URL]

Without --url it starts a server on the default model (loopback, --max-total-tokens 20000) and
stops it at the end. Prints one JSON report; exits 1 if any staying client got a wrong answer
or an error, the KV cache is not back to free-or-cached, or a process's RSS grew more than
--max-rss-growth (default 10%) over its value after the warm-up wave.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tests.stress.load import (  # noqa: E402
    kv_state,
    process_rss,
    reference_answers,
    rss_growth,
    run_load,
    summarize,
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, required=True)
    ap.add_argument("--clients", type=int, default=100, help="concurrent clients per wave")
    ap.add_argument("--leavers", type=float, default=0.3, help="fraction of clients that disconnect")
    ap.add_argument("--url", default=None, help="an already running server (RSS is then not measured)")
    ap.add_argument("--max-rss-growth", type=float, default=0.10)
    ap.add_argument("--server-args", default="--max-total-tokens 20000")
    args = ap.parse_args()

    server = None
    if args.url is None:
        from tests.helpers import ServerProcess

        server = ServerProcess(args.server_args.split(), os.path.abspath("soak-server.log"))
        server.wait_ready()
        base_url = server.base_url
    else:
        base_url = args.url.rstrip("/")
    try:
        refs = reference_answers(base_url)
        asyncio.run(run_load(base_url, args.clients, refs, args.leavers, seed=0))  # warm-up wave
        kv_state(base_url)
        before = process_rss(server.proc.pid) if server else {}
        t0, waves, outcomes = time.time(), 0, []
        while time.time() - t0 < args.minutes * 60:
            waves += 1
            outcomes += asyncio.run(run_load(base_url, args.clients, refs, args.leavers, seed=waves))
        elapsed = time.time() - t0
        kv = kv_state(base_url)
        after = process_rss(server.proc.pid) if server else {}
        growth = rss_growth(before, after) if server else {}
        report = {**summarize(outcomes), "minutes": round(elapsed / 60, 2), "waves": waves,
                  "requests_per_s": round(len(outcomes) / elapsed, 2), "kv": kv,
                  "rss_before_mib": {k: round(v / 2**20, 1) for k, v in before.items()},
                  "rss_after_mib": {k: round(v / 2**20, 1) for k, v in after.items()}, "rss_growth": growth}
    finally:
        if server is not None:
            server.stop()
    print(json.dumps(report, indent=2))
    ok = report["failed"] == 0 and kv["clean"] and all(g < args.max_rss_growth for g in growth.values())
    print("SOAK PASSED" if ok else "SOAK FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
