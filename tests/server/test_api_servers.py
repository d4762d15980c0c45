"""--api-server-count 2: two HTTP worker processes on one port, one scheduler. Through the real
server: concurrent requests of every kind get complete answers (the same as alone), both workers
serve, control replies reach the worker that asked, /metrics counts every worker's requests,
/v1/responses is one store, a client that leaves frees its KV, SIGTERM stops everything. And
a worker that dies takes the server down, with no orphans (--api-server-count 3)."""

from __future__ import annotations

import re
import signal
from concurrent.futures import ThreadPoolExecutor

import openai
import psutil
import pytest
import requests

from tests.helpers import start_server
from tests.server.reliability_helpers import (assert_openai_error, disconnect_early, read_sse, server_info, wait_for,
                                              wait_kv_clean)

MAX_NEW = 12


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    s = start_server(tmp_path_factory, ["--api-server-count", "2", "--enable-metrics", "--max-total-tokens", "20000",
                                        "--shutdown-grace-period", "5"], name="api2")
    yield s
    s.stop()


def _served_by(server, route: str) -> set:
    """The workers whose access log shows `route` (each worker's log lines carry " HTTP<k>]")."""
    return set(re.findall(rf"HTTP(\d)\] .*\"POST {re.escape(route)} HTTP", server.read_log()))


def _one(base_url: str, kind: str, i: int) -> str:
    """One request of `kind` on a fresh client (its own connection); its text, checked complete."""
    prompt = f"Write about the number {i}."
    client = openai.Client(base_url=base_url + "/v1", api_key="None", max_retries=0)
    greedy = {"temperature": 0, "max_tokens": MAX_NEW, "extra_body": {"ignore_eos": True}}
    if kind in ("chat", "chat-stream"):
        msgs = [{"role": "user", "content": prompt}]
        if kind == "chat":
            r = client.chat.completions.create(model="m", messages=msgs, **greedy)
            assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == MAX_NEW
            return r.choices[0].message.content
        chunks = list(client.chat.completions.create(model="m", messages=msgs, stream=True,
                                                     stream_options={"include_usage": True}, **greedy))
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
        assert chunks[-1].usage.completion_tokens == MAX_NEW
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if kind == "completion":
        r = client.completions.create(model="m", prompt=prompt, **greedy)
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == MAX_NEW
        return r.choices[0].text
    body = {"text": prompt, "stream": kind == "generate-stream",
            "sampling_params": {"max_new_tokens": MAX_NEW, "temperature": 0, "ignore_eos": True}}
    r = requests.post(base_url + "/generate", json=body, stream=body["stream"], timeout=120)
    assert r.status_code == 200, r.text
    if body["stream"]:
        events, done = read_sse(r)
        assert done
        out = events[-1]
    else:
        out = r.json()
    assert out["meta_info"]["completion_tokens"] == MAX_NEW, out
    return out["text"]


KINDS = ["chat", "chat-stream", "completion", "generate", "generate-stream"]


def test_concurrent_requests_of_every_kind_are_complete_and_spread(two):
    jobs = [(KINDS[i % len(KINDS)], i % 4) for i in range(40)]
    alone = {(k, i): _one(two.base_url, k, i) for k in KINDS for i in range(4)}  # sequential: the reference
    with ThreadPoolExecutor(20) as pool:
        got = list(pool.map(lambda job: _one(two.base_url, *job), jobs))
    for job, text in zip(jobs, got):
        assert text == alone[job], job  # greedy: the same answer as alone, from whichever worker
    assert _served_by(two, "/v1/chat/completions") == {"0", "1"}
    assert _served_by(two, "/generate") == {"0", "1"}
    wait_kv_clean(two.base_url)


def test_control_replies_reach_the_worker_that_asked(two):
    seen = set()
    for _ in range(12):  # each call on a new connection: the kernel spreads them over both workers
        info = requests.get(two.base_url + "/get_server_info", timeout=10).json()
        assert info["api_server_count"] == 2 and info["max_total_num_tokens"] == 20000
        seen.add(info["http_worker"])
        assert requests.post(two.base_url + "/flush_cache", timeout=10).status_code == 200
    assert seen == {0, 1}
    assert _served_by(two, "/flush_cache") == {"0", "1"}


