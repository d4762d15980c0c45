"""Authentication, limits and back-pressure, /abort_request, timeouts, metrics and request ids,
through the `guarded` server (tests/server/conftest.py): SGLSERVE_API_KEY, --enable-metrics,
--max-queued-requests, --request-timeout and a small --max-payload-size."""

from __future__ import annotations

import socket
import threading
import time

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.server.reliability_helpers import (
    AUTH,
    KEY,
    MAX_QUEUED,
    MAX_RUNNING,
    PAYLOAD,
    TIMEOUT_S,
    assert_openai_error,
    process_rss,
    read_sse,
    server_info,
    wait_for,
    wait_kv_clean,
)

LONG = {"max_new_tokens": 3000, "ignore_eos": True, "temperature": 0}


def post(server, path, body, headers=AUTH, **kw):
    kw.setdefault("timeout", 120)
    return requests.post(server.base_url + path, json=body, headers=headers, **kw)


# ---- authentication -------------------------------------------------------------------------


def test_every_route_but_health_requires_the_key(guarded):
    spec = requests.get(guarded.base_url + "/openapi.json", headers=AUTH).json()
    routes = [(m.upper(), p.replace("{model}", "x")) for p, ops in spec["paths"].items() for m in ops]
    routes += [("GET", "/metrics"), ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"),
               ("GET", "/no-such-route"), ("GET", "/health_generate"), ("GET", "/healthz")]
    assert len(routes) >= 15
    bad_headers = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY},
                   {"Authorization": f"Bearer {KEY}x"}, {"Authorization": f"bearer {KEY[:-1]}"}]
    for method, path in routes:
        if path == "/health":
            continue
        for headers in bad_headers:
            r = requests.request(method, guarded.base_url + path, headers=headers, json={}, timeout=30)
            err = assert_openai_error(r, 401)
            assert r.headers.get("www-authenticate") == "Bearer", (method, path)
            assert KEY not in r.text and err["type"] == "AuthenticationError"
    assert requests.get(guarded.base_url + "/health").status_code == 200
    assert requests.get(guarded.base_url + "/v1/models", headers=AUTH).status_code == 200
    assert requests.get(guarded.base_url + "/metrics", headers=AUTH).status_code == 200


def test_openai_client_with_and_without_the_key(guarded):
    ok = openai.Client(base_url=guarded.base_url + "/v1", api_key=KEY)
    out = ok.completions.create(model="m", prompt="1, 2, 3,", max_tokens=4, temperature=0)
    assert out.choices[0].text
    with pytest.raises(openai.AuthenticationError):
        openai.Client(base_url=guarded.base_url + "/v1", api_key="sk-wrong", max_retries=0).models.list()


def test_key_never_in_server_info_or_logs(guarded):
    r = requests.get(guarded.base_url + "/get_server_info", headers=AUTH)
    assert r.status_code == 200 and KEY not in r.text and r.json()["api_key"] == "<redacted>"
    assert KEY not in guarded.read_log()


# ---- limits -----------------------------------------------------------------------------------


def test_body_size_limit_413(guarded):
    r = post(guarded, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "x" * PAYLOAD}]})
    assert_openai_error(r, 413)


@pytest.mark.parametrize("path,body", [
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hello " * 150_000}]}),
    ("/v1/completions", {"model": "m", "prompt": "hello " * 150_000}),
    ("/generate", {"text": "hello " * 150_000}),
    ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 10**12}),
    ("/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 10**12}}),
])
def test_prompt_and_max_tokens_bounds_answer_fast(guarded, path, body):
    t = time.time()
    err = assert_openai_error(post(guarded, path, body), 400)
    assert time.time() - t < 3.0, "the bound must be checked before tokenizing"
    assert "context length" in err["message"] or "max_tokens" in err["message"], err


@pytest.mark.parametrize("path,body", [  # found by the fuzz test: were 500s
    ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "hi"}], "regex": "\u0004+",
                              "max_tokens": 2}),
    ("/v1/completions", {"model": "m", "prompt": [10**30], "echo": True, "max_tokens": 1}),
    ("/v1/completions", {"model": "m", "prompt": [-5], "echo": True, "max_tokens": 1}),
])
def test_fuzz_regressions_are_400(guarded, path, body):
    assert_openai_error(post(guarded, path, body), 400)


def _hold_streams(server, n, prefix):
    """n streaming /generate requests that run until aborted; returns (threads, results)."""
    results = {}

    def run(i):
        r = post(server, "/generate", {"text": f"Story {i}:", "stream": True, "rid": f"{prefix}-{i}",
                                       "sampling_params": LONG}, stream=True)
        results[i] = (r.status_code, *read_sse(r))

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads, results


