"""Serving-benchmark metrics on synthetic timestamps, and the streaming client of all three
backends against a small fake aiohttp server that streams with real delays."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import threading
import time

import numpy as np
import pytest
from aiohttp import web

from sglserve import bench_serving
from sglserve.benchmark.metrics import RequestOutput, calculate_metrics, format_report

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
_spec = importlib.util.spec_from_file_location("bench_fakes", os.path.join(FIXTURES, "bench_fakes.py"))
_fakes = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fakes)
FakeTokenizer = _fakes.FakeTokenizer


# ---------------------------------------------------------------- metrics math


def _out(start, ttft, itl, output_len, prompt_len=10, prompt_tokens=None, cached=None, ok=True):
    return RequestOutput(success=ok, prompt_len=prompt_len, output_len=output_len, start_time=start, ttft=ttft,
                         itl=list(itl), latency=ttft + sum(itl), output_len_reported=True,
                         prompt_tokens=prompt_tokens, cached_tokens=cached)


def test_metrics_definitions_on_synthetic_timestamps():
    outs = [
        _out(0.0, 0.100, [0.010] * 4, 5, prompt_len=10, prompt_tokens=10, cached=0),
        _out(0.5, 0.300, [0.020] * 2, 3, prompt_len=20, prompt_tokens=20, cached=15),
        _out(0.7, 0.0, [], 0, ok=False),
    ]
    m = calculate_metrics(outs, duration_s=2.0)
    assert (m.completed, m.failed, m.total_input, m.total_output) == (2, 1, 30, 8)
    assert m.request_throughput == pytest.approx(1.0)
    assert m.input_throughput == pytest.approx(15.0) and m.output_throughput == pytest.approx(4.0)
    assert m.total_throughput == pytest.approx(19.0)
    assert m.mean_ttft_ms == pytest.approx(200.0) and m.median_ttft_ms == pytest.approx(200.0)
    assert m.p99_ttft_ms == pytest.approx(100 + 0.99 * 200)
    # TPOT = (latency - ttft) / (output_len - 1): 40ms/4 = 10ms, 40ms/2 = 20ms
    assert m.mean_tpot_ms == pytest.approx(15.0)
    # ITL over all gaps: four of 10ms, two of 20ms
    assert m.mean_itl_ms == pytest.approx(80 / 6) and m.median_itl_ms == pytest.approx(10.0)
    assert m.max_itl_ms == pytest.approx(20.0)
    assert m.mean_e2e_latency_ms == pytest.approx((140 + 340) / 2)
    assert m.concurrency == pytest.approx((0.14 + 0.34) / 2.0)
    assert m.cache_hit_rate == pytest.approx(15 / 30)
    assert (m.total_cached_tokens, m.total_prompt_tokens_server) == (15, 30)
    assert m.max_output_tokens_per_s == 8 and m.max_concurrent_requests == 2


def test_metrics_single_token_outputs_have_no_tpot_and_no_cache_report():
    m = calculate_metrics([_out(0.0, 0.05, [], 1)], duration_s=1.0)
    assert m.mean_tpot_ms == 0.0 and m.mean_itl_ms == 0.0 and m.mean_ttft_ms == pytest.approx(50.0)
    assert m.cache_hit_rate is None
    empty = calculate_metrics([_out(0, 0, [], 0, ok=False)], duration_s=1.0)
    assert empty.completed == 0 and empty.mean_e2e_latency_ms == 0.0
    with pytest.raises(ValueError):
        calculate_metrics([], duration_s=0.0)


def test_report_block_reads_like_sglang():
    m = calculate_metrics([_out(0.0, 0.1, [0.01] * 3, 4, prompt_tokens=10, cached=5)], duration_s=1.0)
    text = format_report(m, "sglserve", float("inf"), None, 1.0)
    assert "============ Serving Benchmark Result ============" in text
    for label in ["Successful requests:", "Benchmark duration (s):", "Total input tokens:",
                  "Request throughput (req/s):", "Output token throughput (tok/s):", "Concurrency:",
                  "Mean TTFT (ms):", "P99 TPOT (ms):", "Median ITL (ms):", "Mean E2E Latency (ms):",
                  "Cache hit rate:"]:
        assert label in text
    assert "50.00%" in text


# ---------------------------------------------------------------- fake server

TTFT_S, GAP_S = 0.12, 0.03


class FakeServer:
    """Streams `max_tokens` tokens: the first after TTFT_S, then one every GAP_S (the native
    endpoint sends two tokens in its third chunk, as a server that batches detokenization may)."""

    def __init__(self):
        self.bodies = []
        self.inflight = 0
        self.max_inflight = 0
        self.flushed = 0
        app = web.Application()
        def reply(obj):
            async def handler(request):
                return web.json_response(obj)
            return handler

        app.router.add_get("/v1/models", reply({"data": [{"id": "fake-model"}]}))
        # a dummy-weights server: its model path is no local tokenizer folder
        app.router.add_get("/get_model_info", reply({"model_path": "org/fake", "tokenizer_path": None,
                                                     "vocab_size": 1000}))
        app.router.add_get("/get_server_info", reply({"max_total_num_tokens": 123}))
        app.router.add_post("/flush_cache", self.flush)
        app.router.add_post("/generate", self.generate)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_post("/v1/chat/completions", self.chat)
        self.app = app

    async def flush(self, request):
        self.flushed += 1
        return web.Response(text="ok")

    async def _open(self, request):
        body = await request.json()
        self.bodies.append(body)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        return body, resp

    async def _send(self, resp, obj):
        data = obj if isinstance(obj, str) else json.dumps(obj)
        await resp.write(f"data: {data}\n\n".encode())

    @staticmethod
    def _prompt_tokens(body):
        p = body.get("input_ids") or body.get("prompt") or body.get("text") or body["messages"][0]["content"]
        return len(p) if isinstance(p, list) else len(p.split())

    async def generate(self, request):
        body, resp = await self._open(request)
        n = body["sampling_params"]["max_new_tokens"]
        pt = self._prompt_tokens(body)
        meta = {"prompt_tokens": pt, "cached_tokens": pt // 2}
        await asyncio.sleep(TTFT_S)
        done, step = 0, 0
        while done < n:
            k = 2 if step == 2 and n - done >= 2 else 1
            done += k
            step += 1
            text = " ".join(f"t{i}" for i in range(done))
            await self._send(resp, {"text": text, "meta_info": {**meta, "completion_tokens": done,
                                                                "finish_reason": None if done < n else "length"}})
            if done < n:
                await asyncio.sleep(GAP_S)
        await self._send(resp, "[DONE]")
        self.inflight -= 1
        return resp

    async def completions(self, request):
        return await self._openai(request, chat=False)

    async def chat(self, request):
        return await self._openai(request, chat=True)

    async def _openai(self, request, chat):
        body, resp = await self._open(request)
        n = body["max_tokens"]
        pt = self._prompt_tokens(body)
        base = {"id": "x", "model": body["model"]}
        if chat:  # role-only first delta: no content, must not count as the first token
            await self._send(resp, {**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
        await asyncio.sleep(TTFT_S)
        # with continuous usage (vLLM's stream option) every chunk says how many tokens it holds,
        # so the third chunk may carry two, as a busy server's would
        continuous = (body.get("stream_options") or {}).get("continuous_usage_stats")
        done, step = 0, 0
        while done < n:
            k = 2 if continuous and step == 2 and n - done >= 2 else 1
            piece = "".join(f" t{i}" for i in range(done, done + k))
            done += k
            step += 1
            choice = {"index": 0, "delta": {"content": piece}} if chat else {"index": 0, "text": piece}
            usage = {"usage": {"prompt_tokens": pt, "completion_tokens": done, "total_tokens": pt + done}} \
                if continuous else {}
            await self._send(resp, {**base, "choices": [choice], **usage})
            if done < n:
                await asyncio.sleep(GAP_S)
        end = {"index": 0, "delta": {}, "finish_reason": "length"} if chat else \
            {"index": 0, "text": "", "finish_reason": "length"}
        await self._send(resp, {**base, "choices": [end]})
        usage = {"prompt_tokens": pt, "completion_tokens": n, "total_tokens": pt + n,
                 "prompt_tokens_details": {"cached_tokens": 3}}
        await self._send(resp, {**base, "choices": [], "usage": usage})
        await self._send(resp, "[DONE]")
        self.inflight -= 1
        return resp


@pytest.fixture(scope="module")
def fake_server():
    server = FakeServer()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(server.app)
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = site._server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server.base_url = f"http://127.0.0.1:{port}"
    yield server
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def _run(server, **kw):
    args = dict(base_url=server.base_url, disable_tqdm=True, warmup_requests=0, seed=0)
    args.update(kw)
    server.bodies.clear()
    server.max_inflight = 0
    return bench_serving.run_benchmark(args)


@pytest.mark.parametrize("backend", ["sglserve", "openai", "openai-chat"])
def test_streaming_client_times_real_chunks(fake_server, backend, capsys):
    out_len = 6
    tok = "none" if backend != "openai-chat" else FakeTokenizer()
    t0 = time.perf_counter()
    res = _run(fake_server, backend=backend, tokenizer=tok, dataset_name="random", num_prompts=4,
               random_input_len=12, random_output_len=out_len, random_range_ratio=1.0)
    wall = time.perf_counter() - t0
    assert res["completed"] == 4 and res["failed"] == 0, res["errors"]
    assert res["total_output_tokens"] == 4 * out_len and res["total_input_tokens"] == 4 * 12
    assert res["model"] == "fake-model"
    # real timestamps: TTFT near the server's delay, ITL near its gap; never faster than the server
    assert TTFT_S * 1000 <= res["mean_ttft_ms"] < TTFT_S * 1000 + 150
    assert GAP_S * 1000 * 0.5 <= res["median_itl_ms"] < GAP_S * 1000 + 40
    assert res["duration"] >= TTFT_S + (out_len - 2) * GAP_S and res["duration"] < wall
    for itls in res["itls"]:
        assert len(itls) == out_len - 1  # one gap per token after the first
    expected_tpot = (res["mean_e2e_latency_ms"] - res["mean_ttft_ms"]) / (out_len - 1)
    assert res["mean_tpot_ms"] == pytest.approx(expected_tpot, rel=0.05)
    # server usage reports drive the cache hit rate
    assert res["cache_hit_rate"] == pytest.approx(0.5 if backend == "sglserve" else 3 / 12)
    body = fake_server.bodies[0]
    if backend == "sglserve":
        assert body["stream"] and body["sampling_params"]["ignore_eos"] is True
        assert isinstance(body["input_ids"], list) and len(body["input_ids"]) == 12
        assert body["sampling_params"]["max_new_tokens"] == out_len
    else:
        assert body["stream"] and body["stream_options"] == {"include_usage": True, "continuous_usage_stats": True}
        assert body["ignore_eos"] is True and body["model"] == "fake-model"
    assert "Serving Benchmark Result" in capsys.readouterr().out


@pytest.mark.parametrize("backend", ["sglserve", "openai-chat"])
def test_chunk_with_two_tokens_splits_its_gap(fake_server, backend):
    """Native: completion_tokens in meta_info; chat: the per-chunk usage of continuous_usage_stats."""
    tok = "none" if backend == "sglserve" else FakeTokenizer()
    res = _run(fake_server, backend=backend, tokenizer=tok, dataset_name="random", num_prompts=1,
               random_input_len=4, random_output_len=5, random_range_ratio=1.0)
    itl = res["itls"][0]
    # chunks: t1 +1 tok, t2 +1, t3 +2 (gap shared), t4 +1 -> 4 gaps for 5 tokens
    assert len(itl) == 4 and itl[1] == pytest.approx(itl[2])
    assert itl[1] == pytest.approx(GAP_S / 2, abs=0.02)


def test_sharegpt_max_concurrency_output_file_and_flush(fake_server, tmp_path):
    out_file = tmp_path / "res.jsonl"
    for _ in range(2):
        res = _run(fake_server, backend="openai", tokenizer=FakeTokenizer(), dataset_name="sharegpt",
                   dataset_path=os.path.join(FIXTURES, "sharegpt_truncated.json"), num_prompts=3,
                   sharegpt_output_len=4, max_concurrency=1, output_file=str(out_file), output_details=True,
                   flush_cache=True, warmup_requests=1, disable_ignore_eos=True)
    assert res["completed"] == 3 and fake_server.max_inflight == 1
    assert fake_server.flushed >= 2 and fake_server.bodies[-1]["ignore_eos"] is False
    lines = [json.loads(x) for x in out_file.read_text().splitlines()]
    assert len(lines) == 2 and lines[0]["dataset_name"] == "sharegpt" and "ttfts" in lines[0]
    assert lines[0]["server_info"] == {"max_total_num_tokens": 123}
    # one at a time: E2E latencies add up to (nearly) the whole duration
    assert res["concurrency"] == pytest.approx(1.0, abs=0.2)


def test_poisson_rate_spreads_arrivals(fake_server):
    rate, n = 20.0, 12
    res = _run(fake_server, backend="sglserve", tokenizer="none", dataset_name="random", num_prompts=n,
               random_input_len=4, random_output_len=2, random_range_ratio=1.0, request_rate=rate)
    assert res["completed"] == n
    # arrivals are the cumulative exponential gaps drawn from the seeded generator; the run
    # lasts at least until the last arrival plus its TTFT
    gaps = np.random.default_rng(0 + 1).exponential(1.0 / rate, size=n)
    last_arrival = float(gaps[: n - 1].sum())
    assert last_arrival > 0.2
    assert last_arrival + TTFT_S <= res["duration"] < last_arrival + 1.0


def test_shared_prefix_ids_and_default_model_and_bad_server(fake_server):
    res = _run(fake_server, backend="sglserve", tokenizer=None, dataset_name="generated-shared-prefix",
               gsp_num_groups=2, gsp_prompts_per_group=2, gsp_system_prompt_len=8, gsp_question_len=2,
               gsp_output_len=3)
    assert res["completed"] == 4 and res["tokenizer"] == "none"  # server has no tokenizer_path
    assert {len(b["input_ids"]) for b in fake_server.bodies} == {10}
    with pytest.raises(RuntimeError, match="v1/models"):
        bench_serving.run_benchmark(dict(base_url="http://127.0.0.1:9", disable_tqdm=True))
    with pytest.raises(ValueError, match="request-rate"):
        bench_serving.run_benchmark(dict(base_url=fake_server.base_url, request_rate=0))


def test_vocab_size_for_raw_ids_comes_from_flag_report_or_config_dir():
    import argparse

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ns = argparse.Namespace(random_vocab_size=None)
    cfg_dir = os.path.join(repo, "benchmarks", "configs", "Qwen3-0.6B")
    assert bench_serving._vocab_size(ns, {"model_path": cfg_dir, "tokenizer_path": cfg_dir}) == 151936
    assert bench_serving._vocab_size(ns, {"vocab_size": 77}) == 77
    assert bench_serving._vocab_size(argparse.Namespace(random_vocab_size=5), {"vocab_size": 77}) == 5
    with pytest.raises(RuntimeError, match="random-vocab-size"):
        bench_serving._vocab_size(ns, {"model_path": "org/hub-id"})


def test_command_line_entry_point(fake_server, capsys):
    argv = ["--base-url", fake_server.base_url, "--backend", "sglang-oai", "--dataset-name", "random",
            "--tokenizer", "none", "--num-prompts", "2", "--random-input-len", "4", "--random-output-len", "3",
            "--random-range-ratio", "1", "--request-rate", "inf", "--max-concurrency", "2", "--disable-tqdm"]
    assert bench_serving.main(argv) == 0
    out = capsys.readouterr().out
    assert "Successful requests:                     2" in out and "Backend:                                 openai" in out
    assert bench_serving.main(argv[:2] + ["--backend", "openai-chat", "--dataset-name", "random",
                                          "--tokenizer", "none", "--num-prompts", "1"]) == 1
    assert "openai-chat" in capsys.readouterr().err


def test_hf_peer_smoke_on_cpu_writes_one_batch_keys(tmp_path):
    """The transformers peer on a 2-layer toy config: the W1 keys plot.py reads are there."""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    spec = importlib.util.spec_from_file_location("hf_peer", os.path.join(repo, "benchmarks", "peers", "hf_transformers.py"))
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    out = tmp_path / "w1_hf.jsonl"
    assert peer.main(["one-batch", "--model-path", os.path.join(repo, "benchmarks", "configs", "Qwen3-0.6B"), "--tiny",
                      "--device", "cpu", "--input-len", "8", "--output-len", "4", "--result-file", str(out)]) == 0
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["backend"] == "hf_transformers" and row["output_len"] == 4
    assert 0 < row["prefill_latency"] < row["total_latency"] and row["median_decode_latency"] > 0


def test_hf_peer_throughput_on_cpu_bounds_its_cache(tmp_path):
    """The peer's continuous-batching run on a toy config: every output token counted, and on a CPU
    the manager's cache is sized for the workload, not from the host's free RAM."""
    import resource
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    out = tmp_path / "w2_hf.jsonl"
    cmd = [sys.executable, os.path.join(repo, "benchmarks", "peers", "hf_transformers.py"), "throughput",
           "--model-path", os.path.join(repo, "benchmarks", "configs", "Qwen3-0.6B"), "--tiny", "--device", "cpu",
           "--num-prompts", "4", "--random-input-len", "16", "--random-output-len", "4", "--random-range-ratio", "1",
           "--result-file", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    row = json.loads(out.read_text().splitlines()[-1])
    assert row["successful_requests"] == 4 and row["total_output_tokens"] == 16, row
    peak_gb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024 ** 2  # KiB -> GiB
    assert peak_gb < 4, f"peer peaked at {peak_gb:.1f} GiB"


def test_client_procs_share_the_requests_and_the_schedule(fake_server):
    """--client-procs 3: every request is sent once, from three processes, on the single loop's
    Poisson schedule, with real chunk timing and a per-process share of --max-concurrency."""
    rate, n = 20.0, 9
    res = _run(fake_server, backend="sglserve", tokenizer="none", dataset_name="random", num_prompts=n,
               random_input_len=4, random_output_len=3, random_range_ratio=1.0, request_rate=rate,
               client_procs=3, output_details=True)
    assert res["completed"] == n and res["failed"] == 0, res["errors"]
    assert len(fake_server.bodies) == n and res["total_output_tokens"] == n * 3
    assert all(len(itls) == 2 for itls in res["itls"])
    assert GAP_S * 1000 * 0.5 <= res["median_itl_ms"] < GAP_S * 1000 + 40
    gaps = np.random.default_rng(0 + 1).exponential(1.0 / rate, size=n)
    last_arrival = float(gaps[: n - 1].sum())
    assert last_arrival + TTFT_S <= res["duration"] < last_arrival + 1.5
    with pytest.raises(ValueError, match="--client-procs"):
        bench_serving.run_benchmark(dict(base_url=fake_server.base_url, client_procs=0))