def test_metrics_on_any_worker_count_every_workers_requests(two):
    def total() -> float:
        text = requests.get(two.base_url + "/metrics", timeout=10).text
        return float(re.search(r"^sglserve:num_requests_total\{.*\} (\S+)$", text, re.M).group(1))

    before = total()
    for i in range(6):
        _one(two.base_url, "generate", i)
    assert len(_served_by(two, "/generate")) == 2
    totals = {total() for _ in range(8)}  # scrapes land on both workers
    assert totals == {before + 6}
    assert "sglserve:num_inflight_reqs" in requests.get(two.base_url + "/metrics", timeout=10).text


def test_responses_store_is_shared_by_the_workers(two):
    client = openai.Client(base_url=two.base_url + "/v1", api_key="None", max_retries=0)
    first = client.responses.create(model="m", input="Say hi.", max_output_tokens=8)
    for _ in range(6):  # new connections: both workers answer from the one store
        r = requests.get(f"{two.base_url}/v1/responses/{first.id}", timeout=10)
        assert r.status_code == 200 and r.json()["id"] == first.id
    for _ in range(4):
        nxt = openai.Client(base_url=two.base_url + "/v1", api_key="None", max_retries=0).responses.create(
            model="m", input="And again.", previous_response_id=first.id, max_output_tokens=8)
        assert nxt.status in ("completed", "incomplete")
    assert requests.delete(f"{two.base_url}/v1/responses/{first.id}", timeout=10).status_code == 200
    for _ in range(4):
        assert_openai_error(requests.get(f"{two.base_url}/v1/responses/{first.id}", timeout=10), 404)


def test_bad_input_gets_openai_errors_on_every_worker(two):
    for _ in range(6):
        assert_openai_error(requests.post(two.base_url + "/v1/chat/completions", json={"model": "m"}, timeout=10), 400)
        assert_openai_error(requests.post(two.base_url + "/generate", data=b"{nope", timeout=10), 400)
    assert requests.get(two.base_url + "/v1/models", timeout=10).json()["data"][0]["max_model_len"] > 0
    assert "<html" in requests.get(two.base_url + "/", timeout=10).text.lower()


def test_client_disconnect_aborts_and_frees_kv(two):
    """Requests far too long to finish in the wait below: only aborts can empty the running batch."""
    body = {"text": "Tell me a long story.", "sampling_params": {"max_new_tokens": 3000, "ignore_eos": True}}
    before = two.read_log().count("Client disconnected; aborting request")
    for stream in (True, False, True, False, True, False):
        disconnect_early(two.base_url, body, stream)
    assert wait_for(lambda: server_info(two.base_url)["num_running_reqs"] == 0, 20)
    wait_kv_clean(two.base_url)
    assert two.read_log().count("Client disconnected; aborting request") - before == 3  # the non-streamed ones


def test_sigterm_stops_every_worker_and_child(two):
    kids = psutil.Process(two.proc.pid).children(recursive=True)
    assert len(kids) >= 4  # scheduler, detokenizer, 2 HTTP workers
    two.proc.send_signal(signal.SIGTERM)
    assert two.proc.wait(60) == 0
    assert wait_for(lambda: not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE], 10)
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(two.base_url + "/health", timeout=5)


def test_a_dying_worker_takes_the_server_down(tmp_path_factory):
    s = start_server(tmp_path_factory, ["--api-server-count", "3", "--max-total-tokens", "4000"], name="api3")
    try:
        assert _one(s.base_url, "generate", 0)
        kids = psutil.Process(s.proc.pid).children(recursive=True)
        workers = [k for k in kids if k.pid in _worker_pids(s)]
        assert len(workers) == 3
        workers[1].kill()
        assert s.proc.wait(60) == 1
        assert "http worker" in s.read_log() and "shutting the server down" in s.read_log()
        assert wait_for(lambda: not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE], 10)
    finally:
        s.stop(signal.SIGKILL)


def _worker_pids(server) -> set:
    return {int(p) for p in re.findall(r"HTTP\d\] Started server process \[(\d+)\]", server.read_log())}
