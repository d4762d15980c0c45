"""Shared by the reliability tests: SSE reading, error shape, KV/queue polling, process RSS."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any, Dict, List, Optional, Tuple

import psutil
import requests

# The `guarded` server (conftest.py): its API key and limits
KEY = "sk-rel-" + secrets.token_hex(12)
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_RUNNING, MAX_QUEUED, TIMEOUT_S, PAYLOAD = 4, 2, 15, 2_000_000


def assert_openai_error(resp: requests.Response, status: int) -> Dict[str, Any]:
    assert resp.status_code == status, (resp.status_code, resp.text[:500])
    err = resp.json()
    assert err["object"] == "error" and isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["type"], str) and err["code"] == status, err
    return err


def read_sse(resp: requests.Response) -> Tuple[List[Dict[str, Any]], bool]:
    """(events, ended with [DONE]); tolerates a stream the server cut."""
    events, done = [], False
    try:
        for line in resp.iter_lines(decode_unicode=True):
            if not line:
                continue
            payload = line[len("data: "):]
            if payload == "[DONE]":
                done = True
            else:
                events.append(json.loads(payload))
    except requests.RequestException:
        pass
    return events, done


def server_info(base_url: str, headers: Optional[dict] = None) -> Dict[str, Any]:
    return requests.get(base_url + "/get_server_info", headers=headers, timeout=30).json()


def wait_for(pred, timeout: float = 30.0, interval: float = 0.2) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(interval)
    return pred()


def wait_kv_clean(base_url: str, headers: Optional[dict] = None, timeout: float = 30.0) -> Dict[str, Any]:
    """Nothing running or queued, every KV token free or held only by the radix cache."""
    info: Dict[str, Any] = {}

    def clean() -> bool:
        nonlocal info
        info = server_info(base_url, headers)
        return (info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0 and info["used_tokens"] == 0
                and info["available_tokens"] + info["evictable_tokens"] == info["max_total_num_tokens"])

    assert wait_for(clean, timeout), info
    return info


def process_rss(pid: int) -> Dict[str, int]:
    """RSS in bytes of the launcher ("http") and of each child process ("child-<pid>")."""
    proc = psutil.Process(pid)
    out = {"http": proc.memory_info().rss}
    for child in proc.children(recursive=True):
        try:
            out[f"child-{child.pid}"] = child.memory_info().rss
        except psutil.Error:
            continue
    return out


def disconnect_early(base_url: str, body: dict, stream: bool) -> None:
    """Send /generate and hang up early: a stream after a few lines, a plain request after 1.5 s
    (the server must see the disconnect and abort the request)."""
    try:
        r = requests.post(base_url + "/generate", json={**body, "stream": stream}, stream=stream, timeout=(5, 1.5))
        for i, _ in enumerate(r.iter_lines()):
            if i > 3:
                break
        r.close()
    except requests.exceptions.ReadTimeout:
        pass  # not streaming: the client gives up
