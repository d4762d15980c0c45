"""One table from a stage's result files (benchmarks/device/stages.sh), so the device call's
output tail holds the numbers that go into benchmarks/RESULTS.md.

  python benchmarks/device/summarize.py <OUT folder>
"""

from __future__ import annotations

import glob
import json
import os
import sys
from typing import Dict, List


def rows(path: str) -> List[dict]:
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
    return out


WORKLOAD_FILES = ("w1", "w2", "w5", "fi_w1", "fi_w2")


def fmt(x, nd: int = 0) -> str:
    return "-" if x is None else f"{x:,.{nd}f}"


def main(folder: str) -> None:
    for name in WORKLOAD_FILES:  # fi_*: the fi stage's runs, one per attention backend
        for r in rows(os.path.join(folder, f"{name}.jsonl")) if os.path.exists(os.path.join(folder, f"{name}.jsonl")) else []:
            label = name.upper() if not name.startswith("fi_") else f"{name[3:].upper()} [{r.get('attention_backend')}]"
            if name.endswith("w1"):
                print(f"{label}: median decode {fmt(r.get('median_decode_latency_s', 0) * 1e3, 2)} ms, "
                      f"{fmt(r.get('median_decode_throughput_tok_s'), 1)} tok/s")
            else:
                busy = r.get("gpu_busy_fraction")
                kv = (f", KV {r['kv_cache_dtype']}: {r['max_total_num_tokens']} tokens x {r['kv_bytes_per_token']} B"
                      f" = {fmt(r['kv_cache_gb'], 2)} GB" if "kv_bytes_per_token" in r else "")
                print(f"{label}: {fmt(r.get('output_throughput'))} out tok/s, GPU busy "
                      f"{fmt(None if busy is None else busy * 100, 1)} %{kv}")
    for path in sorted(glob.glob(os.path.join(folder, "*.jsonl"))):
        if os.path.basename(path)[: -len(".jsonl")] in WORKLOAD_FILES:
            continue
        data = rows(path)
        accuracy = [r for r in data if r.get("tag") == "fp8_accuracy"]  # benchmarks/fp8_accuracy.py
        data = [r for r in data if r.get("tag") != "fp8_accuracy"]
        cpu: Dict[str, dict] = {r["tag"][4:]: r for r in data if str(r.get("tag", "")).startswith("cpu_")}
        offline = next((r["output_throughput"] for r in data if r.get("backend") == "sglserve-engine"), None)
        print(f"\n{os.path.basename(path)}")
        if data:
            print("| run | out tok/s | vs offline | median TTFT ms | median ITL ms | P99 ITL ms | max ITL ms | cores http/sched/detok |")
            print("|---|---|---|---|---|---|---|---|")
        for r in data:
            if str(r.get("tag", "")).startswith("cpu_"):
                continue
            tag = r.get("tag") or r.get("backend", "?")
            tput = r.get("output_throughput")
            rel = f"{tput / offline * 100:.0f} %" if offline and tput else "-"
            if r.get("backend") == "sglserve-engine":
                busy = r.get("gpu_busy_fraction")
                tag = f"offline Engine (GPU busy {fmt(busy * 100, 1)} %)" if busy is not None else "offline Engine"
            w = cpu.get(str(r.get("tag")), {})  # cores over the load's duration (the window has client start-up too)
            c = {k: v / r["duration"] for k, v in w.get("cpu_s", {}).items()} if r.get("duration") else {}
            cores = "/".join(f"{c[k]:.2f}" for k in ("http", "scheduler", "detokenizer") if k in c) or "-"
            print(f"| {tag} | {fmt(tput)} | {rel} | {fmt(r.get('median_ttft_ms'))} | {fmt(r.get('median_itl_ms'), 1)} "
                  f"| {fmt(r.get('p99_itl_ms'), 1)} | {fmt(r.get('max_itl_ms'), 1)} | {cores} |")
        if accuracy:
            print(("\n" if data else "") + "| FP8 accuracy | ppl | vs baseline | top-1 agreement | issue 12 bar |\n|---|---|---|---|---|")
        for r in accuracy:
            ratio = f"{(r['ppl_ratio'] - 1) * 100:+.2f} %" if "ppl_ratio" in r else "-"
            top1 = f"{r['top1_agreement'] * 100:.2f} %" if "top1_agreement" in r else "-"
            bar = "-" if "meets_bar" not in r else ("met" if r["meets_bar"] else "not met")
            print(f"| {r['variant']} ({r['dtype']}, {r['conversations']} conv., {r['tokens']} tok.) | {r['ppl']:.4f} "
                  f"| {ratio} | {top1} | {bar} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else os.environ.get("OUT", "/tmp/out"))
