"""The HTTP process end to end without a model: FastAPI TestClient -> real serving code ->
real TokenizerManager (ZMQ) -> a fake scheduler thread -> real DetokenizerManager.

Checks response/stream shapes against SGLang's, validation and error shapes, and the
TokenizerManager's abort, timeout and dead-scheduler paths."""

from __future__ import annotations

import asyncio
import json
import shutil
import time

import pytest
from fastapi.testclient import TestClient

from sglserve.entrypoints.http_server import create_app
from sglserve.tokenizer import tokenizer_manager as tm_module
from sglserve.io_struct import AbortReq, GenerateReqInput, TokenizedGenerateReqInput
from sglserve.tokenizer.tokenizer_manager import ClientDisconnected, ServerError, TokenizerManager
from sglserve.port_args import PortArgs
from sglserve.server_args import ServerArgs
from tests.unit.fake_scheduler import EOS, REPLY, FakeScheduler

CONTEXT_LEN = 256
INFO = {"max_total_num_tokens": 1000, "context_len": CONTEXT_LEN, "vocab_size": 49152, "max_req_input_len": CONTEXT_LEN - 1}
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server_args():
    # No web UI: its stats sampler's control calls would take replies meant for the silent-scheduler
    # test (the fake drops messages while silent; a real scheduler answers every one, in order)
    return ServerArgs(device="cpu", served_model_name="smollm-test", disable_web_ui=True)


class Stack:
    def __init__(self, tokenizer, server_args):
        self.port_args = PortArgs.create()
        self.sched = FakeScheduler(tokenizer, self.port_args)
        self.tm = TokenizerManager(server_args, self.port_args, INFO, tokenizer=tokenizer)

    def close(self):
        self.sched.close()
        self.tm.recv_from_detokenizer.close(0)
        self.tm.send_to_scheduler.close(0)
        shutil.rmtree(self.port_args.ipc_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def stack(tokenizer, server_args):
    s = Stack(tokenizer, server_args)
    yield s
    s.close()


@pytest.fixture(scope="module")
def client(stack, server_args):
    with TestClient(create_app(server_args, stack.tm)) as c:
        yield c


def sse_events(text: str):
    events, done = [], False
    for line in text.split("\n"):
        if not line:
            continue
        assert line.startswith("data: "), line
        if line == "data: [DONE]":
            done = True
            continue
        assert not done, "nothing may follow [DONE]"
        events.append(json.loads(line[len("data: "):]))
    return events, done


def assert_error(r, status, param_contains=None):
    assert r.status_code == status, r.text
    err = r.json()
    assert set(err) == {"object", "message", "type", "param", "code"}, err
    assert err["object"] == "error" and err["message"] and err["code"] == status
    if status == 400:
        assert err["type"] == "BadRequestError"
    if param_contains:
        assert param_contains in err["message"] or param_contains == err["param"], err
    return err


# ---- chat --------------------------------------------------------------------------------


def test_chat_response_shape(client, tokenizer):
    r = client.post("/v1/chat/completions", json={"model": "anything", "messages": QUESTION})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "object", "created", "model", "choices", "usage"}
    assert body["object"] == "chat.completion" and body["model"] == "smollm-test"
    assert isinstance(body["created"], int) and body["id"]
    (choice,) = body["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": REPLY, "reasoning_content": None, "tool_calls": None},
        "logprobs": None,
        "finish_reason": "stop",
        "matched_stop": EOS,
    }
    u = body["usage"]
    assert u["completion_tokens"] == len(tokenizer.encode(REPLY)) + 1  # the reply and EOS
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and u["prompt_tokens"] > 10
    assert u["prompt_tokens_details"] == {"cached_tokens": 2}


def test_chat_stream_shape(client):
    r = client.post("/v1/chat/completions", json={"messages": QUESTION, "stream": True,
                                                  "stream_options": {"include_usage": True}})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events, done = sse_events(r.text)
    assert done
    assert all(e["object"] == "chat.completion.chunk" and e["model"] == "smollm-test" for e in events)
    assert len({e["id"] for e in events}) == 1
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "reasoning_content": None,
                                               "tool_calls": None}
    text = "".join(e["choices"][0]["delta"]["content"] or "" for e in events if e["choices"])
    assert text == REPLY
    finishes = [(e["choices"][0]["finish_reason"], e["choices"][0]["matched_stop"]) for e in events
                if e["choices"] and e["choices"][0]["finish_reason"]]
    assert finishes == [("stop", EOS)]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0
    assert all(e["usage"] is None for e in events[:-1])
    assert all("\ufffd" not in (e["choices"][0]["delta"]["content"] or "") for e in events if e["choices"])


