"""Where do a run's long inter-token gaps come from: the scheduler's steps, or what follows them?

Reads a bench_serving --output-details result (chunk_times per request, perf_counter) and the
server's --step-trace-path file (one JSON line per resolved step, the same clock). Every gap
at least --min-ms long between two chunks of one stream is classed:
  - "step": a step of the scheduler was as long (its send came at least 0.8 x the gap after
    the send before it): the scheduler or the GPU held everyone;
  - "after": no step that long in the window: the token was sent in time and held after the
    scheduler (detokenizer, HTTP process, client).
For the "step" class, the long steps are listed with their parts (planning + launch on the
host, waiting for the device, processing and sending), their mode and size.

    python benchmarks/host_path/step_gaps.py --details sweep.jsonl --tag w3_budget_3072 --trace steps_3072.jsonl
"""

from __future__ import annotations

import argparse
import bisect
import json
from collections import Counter
from typing import Dict, List


def load_details(path: str, tag: str) -> dict:
    found = None
    with open(path) as f:
        for line in f:
            d = json.loads(line)
            if "chunk_times" in d and (tag is None or d.get("tag") == tag):
                found = d
    if found is None:
        raise SystemExit(f"no --output-details row tagged {tag!r} in {path}")
    return found


def classify(details: dict, steps: List[dict], min_ms: float) -> Dict[str, object]:
    sent = [s["sent"] for s in steps]
    step_gap = [0.0] + [b - a for a, b in zip(sent, sent[1:])]
    classes: Counter = Counter()
    by_step: Counter = Counter()
    samples = 0
    for times in details["chunk_times"]:
        for a, b in zip(times, times[1:]):
            samples += 1
            gap = b - a
            if gap * 1e3 < min_ms:
                continue
            lo, hi = bisect.bisect_left(sent, a - 0.002), bisect.bisect_right(sent, b)
            window = range(max(lo, 1), hi)
            longest = max(window, key=lambda i: step_gap[i], default=None)
            if longest is not None and step_gap[longest] >= 0.8 * gap:
                classes["step"] += 1
                by_step[longest] += 1
            else:
                classes["after"] += 1
    t0 = min(details["start_times"])
    long_steps = []
    for i, n in by_step.most_common(15):
        s = steps[i]
        long_steps.append({
            "at_s": round(s["sent"] - t0, 3), "gap_ms": round(step_gap[i] * 1e3, 1), "samples": n,
            "mode": s.get("mode"), "reqs": s.get("reqs"), "prefill_tokens": s.get("prefill_tokens"),
            "plan_launch_ms": round((s["launched"] - s["launch"]) * 1e3, 1),
            "wait_device_ms": round((s["synced"] - s["resolve"]) * 1e3, 1),
            "process_send_ms": round((s["sent"] - s["synced"]) * 1e3, 1),
            "looked_ahead": s.get("looked_ahead"),
            **({"forward_ms": round((s["forwarded"] - s["prepared"]) * 1e3, 1),
                "to_first_layer_ms": round((s["first_layer_end"] - s["prepared"]) * 1e3, 1),
                "layers_ms": round((s["last_layer_end"] - s["first_layer_end"]) * 1e3, 1),
                "after_layers_ms": round((s["forwarded"] - s["last_layer_end"]) * 1e3, 1),
                "max_layer_gap_ms": s["max_layer_gap_ms"], "max_gap_layer": s["max_gap_layer"]}
               if "first_layer_end" in s else {}),
        })
    gaps_ms = sorted(g * 1e3 for g in step_gap[1:])
    pct = (lambda q: round(gaps_ms[min(len(gaps_ms) - 1, int(q * len(gaps_ms)))], 1)) if gaps_ms else (lambda q: None)
    return {"chunk_gaps": samples, f"gaps_over_{min_ms:g}ms": dict(classes),
            "step_gap_ms": {"median": pct(0.5), "p99": pct(0.99), "max": round(gaps_ms[-1], 1) if gaps_ms else None},
            "steps": len(steps), "steps_without_look_ahead": sum(1 for s in steps if not s.get("looked_ahead")),
            "longest_steps": long_steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--details", required=True, help="bench_serving --output-file written with --output-details")
    ap.add_argument("--tag", default=None, help="the run's --tag (default: the file's last detailed row)")
    ap.add_argument("--trace", required=True, help="the server's --step-trace-path file")
    ap.add_argument("--min-ms", type=float, default=80.0, help="gaps at least this long are classed")
    args = ap.parse_args()
    with open(args.trace) as f:
        steps = sorted((json.loads(line) for line in f if line.strip()), key=lambda s: s["sent"])
    print(json.dumps(classify(load_details(args.details, args.tag), steps, args.min_ms), indent=1))


if __name__ == "__main__":
    main()
