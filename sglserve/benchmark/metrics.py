"""Per-request timing records and the serving metrics computed from them.

Definitions (the same as SGLang's bench_serving):
- TTFT: time from sending the request to the first streamed chunk that carries content.
- ITL: gaps between content chunks; a chunk that carries n tokens contributes n gaps of
  (gap / n) when the server reports token counts per chunk (native backend).
- TPOT: (latency - ttft) / (output_len - 1), for requests with output_len > 1.
- E2E latency: send to end of stream. Concurrency: sum(E2E) / benchmark duration.
- Cache hit rate: sum(cached_tokens) / sum(prompt_tokens), both as the server reported
  them, over the requests whose reports carry both (None when none do).
All times are seconds from time.perf_counter(); reported values are in ms.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np


@dataclass
class RequestOutput:
    success: bool = False
    error: str = ""
    prompt_len: int = 0  # client-side count (dataset)
    output_len: int = 0  # server-reported completion tokens when available
    output_len_reported: bool = False  # False: output_len counts chunks (no usage in the stream)
    generated_text: str = ""
    start_time: float = 0.0  # perf_counter at send
    ttft: float = 0.0
    latency: float = 0.0
    itl: List[float] = field(default_factory=list)
    chunk_times: List[float] = field(default_factory=list)  # perf_counter of each content chunk
    prompt_tokens: Optional[int] = None  # server-reported
    cached_tokens: Optional[int] = None  # server-reported


@dataclass
class BenchmarkMetrics:
    completed: int
    failed: int
    total_input: int
    total_output: int
    total_output_retokenized: Optional[int]
    request_throughput: float
    input_throughput: float
    output_throughput: float
    total_throughput: float
    mean_ttft_ms: float
    median_ttft_ms: float
    std_ttft_ms: float
    p99_ttft_ms: float
    mean_tpot_ms: float
    median_tpot_ms: float
    std_tpot_ms: float
    p99_tpot_ms: float
    mean_itl_ms: float
    median_itl_ms: float
    std_itl_ms: float
    p95_itl_ms: float
    p99_itl_ms: float
    max_itl_ms: float
    mean_e2e_latency_ms: float
    median_e2e_latency_ms: float
    std_e2e_latency_ms: float
    p99_e2e_latency_ms: float
    concurrency: float
    max_output_tokens_per_s: float
    max_concurrent_requests: int
    total_prompt_tokens_server: Optional[int]
    total_cached_tokens: Optional[int]
    cache_hit_rate: Optional[float]

    def to_dict(self) -> Dict:
        return dataclasses.asdict(self)


def _stats_ms(values: Sequence[float]) -> Dict[str, float]:
    """mean/median/std/p95/p99/max in ms; zeros when empty (SGLang prints 0 then too)."""
    if len(values) == 0:
        return dict(mean=0.0, median=0.0, std=0.0, p95=0.0, p99=0.0, max=0.0)
    a = np.asarray(values, dtype=np.float64) * 1000.0
    return dict(mean=float(a.mean()), median=float(np.median(a)), std=float(a.std()),
                p95=float(np.percentile(a, 95)), p99=float(np.percentile(a, 99)), max=float(a.max()))


def _peaks(outputs: Sequence[RequestOutput]) -> tuple:
    """Highest output tokens in any one-second bucket, and most requests in flight in one."""
    ok = [o for o in outputs if o.success]
    if not ok:
        return 0.0, 0
    t0 = min(o.start_time for o in ok)
    n = int(np.ceil(max(o.start_time + o.latency for o in ok) - t0)) + 1
    tokens, inflight = np.zeros(n), np.zeros(n)
    for o in ok:
        t = o.start_time + o.ttft
        times = [t]
        for gap in o.itl:
            t += gap
            times.append(t)
        for tt in times:
            b = int(tt - t0)
            if 0 <= b < n:
                tokens[b] += 1
        first, last = int(o.start_time - t0), int(o.start_time + o.latency - t0)
        inflight[first:min(last + 1, n)] += 1
    return float(tokens.max()), int(inflight.max())


def calculate_metrics(outputs: Sequence[RequestOutput], duration_s: float,
                      retokenized_lens: Optional[Sequence[int]] = None) -> BenchmarkMetrics:
    if duration_s <= 0:
        raise ValueError(f"benchmark duration {duration_s} must be > 0")
    ok = [o for o in outputs if o.success]
    ttfts = [o.ttft for o in ok]
    e2e = [o.latency for o in ok]
    tpots = [(o.latency - o.ttft) / (o.output_len - 1) for o in ok if o.output_len > 1]
    itls = [gap for o in ok for gap in o.itl]
    total_input = sum(o.prompt_len for o in ok)
    total_output = sum(o.output_len for o in ok)
    retok = None
    if retokenized_lens is not None:
        retok = sum(n for o, n in zip(outputs, retokenized_lens) if o.success)
    reported = [o for o in ok if o.prompt_tokens is not None and o.cached_tokens is not None]
    prompt_server = sum(o.prompt_tokens for o in reported) if reported else None
    cached = sum(o.cached_tokens for o in reported) if reported else None
    hit_rate = (cached / prompt_server) if reported and prompt_server else None
    peak_tps, peak_conc = _peaks(ok)
    t, p, i, e = _stats_ms(ttfts), _stats_ms(tpots), _stats_ms(itls), _stats_ms(e2e)
    return BenchmarkMetrics(
        completed=len(ok),
        failed=len(outputs) - len(ok),
        total_input=total_input,
        total_output=total_output,
        total_output_retokenized=retok,
        request_throughput=len(ok) / duration_s,
        input_throughput=total_input / duration_s,
        output_throughput=total_output / duration_s,
        total_throughput=(total_input + total_output) / duration_s,
        mean_ttft_ms=t["mean"], median_ttft_ms=t["median"], std_ttft_ms=t["std"], p99_ttft_ms=t["p99"],
        mean_tpot_ms=p["mean"], median_tpot_ms=p["median"], std_tpot_ms=p["std"], p99_tpot_ms=p["p99"],
        mean_itl_ms=i["mean"], median_itl_ms=i["median"], std_itl_ms=i["std"], p95_itl_ms=i["p95"],
        p99_itl_ms=i["p99"], max_itl_ms=i["max"],
        mean_e2e_latency_ms=e["mean"], median_e2e_latency_ms=e["median"], std_e2e_latency_ms=e["std"],
        p99_e2e_latency_ms=e["p99"],
        concurrency=sum(e2e) / duration_s,
        max_output_tokens_per_s=peak_tps,
        max_concurrent_requests=peak_conc,
        total_prompt_tokens_server=prompt_server,
        total_cached_tokens=cached,
        cache_hit_rate=hit_rate,
    )


def format_report(m: BenchmarkMetrics, backend: str, request_rate: float, max_concurrency: Optional[int],
                  duration_s: float) -> str:
    """The result block, laid out like SGLang's so the numbers read the same way."""
    lines = ["", "{s:{c}^{n}}".format(s=" Serving Benchmark Result ", n=50, c="=")]

    def row(label, value, fmt="{:<10}"):
        lines.append("{:<40} ".format(label) + fmt.format(value))

    def num(label, value):
        row(label, value, "{:<10.2f}")

    def section(title):
        lines.append("{s:{c}^{n}}".format(s=title, n=50, c="-"))

    row("Backend:", backend)
    row("Traffic request rate:", request_rate)
    row("Max request concurrency:", max_concurrency if max_concurrency else "not set")
    row("Successful requests:", m.completed)
    if m.failed:
        row("Failed requests:", m.failed)
    num("Benchmark duration (s):", duration_s)
    row("Total input tokens:", m.total_input)
    row("Total generated tokens:", m.total_output)
    if m.total_output_retokenized is not None:
        row("Total generated tokens (retokenized):", m.total_output_retokenized)
    num("Request throughput (req/s):", m.request_throughput)
    num("Input token throughput (tok/s):", m.input_throughput)
    num("Output token throughput (tok/s):", m.output_throughput)
    num("Peak output token throughput (tok/s):", m.max_output_tokens_per_s)
    row("Peak concurrent requests:", m.max_concurrent_requests)
    num("Total token throughput (tok/s):", m.total_throughput)
    num("Concurrency:", m.concurrency)
    if m.cache_hit_rate is None:
        row("Cache hit rate:", "n/a (server reported no cached_tokens)")
    else:
        row("Cache hit rate:", "{:.2%} ({} / {} prompt tokens)".format(
            m.cache_hit_rate, m.total_cached_tokens, m.total_prompt_tokens_server))
    section("End-to-End Latency")
    num("Mean E2E Latency (ms):", m.mean_e2e_latency_ms)
    num("Median E2E Latency (ms):", m.median_e2e_latency_ms)
    num("P99 E2E Latency (ms):", m.p99_e2e_latency_ms)
    section("Time to First Token")
    num("Mean TTFT (ms):", m.mean_ttft_ms)
    num("Median TTFT (ms):", m.median_ttft_ms)
    num("P99 TTFT (ms):", m.p99_ttft_ms)
    section("Time per Output Token (excl. 1st token)")
    num("Mean TPOT (ms):", m.mean_tpot_ms)
    num("Median TPOT (ms):", m.median_tpot_ms)
    num("P99 TPOT (ms):", m.p99_tpot_ms)
    section("Inter-Token Latency")
    num("Mean ITL (ms):", m.mean_itl_ms)
    num("Median ITL (ms):", m.median_itl_ms)
    num("P95 ITL (ms):", m.p95_itl_ms)
    num("P99 ITL (ms):", m.p99_itl_ms)
    num("Max ITL (ms):", m.max_itl_ms)
    lines.append("=" * 50)
    return "\n".join(lines)