def test_chat_stream_without_usage_and_with_continuous_usage(client):
    events, _ = sse_events(client.post("/v1/chat/completions", json={"messages": QUESTION, "stream": True}).text)
    assert events[-1]["choices"][0]["finish_reason"] == "stop" and events[-1]["usage"] is None
    events, _ = sse_events(client.post("/v1/chat/completions", json={
        "messages": QUESTION, "stream": True, "stream_options": {"continuous_usage_stats": True}}).text)
    assert all(e["usage"] is not None for e in events[1:])


def test_chat_stop_string_and_max_tokens(client):
    body = client.post("/v1/chat/completions", json={"messages": QUESTION, "stop": ["Paris"]}).json()
    choice = body["choices"][0]
    assert choice["message"]["content"] == "The capital of France is "
    assert (choice["finish_reason"], choice["matched_stop"]) == ("stop", "Paris")
    events, _ = sse_events(client.post("/v1/chat/completions", json={
        "messages": QUESTION, "stop": "Paris", "stream": True}).text)
    assert "".join(e["choices"][0]["delta"]["content"] or "" for e in events) == "The capital of France is "
    body = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_tokens": 3}).json()
    assert body["choices"][0]["finish_reason"] == "length" and body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["matched_stop"] is None
    body = client.post("/v1/chat/completions", json={"messages": QUESTION, "max_completion_tokens": 2}).json()
    assert body["usage"]["completion_tokens"] == 2


def test_chat_content_parts_and_template_kwargs(client, stack):
    parts = [{"role": "user", "content": [{"type": "text", "text": "What is the capital"},
                                          {"type": "text", "text": "of France?"}]}]
    assert client.post("/v1/chat/completions", json={"messages": parts}).status_code == 200
    r = client.post("/v1/chat/completions", json={"messages": QUESTION + [{"role": "assistant", "content": "The"}],
                                                  "continue_final_message": True})
    assert r.status_code == 200
    sent = [m for m in stack.sched.received if isinstance(m, TokenizedGenerateReqInput)][-1]
    assert stack.tm.tokenizer.decode(sent.input_ids).endswith("<|im_start|>assistant\nThe")


def test_sampling_fields_pass_through(client, stack):
    r = client.post("/v1/chat/completions", json={
        "messages": QUESTION, "temperature": 0.5, "top_p": 0.9, "top_k": 20, "min_p": 0.1, "seed": 7,
        "frequency_penalty": 0.5, "presence_penalty": -0.5, "repetition_penalty": 1.1, "stop_token_ids": [5],
        "ignore_eos": True, "max_tokens": 4, "skip_special_tokens": False, "min_tokens": 1})
    assert r.status_code == 200, r.text
    sp = [m for m in stack.sched.received if isinstance(m, TokenizedGenerateReqInput)][-1].sampling_params
    assert (sp.temperature, sp.top_p, sp.top_k, sp.min_p, sp.seed) == (0.5, 0.9, 20, 0.1, 7)
    assert (sp.frequency_penalty, sp.presence_penalty, sp.repetition_penalty) == (0.5, -0.5, 1.1)
    assert sp.stop_token_ids == [5] and sp.ignore_eos and sp.max_new_tokens == 4 and not sp.skip_special_tokens
    assert sp.min_new_tokens == 1
    client.post("/v1/chat/completions", json={"messages": QUESTION, "temperature": 0})
    sp = [m for m in stack.sched.received if isinstance(m, TokenizedGenerateReqInput)][-1].sampling_params
    assert sp.is_greedy and sp.max_new_tokens is None  # None: the scheduler caps at the context length


# ---- completions ---------------------------------------------------------------------------


