"""Injected faults (tests/server/fault_injection/sitecustomize.py, loaded by every process of the
server): an error with one request fails that request only, in the scheduler, the detokenizer
or the HTTP process; a crashed scheduler or detokenizer -> pending requests get 503, the
traceback is logged, the launcher exits non-zero, and no process or ipc dir is left behind."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.helpers import start_server
from tests.server.reliability_helpers import assert_openai_error, read_sse, wait_for, wait_kv_clean

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
FAULT_ENV = {"SGLSERVE_FAULT_INJECTION": "1",
             "PYTHONPATH": os.pathsep.join([os.path.join(HERE, "fault_injection"), REPO])}
ARGS = ["--max-total-tokens", "4096"]
SP = {"max_new_tokens": 12, "ignore_eos": True, "temperature": 0}


def start_fault_server(tmp_path_factory, name):
    return start_server(tmp_path_factory, ARGS, name=name, env=FAULT_ENV)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    s = start_fault_server(tmp_path_factory, "faulty")
    yield s
    s.stop()


def gen(server, rid, stream=False, sp=SP):
    body = {"text": "The capital of France is", "rid": rid, "stream": stream, "sampling_params": sp}
    r = requests.post(server.base_url + "/generate", json=body, stream=stream, timeout=120)
    if stream:
        return r, read_sse(r)
    return r, None


MARKERS = ["POISON-ADMIT", "POISON-SCHED", "POISON-DETOK", "POISON-HTTP"]


def test_an_error_with_one_request_fails_only_that_request(faulty):
    """Each marker, streamed and not, in one batch with healthy requests: only the marked fail."""
    expected = gen(faulty, "ref")[0].json()["text"]
    rids = [f"{m}-{kind}" for m in MARKERS for kind in ("x", "stream")] + [f"ok-{i}" for i in range(4)]
    with ThreadPoolExecutor(len(rids)) as pool:
        outs = dict(zip(rids, pool.map(lambda rid: gen(faulty, rid, stream=rid.endswith("stream")), rids)))
    for rid, (r, sse) in outs.items():
        if rid.startswith("ok-"):
            assert r.status_code == 200 and r.json()["text"] == expected, rid
        elif rid.endswith("stream"):
            events, done = sse
            if rid.startswith("POISON-ADMIT") and r.status_code != 200:
                continue  # may fail before the stream starts
            assert done and events[-1]["error"]["code"] == 500, (rid, events[-1:])
        else:
            assert_openai_error(r, 500)
    wait_kv_clean(faulty.base_url)
    assert requests.get(faulty.base_url + "/health").status_code == 200
    log = faulty.read_log()
    for what in ("scheduler fault", "admission fault", "detokenizer fault", "HTTP-process fault"):
        assert f"injected {what}" in log and "Traceback" in log  # logged with its traceback


def _children(pid):
    return psutil.Process(pid).children(recursive=True)


def _crash_and_check(server, marker, who):
    kids = _children(server.proc.pid)
    ipc_dirs = {os.path.dirname(path) for k in [psutil.Process(server.proc.pid), *kids] for path in _ipc_paths(k)}
    assert ipc_dirs
    pending = {}
    t = threading.Thread(target=lambda: pending.setdefault("r", gen(server, "long", True, {**SP, "max_new_tokens": 3000})))
    t.start()
    assert wait_for(lambda: "Prefill batch" in server.read_log(), 30)
    r, _ = gen(server, f"{marker}-now", sp=SP)
    assert_openai_error(r, 503)
    t.join(60)
    events, done = pending["r"][1]
    assert done and events[-1]["error"]["code"] == 503, events[-1:]
    code = server.proc.wait(60)
    assert code not in (0, None)
    log = server.read_log()
    assert f"injected {who} crash" in log and "Traceback" in log and "exited with code" in log
    assert wait_for(lambda: not [k for k in kids if k.is_running() and k.status() != psutil.STATUS_ZOMBIE], 10)
    assert not any(os.path.exists(d) for d in ipc_dirs)


def _ipc_paths(proc):
    try:
        return [c.laddr for c in proc.net_connections(kind="unix") if c.laddr and "sglserve-" in c.laddr]
    except psutil.Error:
        return []


def test_scheduler_crash_503_traceback_nonzero_exit(faulty):
    _crash_and_check(faulty, "CRASH-SCHED", "scheduler")


def test_detokenizer_crash_503_traceback_nonzero_exit(tmp_path_factory):
    s = start_fault_server(tmp_path_factory, "detokcrash")
    try:
        _crash_and_check(s, "CRASH-DETOK", "detokenizer")
    finally:
        s.stop()
