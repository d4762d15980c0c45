"""Prometheus metrics of the HTTP process (`--enable-metrics`, served at `/metrics`).

Names follow SGLang's (`sglang:...` -> `sglserve:...`). Token counters and latency histograms
are computed here from what the TokenizerManager sees (TTFT and inter-token latency only for
streamed requests: a non-streamed one gets its tokens in one message at the end); the
scheduler's state (running/queued requests, KV usage, cache hit rate) is read at scrape time
from `GetLoadReqOutput`. A registry per collector, so several apps in one process (tests) work.

With --api-server-count > 1 every HTTP worker counts its own requests into files of one shared
directory (prometheus_client's multiprocess mode: the launcher sets PROMETHEUS_MULTIPROC_DIR
before it spawns them, as vLLM does), and a scrape of any worker renders the sums over all of
them: counters and histograms add up, in-flight requests are the sum over the live workers
(each worker refreshes its own every second), the scheduler's gauges are its latest answer.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable, Optional

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
INFLIGHT_REFRESH_S = 1.0

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
                   10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3,
               0.4, 0.5, 0.75, 1.0, 2.5)

__all__ = ["MetricsCollector", "CONTENT_TYPE_LATEST"]


class MetricsCollector:
    def __init__(self, model_name: str, inflight: Optional[Callable[[], int]] = None) -> None:
        self.registry = CollectorRegistry()
        self.multiproc_dir = os.environ.get(MULTIPROC_ENV) or None
        self.labels = {"model_name": model_name}
        names = list(self.labels)
        r = self.registry

        def counter(name: str, doc: str) -> Any:
            return Counter(f"sglserve:{name}", doc, names, registry=r).labels(**self.labels)

        def gauge(name: str, doc: str, mode: str = "mostrecent") -> Any:  # mode: how workers' values combine
            return Gauge(f"sglserve:{name}", doc, names, registry=r, multiprocess_mode=mode).labels(**self.labels)

        def histogram(name: str, doc: str, buckets: tuple) -> Any:
            return Histogram(f"sglserve:{name}", doc, names, buckets=buckets, registry=r).labels(**self.labels)

        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter("generation_tokens", "Generated tokens of finished requests.")
        self.cached_tokens = counter("cached_tokens", "Prompt tokens served from the prefix cache.")
        self.num_requests = counter("num_requests", "Requests finished (any reason).")
        self.num_aborted_requests = counter("num_aborted_requests", "Requests aborted (client gone, /abort_request, "
                                            "timeout, error).")
        self.num_rejected_requests = counter("num_rejected_requests", "Requests refused with 503 because the "
                                             "queue was full (--max-queued-requests).")
        self.num_timeout_requests = counter("num_timeout_requests", "Requests aborted by --request-timeout.")
        self.ttft = histogram("time_to_first_token_seconds", "Time to first token (streamed requests).",
                              LATENCY_BUCKETS)
        self.itl = histogram("inter_token_latency_seconds", "Time between output tokens (streamed requests).",
                             ITL_BUCKETS)
        self.e2e = histogram("e2e_request_latency_seconds", "End-to-end request latency.", LATENCY_BUCKETS)
        self.num_inflight = gauge("num_inflight_reqs", "Requests in the HTTP processes (queued or running).", "livesum")
        self.num_running = gauge("num_running_reqs", "Requests in the scheduler's running batch.")
        self.num_queue = gauge("num_queue_reqs", "Requests waiting in the scheduler's queue.")
        self.num_used_tokens = gauge("num_used_tokens", "KV cache tokens held by running requests.")
        self.token_usage = gauge("token_usage", "Fraction of the KV cache held by running requests.")
        self.cache_tokens = gauge("num_cached_tokens", "KV cache tokens held only by the radix cache (evictable).")
        self.max_total_num_tokens = gauge("max_total_num_tokens", "KV cache size in tokens.")
        self.cache_hit_rate = gauge("cache_hit_rate", "Prefix cache hit rate: cached / prompt tokens, since start.")
        if self.multiproc_dir is not None and inflight is not None:  # a scrape reads the other workers' files
            threading.Thread(target=self._refresh_inflight, args=(inflight,), daemon=True,
                             name="sglserve-metrics-inflight").start()

    def _refresh_inflight(self, inflight: Callable[[], int]) -> None:
        while True:
            self.num_inflight.set(inflight())
            time.sleep(INFLIGHT_REFRESH_S)

    # ---- hooks (TokenizerManager) -------------------------------------------------------

    def on_output(self, state: Any, num_new_tokens: int, now: Optional[float] = None) -> None:
        """A message with `num_new_tokens` new output tokens arrived for a streamed request."""
        if num_new_tokens <= 0:
            return
        now = time.time() if now is None else now
        if state.first_token_time is None:
            state.first_token_time = now
            self.ttft.observe(now - state.created)
            num_new_tokens -= 1
        elif state.last_token_time is not None:
            gap = (now - state.last_token_time) / num_new_tokens
            for _ in range(num_new_tokens):
                self.itl.observe(gap)
        state.last_token_time = now

    def on_finish(self, state: Any, aborted: bool, timed_out: bool = False) -> None:
        self.prompt_tokens.inc(state.prompt_tokens)
        self.generation_tokens.inc(state.completion_tokens)
        self.cached_tokens.inc(state.cached_tokens)
        self.num_requests.inc()
        end = state.finish_time if state.finish_time is not None else time.time()
        self.e2e.observe(end - state.created)
        if aborted:
            self.num_aborted_requests.inc()
        if timed_out:
            self.num_timeout_requests.inc()

    def on_rejected(self, n: int = 1) -> None:
        self.num_rejected_requests.inc(n)

    # ---- scrape -------------------------------------------------------------------------

    def render(self, load: Any = None, inflight: int = 0) -> bytes:
        """The text exposition; `load` is the scheduler's GetLoadReqOutput (None: not known)."""
        self.num_inflight.set(inflight)
        if load is not None:
            self.num_running.set(load.num_running_reqs)
            self.num_queue.set(load.num_waiting_reqs)
            self.num_used_tokens.set(load.used_tokens)
            self.cache_tokens.set(load.evictable_tokens)
            self.max_total_num_tokens.set(load.max_total_num_tokens)
            self.token_usage.set(load.used_tokens / max(load.max_total_num_tokens, 1))
            self.cache_hit_rate.set(load.cache_hit_rate)
        if self.multiproc_dir is None:
            return generate_latest(self.registry)
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.multiproc_dir)
        return generate_latest(registry)