def test_completions_forms(client):
    one = client.post("/v1/completions", json={"model": "x", "prompt": "Say:", "max_tokens": 50}).json()
    assert one["object"] == "text_completion" and one["model"] == "smollm-test"
    assert one["choices"] == [{"index": 0, "text": REPLY, "logprobs": None, "finish_reason": "stop", "matched_stop": EOS}]
    assert set(one["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens", "prompt_tokens_details",
                                 "completion_tokens_details"}
    default = client.post("/v1/completions", json={"prompt": "Say:"}).json()
    assert default["usage"]["completion_tokens"] <= 16  # OpenAI's default max_tokens
    many = client.post("/v1/completions", json={"prompt": ["a", "b", "c"], "max_tokens": 5}).json()
    assert [c["index"] for c in many["choices"]] == [0, 1, 2] and many["usage"]["completion_tokens"] == 15
    ids = client.post("/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 2}).json()
    assert ids["usage"]["prompt_tokens"] == 3
    ids2 = client.post("/v1/completions", json={"prompt": [[1, 2, 3], [4, 5]], "max_tokens": 2}).json()
    assert [c["index"] for c in ids2["choices"]] == [0, 1] and ids2["usage"]["prompt_tokens"] == 5
    echo = client.post("/v1/completions", json={"prompt": "Say:", "max_tokens": 50, "echo": True}).json()
    assert echo["choices"][0]["text"] == "Say:" + REPLY


def test_completions_stream(client):
    events, done = sse_events(client.post("/v1/completions", json={
        "prompt": ["a", "b"], "max_tokens": 50, "stream": True, "stream_options": {"include_usage": True}}).text)
    assert done
    texts = {0: "", 1: ""}
    for e in events[:-1]:
        assert e["object"] == "text_completion"
        (c,) = e["choices"]
        texts[c["index"]] += c["text"]
    assert texts == {0: REPLY, 1: REPLY}
    single = client.post("/v1/completions", json={"prompt": "a", "max_tokens": 50}).json()["usage"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 2 * single["completion_tokens"]
    events, _ = sse_events(client.post("/v1/completions", json={"prompt": "Q", "max_tokens": 50, "stream": True,
                                                                 "echo": True, "stop": "Paris"}).text)
    assert "".join(e["choices"][0]["text"] for e in events) == "QThe capital of France is "
    assert events[-1]["choices"][0]["finish_reason"] == "stop" and events[-1]["choices"][0]["matched_stop"] == "Paris"


# ---- native /generate ----------------------------------------------------------------------


def test_generate_native(client):
    out = client.post("/generate", json={"text": "Hi", "sampling_params": {"max_new_tokens": 64}}).json()
    assert out["text"] == REPLY
    meta = out["meta_info"]
    assert set(meta) >= {"id", "finish_reason", "prompt_tokens", "completion_tokens", "cached_tokens", "e2e_latency"}
    assert meta["finish_reason"] == {"type": "stop", "matched": EOS} and out["output_ids"][-1] == EOS
    r = client.post("/generate", json={"text": "Hi", "stream": True, "rid": "my-rid",
                                       "sampling_params": {"max_new_tokens": 64, "stop": "Paris"}})
    events, done = sse_events(r.text)
    assert done and all(e["meta_info"]["id"] == "my-rid" for e in events)
    texts = [e["text"] for e in events]
    assert all(texts[i + 1].startswith(texts[i]) for i in range(len(texts) - 1))  # cumulative
    assert texts[-1] == "The capital of France is "
    assert events[-1]["meta_info"]["finish_reason"] == {"type": "stop", "matched": "Paris"}


def test_generate_batch_and_input_ids(client):
    outs = client.post("/generate", json={"text": ["a", "b"], "sampling_params": [{"max_new_tokens": 2}, {"max_new_tokens": 3}]}).json()
    assert [o["meta_info"]["completion_tokens"] for o in outs] == [2, 3]
    out = client.post("/generate", json={"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 4}}).json()
    assert out["meta_info"]["prompt_tokens"] == 4
    events, _ = sse_events(client.post("/generate", json={"input_ids": [[1, 2], [3]], "stream": True,
                                                           "sampling_params": {"max_new_tokens": 3}}).text)
    assert {e["index"] for e in events} == {0, 1}


# ---- info and control routes -----------------------------------------------------------------


def test_info_routes(client, server_args):
    assert client.get("/health").status_code == 200
    assert client.get("/health_generate").status_code == 200
    assert client.get("/get_model_info").json() == {
        "model_path": server_args.model_path, "tokenizer_path": server_args.tokenizer_path, "is_generation": True}
    info = client.get("/get_server_info").json()
    assert info["max_total_num_tokens"] == 1000 and info["context_len"] == CONTEXT_LEN
    assert {"available_tokens", "evictable_tokens", "used_tokens", "num_running_reqs", "num_waiting_reqs"} <= set(info)
    assert info["served_model_name"] == "smollm-test" and info["api_key"] is None
    models = client.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "smollm-test"
    assert models["data"][0]["max_model_len"] == CONTEXT_LEN
    assert client.get("/v1/models/smollm-test").json()["id"] == "smollm-test"
    assert_error(client.get("/v1/models/other"), 404)
    assert client.post("/flush_cache").status_code == 200
    assert "/v1/chat/completions" in client.get("/openapi.json").json()["paths"]


def test_control_call_times_out_when_scheduler_is_silent(client, stack, monkeypatch):
    monkeypatch.setattr(tm_module, "CONTROL_TIMEOUT_S", 0.3)
    stack.sched.silent = True
    try:
        t0 = time.time()
        assert_error(client.get("/get_server_info"), 503)
        assert_error(client.post("/flush_cache"), 503)
        assert time.time() - t0 < 5
    finally:
        stack.sched.silent = False
    assert client.get("/get_server_info").status_code == 200


# ---- errors --------------------------------------------------------------------------------

BAD = [
    ("/v1/chat/completions", {"messages": []}, "messages"),
    ("/v1/chat/completions", {"model": "m"}, "messages"),
    ("/v1/chat/completions", {"messages": "hello"}, "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
    ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"messages": QUESTION, "max_completion_tokens": -1}, "max_completion_tokens"),
    ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": "many"}, "max_tokens"),
    ("/v1/chat/completions", {"messages": QUESTION, "temperature": -1}, "temperature"),
    ("/v1/chat/completions", {"messages": QUESTION, "temperature": "hot"}, "temperature"),
    ("/v1/chat/completions", {"messages": QUESTION, "top_p": 0}, "top_p"),
    ("/v1/chat/completions", {"messages": QUESTION, "top_p": 1.5}, "top_p"),
    ("/v1/chat/completions", {"messages": QUESTION, "top_k": 0}, "top_k"),
    ("/v1/chat/completions", {"messages": QUESTION, "stream": "sometimes"}, "stream"),
    ("/v1/chat/completions", {"messages": QUESTION, "stop_token_ids": [-1]}, "stop_token_ids"),
    ("/v1/chat/completions", {"messages": QUESTION, "stop_regex": "(a"}, "stop_regex"),
    ("/v1/chat/completions", {"messages": QUESTION, "n": 0}, "n"),
    ("/v1/chat/completions", {"messages": QUESTION, "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": QUESTION, "top_logprobs": 3}, "top_logprobs"),
    ("/v1/chat/completions", {"messages": QUESTION, "logit_bias": {"5": 500}}, "logit_bias"),
    ("/v1/chat/completions", {"messages": QUESTION, "logit_bias": {"x": 1}}, "logit_bias"),
    ("/v1/chat/completions", {"messages": QUESTION, "response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "bogus"}}}}, 'Unsupported type "bogus"'),
    ("/v1/chat/completions", {"messages": QUESTION, "response_format": {"type": "structural_tag"}}, "response_format"),
    ("/v1/chat/completions", {"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f"}}]},
     "--tool-call-parser"),
    ("/v1/chat/completions", {"messages": QUESTION, "tools": [{"type": "function", "function": {"name": "f"}}],
                              "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ("/v1/chat/completions", {"messages": QUESTION, "tool_choice": "required"}, "tool_choice"),
    ("/v1/chat/completions", {"messages": QUESTION, "regex": "(a"}, "regex"),
    ("/v1/chat/completions", {"messages": QUESTION, "functions": [{"name": "f"}]}, "functions"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "content"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi " * 300}]}, "context length"),
    ("/v1/chat/completions", {"messages": QUESTION, "max_tokens": CONTEXT_LEN}, "maximum context length"),
    ("/v1/chat/completions", {"messages": QUESTION, "continue_final_message": True}, "continue_final_message"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ("/v1/completions", {"prompt": "hi " * 300}, "context length"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 9000}, "maximum context length"),
    ("/v1/completions", {"prompt": []}, "prompt"),
    ("/v1/completions", {"prompt": ""}, "empty"),
    ("/v1/completions", {"prompt": [1, "a"]}, "prompt"),
    ("/v1/completions", {"prompt": [10**9]}, "vocabulary"),
    ("/v1/completions", {"prompt": "hi", "suffix": "end"}, "suffix"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "best_of": 3}, "best_of"),
    ("/v1/completions", {"prompt": "hi", "ebnf": "root ::= x"}, "ebnf"),
    ("/v1/completions", {"model": "m"}, "prompt"),
    ("/generate", {"text": "hi", "sampling_params": {"temperature": -1}}, "temperature"),
    ("/generate", {"text": "hi", "sampling_params": {"bogus": 1}}, "bogus"),
    ("/generate", {"text": "hi", "sampling_params": {"n": 0}}, "n"),
    ("/generate", {"text": "hi", "sampling_params": {"json_schema": "{bad"}}, "Invalid json_schema"),
    ("/generate", {"text": "hi", "sampling_params": {"regex": "(a"}}, "Invalid regex: Regex parsing error"),
    ("/generate", {"text": "hi", "sampling_params": {"ebnf": "root ::= foo"}}, 'Rule "foo" is not defined'),
    ("/generate", {"text": "hi", "sampling_params": {"regex": "a", "ebnf": "root ::= \"a\""}}, "Only one of"),
    ("/generate", {"text": "hi", "sampling_params": {"logit_bias": {"5": 101}}}, "logit_bias"),
    ("/generate", {"text": "hi", "sampling_params": {"logit_bias": {"99999999": 1}}}, "logit_bias"),
    ("/generate", {"sampling_params": {}}, "text or input_ids"),
    ("/generate", {"text": "hi", "input_ids": [1]}, "text or input_ids"),
    ("/generate", {"text": 5}, "text"),
    ("/generate", {"input_ids": [1, "x"]}, "input_ids"),
    ("/generate", {"text": "hi", "bogus": 1}, "bogus"),
    ("/generate", {"text": "hi", "stream": "yes"}, "stream"),
    ("/generate", {"text": "hi", "sampling_params": {"stop_regex": "x*"}}, "empty string"),
    ("/generate", {"text": "hi", "sampling_params": {"stop_regexp": "x"}}, "stop_regexp"),
    ("/generate", {"text": "hi", "return_logprob": True, "top_logprobs_num": 21}, "top_logprobs_num"),
    ("/generate", {"text": "hi", "return_logprob": True, "logprob_start_len": -2}, "logprob_start_len"),
    ("/generate", {"text": ["a", "b"], "sampling_params": [{}]}, "sampling_params"),
    ("/generate", [1, 2], "object"),
]


@pytest.mark.parametrize("path,body,needle", BAD, ids=[f"{p}-{i}" for i, (p, _, _) in enumerate(BAD)])
def test_bad_input_is_400_openai_shaped(client, path, body, needle):
    err = assert_error(client.post(path, json=body), 400)
    assert needle in err["message"] or needle == err["param"], err


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/generate"])
def test_bad_input_while_streaming_is_400_before_the_stream(client, path):
    body = {"stream": True, "messages": QUESTION, "temperature": -1} if "chat" in path else \
        {"stream": True, "prompt": "hi", "temperature": -1} if "completions" in path else \
        {"stream": True, "text": "hi", "sampling_params": {"temperature": -1}}
    assert_error(client.post(path, json=body), 400)


def test_context_length_message_as_sglang_words_it(client):
    err = client.post("/v1/completions", json={"prompt": [7] * CONTEXT_LEN, "max_tokens": 1}).json()
    assert err["message"] == f"The input ({CONTEXT_LEN} tokens) is longer than the model's context length ({CONTEXT_LEN} tokens)."


def test_invalid_json_and_wrong_content(client):
    for path in ("/v1/chat/completions", "/v1/completions", "/generate"):
        err = assert_error(client.post(path, content=b"{not json", headers={"Content-Type": "application/json"}), 400)
        assert "JSON" in err["message"]
    assert_error(client.post("/v1/chat/completions", content=b"", headers={"Content-Type": "application/json"}), 400)


def test_unknown_route_and_method(client):
    assert_error(client.get("/nope"), 404)
    assert_error(client.get("/v1/chat/completions"), 405)


def test_payload_limit_and_api_key(stack, tokenizer):
    args = ServerArgs(device="cpu", max_payload_size=1000, api_key="sk-secret")
    with TestClient(create_app(args, stack.tm)) as c:
        assert_error(c.get("/v1/models"), 401)
        assert_error(c.get("/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert c.get("/v1/models", headers={"Authorization": "Bearer sk-secret"}).status_code == 200
        assert c.get("/health").status_code == 200  # exempt
        auth = {"Authorization": "Bearer sk-secret"}
        big = {"messages": [{"role": "user", "content": "x" * 5000}]}
        assert_error(c.post("/v1/chat/completions", json=big, headers=auth), 413)

        def chunks():  # no Content-Length: counted as it arrives
            yield b'{"text": "' + b"x" * 3000 + b'"}'

        assert_error(c.post("/generate", content=chunks(), headers=auth), 413)
        assert c.get("/openapi.json", headers=auth).status_code == 200


# ---- TokenizerManager: abort, disconnect, dead scheduler -----------------------------------


class FakeRequest:
    def __init__(self, disconnect_after: float):
        self.t = time.time() + disconnect_after

    async def is_disconnected(self) -> bool:
        return time.time() > self.t


@pytest.fixture
def fresh(tokenizer, server_args):
    s = Stack(tokenizer, server_args)
    yield s
    s.close()


def _long_obj(stream: bool) -> GenerateReqInput:
    return GenerateReqInput(text="story", stream=stream,
                            sampling_params={"ignore_eos": True})


def _wait_for(cond, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline and not cond():
        time.sleep(0.01)
    return cond()


def test_disconnect_aborts_request(fresh, monkeypatch):
    monkeypatch.setattr(tm_module, "DISCONNECT_POLL_S", 0.05)
    fresh.sched.step_s = 0.2  # slower than the poll, so the wait times out and polls

    async def main():
        obj = _long_obj(stream=False)
        with pytest.raises(ClientDisconnected):
            async for _ in await fresh.tm.generate_request(obj, FakeRequest(0.3)):
                pass
        return obj.rid

    rid = asyncio.run(main())
    assert _wait_for(lambda: rid in fresh.sched.aborted)
    assert fresh.tm.rid_to_state == {}
    assert _wait_for(lambda: not fresh.sched.running)


def test_cancelled_stream_aborts_request(fresh):
    async def main():
        obj = _long_obj(stream=True)
        seen = []

        async def consume():
            async for out in await fresh.tm.generate_request(obj):
                seen.append(out)

        task = asyncio.ensure_future(consume())
        while len(seen) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return obj.rid

    rid = asyncio.run(main())
    assert _wait_for(lambda: rid in fresh.sched.aborted)
    assert fresh.tm.rid_to_state == {} and _wait_for(lambda: not fresh.sched.running)


def test_dead_scheduler_fails_pending_requests_with_503(fresh):
    class DeadProc:
        exitcode = -9

        def __init__(self):
            self.alive = True

        def is_alive(self):
            return self.alive

    async def main():
        proc = DeadProc()
        fresh.tm.watch_processes({"scheduler": proc}, interval=0.05)
        fresh.tm.start()
        gen = await fresh.tm.generate_request(_long_obj(stream=False))
        task = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.2)
        proc.alive = False
        with pytest.raises(ServerError) as e:
            await asyncio.wait_for(task, 5)
        assert e.value.status_code == 503 and "scheduler" in str(e.value)
        with pytest.raises(ServerError):
            await fresh.tm.generate_request(_long_obj(stream=False))
        with pytest.raises(ServerError):
            await fresh.tm.get_load()

    asyncio.run(main())


def test_duplicate_rid_rejected(fresh):
    async def main():
        gen = await fresh.tm.generate_request(GenerateReqInput(text="a", rid="same", sampling_params={"ignore_eos": True}))
        task = asyncio.ensure_future(gen.__anext__())
        await asyncio.sleep(0.05)
        with pytest.raises(ValueError, match="Duplicate"):
            await fresh.tm.generate_request(GenerateReqInput(text="b", rid="same"))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    assert _wait_for(lambda: any(isinstance(m, AbortReq) for m in fresh.sched.received))


def test_strict_model_name(tokenizer):
    """--strict-model-name: another model name is a 404; the served name, the path and an omitted
    model are accepted. Without the flag any name is (the other tests send "m")."""
    args = ServerArgs(device="cpu", served_model_name="smollm-test", strict_model_name=True)
    s = Stack(tokenizer, args)
    try:
        with TestClient(create_app(args, s.tm)) as c:
            body = {"messages": QUESTION, "max_tokens": 2}
            err = assert_error(c.post("/v1/chat/completions", json={**body, "model": "gpt-4o"}), 404)
            assert "model_not_found" in err["message"] and err["param"] == "model"
            assert_error(c.post("/v1/completions", json={"prompt": "hi", "model": "other"}), 404)
            for name in ("smollm-test", args.model_path, args.short_model_name):
                assert c.post("/v1/chat/completions", json={**body, "model": name}).status_code == 200, name
            assert c.post("/v1/chat/completions", json=body).status_code == 200
    finally:
        s.close()