def test_queue_full_503_retry_after_then_abort_by_rid(guarded):
    limit = MAX_RUNNING + MAX_QUEUED
    threads, results = _hold_streams(guarded, limit, "hold")
    assert wait_for(lambda: (lambda i: i["num_running_reqs"] + i["num_waiting_reqs"])(server_info(guarded.base_url, AUTH))
                    == limit, 60)
    for path, body in [("/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 2}}),
                       ("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "Hi"}]}),
                       ("/v1/completions", {"model": "m", "prompt": "Hi", "stream": True})]:
        r = post(guarded, path, body)
        err = assert_openai_error(r, 503)
        assert int(r.headers["retry-after"]) >= 1 and "busy" in err["message"]
    # a request bigger than the whole budget can never run: 400, not 503
    assert_openai_error(post(guarded, "/generate", {"text": ["a"] * (limit + 1)}), 400)

    r = post(guarded, "/abort_request", {"rid": "hold-0"})
    assert r.status_code == 200 and r.json()["aborted"] == ["hold-0"]
    threads[0].join(30)
    status, events, done = results[0]
    assert status == 200 and done and events[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert post(guarded, "/abort_request", {"abort_all": True}).status_code == 200
    for t in threads:
        t.join(30)
    assert all(results[i][2] and results[i][1] for i in range(limit)), results
    assert_openai_error(post(guarded, "/abort_request", {}), 400)
    wait_kv_clean(guarded.base_url, AUTH)
    assert post(guarded, "/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 2}}).status_code == 200


def test_abort_non_streaming_request_by_rid(guarded):
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", post(guarded, "/v1/completions", {
        "model": "m", "prompt": "Once upon a time", "max_tokens": 3000, "ignore_eos": True, "rid": "abort-me"})))
    t.start()
    assert wait_for(lambda: server_info(guarded.base_url, AUTH)["num_running_reqs"] == 1, 30)
    assert post(guarded, "/abort_request", {"rid": "abort-me"}).json()["aborted"] == ["abort-me"]
    t.join(30)
    body = out["r"].json()
    assert out["r"].status_code == 200 and body["choices"][0]["finish_reason"] == "abort", body
    wait_kv_clean(guarded.base_url, AUTH)


def _raw_stream_request(server, body: bytes) -> socket.socket:
    """A client that sends a streaming request and then never reads (tiny receive buffer)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", server.port))
    head = (f"POST /generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    sock.sendall(head.encode() + body)
    return sock


def test_timeout_and_a_stalled_reader_do_not_stall_others(guarded):
    import orjson

    rss_before = process_rss(guarded.proc.pid)["http"]
    sock = _raw_stream_request(guarded, orjson.dumps({"text": "Tell me a story.", "stream": True, "rid": "stalled",
                                                      "sampling_params": LONG}))
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("r", post(guarded, "/generate", {
        "text": "Write an essay.", "rid": "too-long", "sampling_params": LONG})))
    t.start()
    started = time.time()
    latencies = []
    while time.time() - started < TIMEOUT_S + 2:
        t0 = time.time()
        r = post(guarded, "/generate", {"text": "2 + 2 =", "sampling_params": {"max_new_tokens": 4}})
        assert r.status_code == 200, r.text
        latencies.append(time.time() - t0)
        time.sleep(0.5)
    t.join(30)
    err = assert_openai_error(out["r"], 408)
    assert "timed out" in err["message"]
    # both aborted by the timeout, the stalled one too although its client never read a byte
    info = wait_kv_clean(guarded.base_url, AUTH)
    assert info["num_running_reqs"] == 0
    assert max(latencies) < 10.0, latencies
    growth = process_rss(guarded.proc.pid)["http"] - rss_before
    assert growth < 64 * 2**20, f"HTTP process grew {growth / 2**20:.1f} MiB"
    sock.settimeout(10)
    data = b""
    while b"[DONE]" not in data:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    sock.close()
    assert b'"code":408' in data and b"[DONE]" in data


# ---- observability ----------------------------------------------------------------------------


def metric_values(server):
    text = requests.get(server.base_url + "/metrics", headers=AUTH).text
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


def test_metrics(guarded):
    before = metric_values(guarded)
    chat = {"model": "m", "messages": [{"role": "user", "content": "Count to five."}], "max_tokens": 8,
            "temperature": 0}
    events, done = read_sse(post(guarded, "/v1/chat/completions", {**chat, "stream": True}, stream=True))
    assert done and events
    assert post(guarded, "/v1/chat/completions", chat).status_code == 200
    after = metric_values(guarded)
    for name in ("sglserve:prompt_tokens_total", "sglserve:generation_tokens_total",
                 "sglserve:e2e_request_latency_seconds_count", "sglserve:num_requests_total"):
        assert after[name] > before.get(name, 0), name
    assert after["sglserve:time_to_first_token_seconds_count"] >= before.get("sglserve:time_to_first_token_seconds_count", 0) + 1
    assert after["sglserve:inter_token_latency_seconds_count"] > before.get("sglserve:inter_token_latency_seconds_count", 0)
    assert after["sglserve:cached_tokens_total"] > before.get("sglserve:cached_tokens_total", 0)  # same prompt twice
    assert after["sglserve:num_rejected_requests_total"] >= 3
    assert after["sglserve:num_timeout_requests_total"] >= 1
    for gauge in ("num_running_reqs", "num_queue_reqs", "num_used_tokens", "token_usage", "cache_hit_rate",
                  "max_total_num_tokens", "num_inflight_reqs"):
        assert f"sglserve:{gauge}" in after, gauge
    assert after["sglserve:max_total_num_tokens"] == 16384 and 0 < after["sglserve:cache_hit_rate"] <= 1


def test_request_ids_in_header_and_every_log_line(guarded):
    r = post(guarded, "/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 2}})
    rid = r.headers["x-request-id"]
    assert rid == r.json()["meta_info"]["id"]
    r = post(guarded, "/generate", {"text": "Hi", "rid": "client-given-rid", "sampling_params": {"max_new_tokens": 2}})
    assert r.headers["x-request-id"] == "client-given-rid"
    chat = post(guarded, "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "Hi"}],
                                                  "max_tokens": 2})
    assert chat.headers["x-request-id"] == chat.json()["id"]
    log = guarded.read_log()
    assert f'"POST /generate HTTP/1.1" 200 [rid={rid}]' in log
    assert '"POST /generate HTTP/1.1" 200 [rid=client-given-rid]' in log
    timeout_lines = [line for line in log.splitlines() if "timed out after" in line]
    for rid in ("too-long", "stalled"):
        assert [line for line in timeout_lines if f"Request {rid} timed out" in line and f"[rid={rid}]" in line]
