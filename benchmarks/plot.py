"""Plot the results that benchmarks/run_all.sh wrote (PNGs next to the JSON lines).

  python benchmarks/plot.py [--results benchmarks/results] [--out benchmarks/results]

- w3_throughput_vs_rate.png: output / request throughput and median TTFT / ITL per request rate
- w3_ttft_itl_dist.png: TTFT and ITL distributions (CDFs) per request rate
- w4_cache_on_off.png: radix cache on vs off: throughput, TTFT, cache hit rate
- w125_vs_hf.png: sglserve vs the HF transformers peer on W1 (decode), W2 and W5 (throughput)
A plot whose inputs are missing is skipped with a note. Each file may hold several runs of
the same tag (appended); the latest one is used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def read_jsonl(path: str) -> List[dict]:
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    pass  # a line cut by an interrupted run
    return rows


def latest_by(rows: List[dict], key: str) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for r in rows:
        out[str(r.get(key))] = r
    return out


def _rate_order(rate) -> float:
    r = float(rate)
    return math.inf if math.isinf(r) else r


def _rate_label(rate) -> str:
    r = float(rate)
    return "inf" if math.isinf(r) else f"{r:g}"


def _log_if_wide(ax, values, axis="x") -> None:
    """Log scale only when the values span more than a decade (else the ticks read badly)."""
    v = [x for x in values if x > 0]
    if v and max(v) / min(v) > 10:
        (ax.set_xscale if axis == "x" else ax.set_yscale)("log")


def _bars(ax, names, vals, colors, fmt):
    bars = ax.bar(names, vals, color=colors)
    ax.bar_label(bars, fmt=fmt)
    ax.set_ylim(0, max(vals + [0]) * 1.18 or 1)


def plot_rates(results: str, out: str) -> Optional[str]:
    runs = sorted(latest_by(read_jsonl(os.path.join(results, "w3_sharegpt.jsonl")), "request_rate").values(),
                  key=lambda r: _rate_order(r["request_rate"]))
    if not runs:
        return None
    labels = [_rate_label(r["request_rate"]) for r in runs]
    x = np.arange(len(runs))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.plot(x, [r["output_throughput"] for r in runs], "o-", label="output tok/s")
    a.set_xticks(x, labels)
    a.set_xlabel("request rate (req/s)")
    a.set_ylabel("output tokens/s")
    a2 = a.twinx()
    a2.plot(x, [r["request_throughput"] for r in runs], "s--", color="tab:orange", label="req/s")
    a2.set_ylabel("completed requests/s")
    a.set_title("W3 ShareGPT: throughput vs request rate")
    a.legend(loc="upper left")
    a2.legend(loc="lower right")
    b.plot(x, [r["median_ttft_ms"] for r in runs], "o-", label="median TTFT")
    b.plot(x, [r["p99_ttft_ms"] for r in runs], "o:", label="p99 TTFT")
    b.plot(x, [r["median_itl_ms"] for r in runs], "s-", label="median ITL")
    b.plot(x, [r["p99_itl_ms"] for r in runs], "s:", label="p99 ITL")
    b.set_xticks(x, labels)
    _log_if_wide(b, [r[k] for r in runs for k in ("median_ttft_ms", "p99_ttft_ms", "median_itl_ms", "p99_itl_ms")],
                 axis="y")
    b.set_xlabel("request rate (req/s)")
    b.set_ylabel("ms")
    b.set_title("W3 ShareGPT: latency vs request rate")
    b.legend()
    return _save(fig, out, "w3_throughput_vs_rate.png")


def plot_distributions(results: str, out: str) -> Optional[str]:
    runs = [r for r in latest_by(read_jsonl(os.path.join(results, "w3_sharegpt.jsonl")), "request_rate").values()
            if r.get("ttfts")]
    if not runs:
        return None
    runs.sort(key=lambda r: _rate_order(r["request_rate"]))
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    all_ttft, all_itl = [], []
    for r in runs:
        ok = [e == "" for e in r.get("errors", [""] * len(r["ttfts"]))]
        ttft = np.sort([t * 1000 for t, good in zip(r["ttfts"], ok) if good])
        itl = np.sort([g * 1000 for gaps, good in zip(r["itls"], ok) if good for g in gaps])
        all_ttft += list(ttft)
        all_itl += list(itl)
        label = f"rate {_rate_label(r['request_rate'])} req/s"
        if len(ttft):
            a.plot(ttft, np.arange(1, len(ttft) + 1) / len(ttft), label=label)
        if len(itl):
            b.plot(itl, np.arange(1, len(itl) + 1) / len(itl), label=label)
    _log_if_wide(a, all_ttft)
    a.set_xlabel("TTFT (ms)")
    a.set_ylabel("fraction of requests")
    a.set_title("W3 TTFT distribution (CDF)")
    a.legend()
    _log_if_wide(b, all_itl)
    b.set_xlabel("ITL (ms)")
    b.set_ylabel("fraction of token gaps")
    b.set_title("W3 ITL distribution (CDF)")
    b.legend()
    return _save(fig, out, "w3_ttft_itl_dist.png")


def plot_cache(results: str, out: str) -> Optional[str]:
    runs = latest_by(read_jsonl(os.path.join(results, "w4_gsp.jsonl")), "tag")
    pair = [(name, runs.get(f"w4_{name}")) for name in ("radix_on", "radix_off")]
    pair = [(n, r) for n, r in pair if r]
    if not pair:
        return None
    names = [n.replace("_", " ") for n, _ in pair]
    metrics = [("output_throughput", "output tok/s"), ("mean_ttft_ms", "mean TTFT (ms)"),
               ("median_itl_ms", "median ITL (ms)"), ("cache_hit_rate", "cache hit rate")]
    fig, axes = plt.subplots(1, len(metrics), figsize=(13, 3.6))
    for ax, (key, title) in zip(axes, metrics):
        vals = [float(r.get(key) or 0.0) for _, r in pair]
        colors = ["tab:green" if n == "radix_on" else "tab:gray" for n, _ in pair]
        _bars(ax, names, vals, colors, "%.3g")
        ax.set_title(title)
    fig.suptitle("W4 generated shared prefix: radix cache on vs --disable-radix-cache")
    return _save(fig, out, "w4_cache_on_off.png")


PEER_NAMES = {"sglserve": "sglserve", "hf": "HF transformers"}


def plot_peers(results: str, out: str) -> Optional[str]:
    panels = []
    for w, key, title in [("w1", "median_decode_latency", "W1 batch-1 decode: median step (ms)"),
                          ("w2", "output_throughput", "W2 offline 256/256: output tok/s"),
                          ("w5", "output_throughput", "W5 Qwen3-0.6B: output tok/s")]:
        vals = {}
        for who in ("sglserve", "hf"):
            rows = read_jsonl(os.path.join(results, f"{w}_{who}.jsonl"))
            if rows and rows[-1].get(key) is not None:
                v = float(rows[-1][key])
                vals[who] = v * 1000 if key == "median_decode_latency" else v
        if vals:
            panels.append((title, vals))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, (title, vals) in zip(axes[0], panels):
        names = list(vals)
        _bars(ax, [PEER_NAMES[n] for n in names], [vals[n] for n in names],
              ["tab:blue" if n == "sglserve" else "tab:orange" for n in names], "%.4g")
        ax.set_title(title, fontsize=10)
    fig.suptitle("sglserve vs HF transformers (random weights)")
    return _save(fig, out, "w125_vs_hf.png")


def _save(fig, out: str, name: str) -> str:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Plot benchmark results into PNGs.")
    p.add_argument("--results", default=os.path.join(os.path.dirname(__file__), "results"))
    p.add_argument("--out", default=None, help="Folder for the PNGs (default: --results).")
    args = p.parse_args(argv)
    out = args.out or args.results
    for fn in (plot_rates, plot_distributions, plot_cache, plot_peers):
        path = fn(args.results, out)
        print(f"wrote {path}" if path else f"skipped {fn.__name__}: no input in {args.results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
