"""Schemathesis against /openapi.json of the `guarded` server (every route, metrics and auth on):
>= 2,000 generated cases, positive and negative, with no 5xx, every error OpenAI-shaped (in
streams too), and the server healthy with its KV cache clean afterwards.

Generation cost is bounded by capping the token counts in generated bodies (a hook on the
cases, not a server flag), so the run stays within a few minutes on 2 CPU cores."""

from __future__ import annotations

import json
import math
import time
from typing import Any, Dict, List

import pytest
import requests

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from tests.server.reliability_helpers import AUTH, wait_kv_clean  # noqa: E402

TOTAL_CASES = 2000
TOKEN_CAPS = {"max_tokens": 1, "max_completion_tokens": 1, "max_new_tokens": 1, "min_tokens": 1, "n": 2,
              "best_of": 2, "top_logprobs": 3, "logprobs": 3, "max_output_tokens": 1}
GENERATING = {"/v1/chat/completions", "/v1/completions", "/generate", "/v1/responses", "/v1/score"}
GENERATING_POSITIVE = 80  # valid bodies that run the model, per generating route
STATS: Dict[str, Any] = {"cases": 0, "by_status": {}, "by_route": {}, "seconds": 0.0}


def cap_body(path: str, body: Any) -> Any:
    """Cheap generation: cap token counts (and add max_tokens when absent); leave wrong types alone."""
    if path not in GENERATING or not isinstance(body, dict):
        return body
    for key, cap in TOKEN_CAPS.items():
        value = body.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > cap:
            body[key] = cap
    if path == "/v1/responses":
        if body.get("max_output_tokens") is None:
            body["max_output_tokens"] = TOKEN_CAPS["max_output_tokens"]
    elif path != "/v1/score" and body.get("max_tokens") is None and body.get("max_completion_tokens") is None:
        body["max_tokens"] = TOKEN_CAPS["max_tokens"]  # absent or null: up to the context otherwise
    return body


def check_error_shape(payload: Any, status: int, where: str) -> None:
    assert isinstance(payload, dict), where
    assert payload.get("object") == "error", (where, payload)
    assert isinstance(payload.get("message"), str) and payload["message"], (where, payload)
    assert isinstance(payload.get("type"), str) and payload.get("code") == status, (where, payload)


def check_response(method: str, path: str, resp: Any, body: Any = None) -> None:
    where = f"{method} {path} body={json.dumps(body, default=str)[:4000]} -> {resp.status_code}: {resp.text[:300]}"
    assert resp.status_code < 500, where
    if resp.status_code >= 400:
        check_error_shape(resp.json(), resp.status_code, where)
        return
    ctype = resp.headers.get("content-type") or ""
    ctype = ctype[0] if isinstance(ctype, list) else ctype  # schemathesis: header -> list of values
    if ctype.startswith("text/event-stream"):
        for line in resp.text.split("\n"):
            if line.startswith("data: ") and line != "data: [DONE]":
                event = json.loads(line[len("data: "):])
                if isinstance(event, dict) and "error" in event:
                    check_error_shape(event["error"], event["error"].get("code"), where)
                    assert event["error"]["code"] < 500, where


def operations(guarded) -> List[Any]:
    schema = schemathesis.openapi.from_url(guarded.base_url + "/openapi.json", headers=AUTH)
    return [result.ok() for result in schema.get_all_operations()]


def takes_input(operation) -> bool:
    return bool(list(operation.iter_parameters()) or operation.get_request_payload_content_types())


def run_operation(guarded, operation, mode: GenerationMode, examples: int) -> None:
    session = requests.Session()
    session.headers.update(AUTH)

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    def fuzz(case) -> None:
        case.body = cap_body(operation.path, case.body) if case.body is not None else case.body
        t = time.time()
        resp = case.call(base_url=guarded.base_url, session=session, headers=AUTH, timeout=60)
        took = time.time() - t
        STATS["seconds"] += took
        if took > 1.0:
            STATS.setdefault("slow", []).append((round(took, 1), operation.path, str(case.body)[:200]))
        STATS["cases"] += 1
        STATS["by_status"][resp.status_code] = STATS["by_status"].get(resp.status_code, 0) + 1
        key = f"{operation.method.upper()} {operation.path}"
        STATS["by_route"][key] = STATS["by_route"].get(key, 0) + 1
        check_response(operation.method.upper(), operation.path, resp, case.body)

    try:
        fuzz()
    except Unsatisfiable:  # nothing to make invalid (no parameters, or any string is valid)
        assert mode == GenerationMode.NEGATIVE


def test_fuzz_every_route(guarded):
    ops = operations(guarded)
    paths = {op.path for op in ops}
    assert {"/v1/chat/completions", "/v1/completions", "/generate", "/abort_request", "/metrics"} <= paths, paths
    # Routes without input get a few cases (all alike). Valid bodies of the generating routes run
    # the model, so they get GENERATING_POSITIVE cases; the rest of the budget goes to invalid
    # bodies (cheap 400s) and to the other routes that take input.
    budget = {}
    for op in ops:
        if not takes_input(op):
            budget[op.label] = {GenerationMode.POSITIVE: 5, GenerationMode.NEGATIVE: 5}
        elif op.path in GENERATING:
            budget[op.label] = {GenerationMode.POSITIVE: GENERATING_POSITIVE, GenerationMode.NEGATIVE: 0}
    others = [op for op in ops if op.label not in budget]
    cheap_modes = len(others) * 2 + sum(1 for op in ops if op.path in GENERATING and takes_input(op))
    spent = sum(GENERATING_POSITIVE for op in ops if op.path in GENERATING and takes_input(op)) + 5 * len(ops)
    share = math.ceil(1.5 * (TOTAL_CASES - spent) / cheap_modes)  # margin: some modes generate nothing
    for op in ops:
        modes = budget.setdefault(op.label, {GenerationMode.POSITIVE: share, GenerationMode.NEGATIVE: share})
        if op.path in GENERATING and takes_input(op):
            modes[GenerationMode.NEGATIVE] = share
    t0 = time.time()
    try:
        for op in ops:
            for mode, examples in budget[op.label].items():
                run_operation(guarded, op, mode, examples)
    finally:
        STATS["wall_s"] = round(time.time() - t0, 1)
        STATS["slow"] = sorted(STATS.get("slow", []), reverse=True)[:10]
        print("fuzz stats:", json.dumps(STATS, default=str))
    assert STATS["cases"] >= TOTAL_CASES, STATS
    assert len(STATS["by_route"]) == len(ops)
    # alive and clean afterwards
    assert requests.get(guarded.base_url + "/health").status_code == 200
    r = requests.post(guarded.base_url + "/generate", headers=AUTH, timeout=60,
                      json={"text": "The capital of France is", "sampling_params": {"max_new_tokens": 4}})
    assert r.status_code == 200 and r.json()["text"]
    wait_kv_clean(guarded.base_url, AUTH)
