"""The user flows of the README through a real server on the default model, with real clients."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


def post(server, path, body, **kw):
    return requests.post(server.base_url + path, json=body, timeout=120, **kw)


def sse_events(resp):
    """Parsed `data:` payloads of an SSE response, and whether it ended with [DONE]."""
    events, done = [], False
    for line in resp.iter_lines(decode_unicode=True):
        if not line:
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: "):]
        if payload == "[DONE]":
            done = True
            continue
        events.append(json.loads(payload))
    return events, done


def test_chat_curl_shape(server):
    r = post(server, "/v1/chat/completions", {"model": "default", "messages": QUESTION, "temperature": 0})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion"
    assert isinstance(body["id"], str) and isinstance(body["created"], int)
    choice = body["choices"][0]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "The capital of France is Paris."
    assert choice["message"]["reasoning_content"] is None and choice["message"]["tool_calls"] is None
    assert choice["logprobs"] is None
    assert choice["finish_reason"] == "stop"
    assert "matched_stop" in choice
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert "cached_tokens" in usage["prompt_tokens_details"]
    assert body["model"] != "default"  # responses name the served model


def test_chat_default_is_greedy_enough_via_openai_client(server):
    client = openai.Client(base_url=server.base_url + "/v1", api_key="None")
    resp = client.chat.completions.create(model="default", messages=QUESTION, temperature=0, max_tokens=64)
    assert resp.choices[0].message.content == "The capital of France is Paris."
    assert resp.choices[0].finish_reason == "stop"
    models = client.models.list()
    assert models.data and models.data[0].id == resp.model


def test_chat_stream_openai_client(server):
    client = openai.Client(base_url=server.base_url + "/v1", api_key="None")
    stream = client.chat.completions.create(
        model="default", messages=QUESTION, temperature=0, max_tokens=64, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "The capital of France is Paris."
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_generate_native_and_stream(server):
    body = {"text": "The capital of France is", "sampling_params": {"temperature": 0, "max_new_tokens": 32}}
    r = post(server, "/generate", body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert "Paris" in out["text"]
    meta = out["meta_info"]
    for key in ("id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "e2e_latency"):
        assert key in meta
    assert meta["finish_reason"]["type"] in ("stop", "length")
    if meta["finish_reason"]["type"] == "length":
        assert meta["finish_reason"]["length"] == 32 and meta["completion_tokens"] == 32

    r = post(server, "/generate", {**body, "stream": True}, stream=True)
    events, done = sse_events(r)
    assert done and events
    texts = [e["text"] for e in events]
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))  # cumulative
    assert texts[-1] == out["text"]


def test_generate_batch_and_input_ids(server):
    r = post(server, "/generate", {"text": ["Hello, my name is", "1, 2, 3,"],
                                   "sampling_params": {"temperature": 0, "max_new_tokens": 8}})
    assert r.status_code == 200, r.text
    outs = r.json()
    assert isinstance(outs, list) and len(outs) == 2
    single = post(server, "/generate", {"text": "1, 2, 3,", "sampling_params": {"temperature": 0, "max_new_tokens": 8}}).json()
    assert outs[1]["text"] == single["text"]
    ids = post(server, "/generate", {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 4, "temperature": 0}})
    assert ids.status_code == 200 and ids.json()["meta_info"]["prompt_tokens"] == 4


def test_completions_forms(server):
    client = openai.Client(base_url=server.base_url + "/v1", api_key="None")
    one = client.completions.create(model="x", prompt="The capital of France is", max_tokens=8, temperature=0)
    assert one.object == "text_completion" and "Paris" in one.choices[0].text
    many = client.completions.create(model="x", prompt=["The capital of France is", "2 + 2 ="], max_tokens=8, temperature=0)
    assert [c.index for c in many.choices] == [0, 1]
    assert many.choices[0].text == one.choices[0].text
    ids = client.completions.create(model="x", prompt=[1, 2, 3], max_tokens=4, temperature=0)
    assert ids.usage.prompt_tokens == 3
    stream = client.completions.create(model="x", prompt="The capital of France is", max_tokens=8, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in stream if c.choices) == one.choices[0].text


def test_stop_strings_and_matched_stop(server):
    r = post(server, "/v1/chat/completions", {"model": "m", "messages": QUESTION, "temperature": 0, "stop": ["Paris"]})
    choice = r.json()["choices"][0]
    assert choice["message"]["content"] == "The capital of France is "
    assert choice["finish_reason"] == "stop" and choice["matched_stop"] == "Paris"
    g = post(server, "/generate", {"text": "The capital of France is", "stream": True,
                                   "sampling_params": {"temperature": 0, "max_new_tokens": 32, "stop": "Paris"}}, stream=True)
    events, _ = sse_events(g)
    assert "Paris" not in events[-1]["text"]
    assert events[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": "Paris"}


def test_max_tokens_length_finish(server):
    r = post(server, "/v1/chat/completions", {"model": "m", "messages": QUESTION, "temperature": 0, "max_tokens": 3})
    body = r.json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3


def test_cached_tokens_on_repeat(server):
    body = {"model": "m", "messages": [{"role": "user", "content": "Tell me one fact about the Moon."}],
            "temperature": 0, "max_tokens": 8}
    post(server, "/v1/chat/completions", body)
    second = post(server, "/v1/chat/completions", body).json()
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 0


def test_concurrent_streams_match_alone(server):
    prompts = [f"Count from {i} to {i + 5}:" for i in range(32)]

    def gen(prompt, stream):
        body = {"text": prompt, "stream": stream, "sampling_params": {"temperature": 0, "max_new_tokens": 16}}
        r = post(server, "/generate", body, stream=stream)
        if stream:
            return sse_events(r)[0][-1]["text"]
        return r.json()["text"]

    alone = [gen(p, False) for p in prompts[:8]] + [None] * 24
    with ThreadPoolExecutor(32) as pool:
        together = list(pool.map(lambda p: gen(p, True), prompts))
    for i in range(8):
        assert together[i] == alone[i]
    for i in range(8, 32):
        assert together[i] == gen(prompts[i], False)


def test_info_routes(server):
    assert requests.get(server.base_url + "/health").status_code == 200
    assert requests.get(server.base_url + "/health_generate", timeout=60).status_code == 200
    info = requests.get(server.base_url + "/get_model_info").json()
    assert info["model_path"].endswith(".gguf")
    sinfo = requests.get(server.base_url + "/get_server_info").json()
    assert sinfo["max_total_num_tokens"] > 0
    assert requests.get(server.base_url + "/openapi.json").json()["paths"]


@pytest.mark.parametrize(
    "path,body,status",
    [
        ("/v1/chat/completions", {"model": "m", "messages": []}, 400),
        ("/v1/chat/completions", {"model": "m"}, 400),
        ("/v1/chat/completions", {"model": "m", "messages": QUESTION, "max_tokens": 0}, 400),
        ("/v1/chat/completions", {"model": "m", "messages": QUESTION, "temperature": -1}, 400),
        ("/v1/chat/completions", {"model": "m", "messages": QUESTION, "top_p": 0}, 400),
        ("/v1/chat/completions", {"model": "m", "messages": QUESTION, "top_p": 1.5}, 400),
        ("/v1/chat/completions", {"model": "m", "messages": "hello"}, 400),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": "many"}, 400),
        ("/v1/completions", {"model": "m", "prompt": "hi " * 9000}, 400),
        ("/v1/completions", {"model": "m", "prompt": "hi", "max_tokens": 9000}, 400),
        ("/generate", {"text": "hi", "sampling_params": {"temperature": -1}}, 400),
        ("/generate", {"sampling_params": {}}, 400),
    ],
)
def test_bad_input_errors(server, path, body, status):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    err = r.json()
    assert err["object"] == "error" and err["message"] and "type" in err and err["code"] == status


def test_invalid_json(server):
    r = requests.post(server.base_url + "/v1/chat/completions", data="{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["object"] == "error"


def test_context_length_message(server):
    r = post(server, "/v1/completions", {"model": "m", "prompt": "hi " * 9000, "max_tokens": 1})
    assert "is longer than the model's context length" in r.json()["message"]


def test_disconnect_mid_stream_frees_kv(server):
    body = {"text": "Write a long story about a dragon.", "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": 2000, "ignore_eos": True}}
    r = post(server, "/generate", body, stream=True)
    for i, _ in enumerate(r.iter_lines()):
        if i > 3:
            break
    r.close()
    import time

    deadline = time.time() + 30
    while time.time() < deadline:
        info = requests.get(server.base_url + "/get_server_info").json()
        if info["num_running_reqs"] == 0:
            break
        time.sleep(0.5)
    assert info["num_running_reqs"] == 0
    # the server still answers
    assert post(server, "/generate", {"text": "Hi", "sampling_params": {"max_new_tokens": 2}}).status_code == 200


def test_no_kv_leak_after_everything(server):
    """Runs last in this module: every KV token is free or held only by the radix cache."""
    info = requests.get(server.base_url + "/get_server_info").json()
    assert info["used_tokens"] == 0, info
    assert info["available_tokens"] + info["evictable_tokens"] == info["max_total_num_tokens"]
    assert requests.post(server.base_url + "/flush_cache").status_code == 200
    info = requests.get(server.base_url + "/get_server_info").json()
    assert info["available_tokens"] == info["max_total_num_tokens"]
