"""Tools (llama3 parser), reasoning (qwen3), logprobs, n, seed, logit_bias, penalties and the
other sampling extras through the real server on the default model with the openai client.

The shared `server` runs with --tool-call-parser llama3 --reasoning-parser qwen3 (tests/conftest.py).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from tests.server.tool_helpers import ASK, NAMED, TOOLS, assert_forced_calls, assert_well_formed, run_tool_choices


@pytest.fixture(scope="module")
def client(server):
    return openai.Client(base_url=server.base_url + "/v1", api_key="None")


def generate(server, body):
    r = requests.post(server.base_url + "/generate", json=body, timeout=300)
    assert r.status_code == 200, r.text
    return r.json()


# ---- tools -------------------------------------------------------------------------------


def test_tool_choices_llama3(client):
    choices = ["required", NAMED, "auto", "none"]
    results = run_tool_choices(client, choices)
    assert_forced_calls(results[:2], choices[:2])
    for resp, chunks in results[2:]:
        assert_well_formed(resp, chunks)
    assert results[3][0].choices[0].message.tool_calls is None  # none: never parsed


def test_tool_results_rendered_through_template(client):
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius"}'}}
    messages = ASK + [{"role": "assistant", "content": None, "tool_calls": [call]},
                      {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 21, "sky": "sunny"}'}]
    resp = client.chat.completions.create(model="m", messages=messages, tools=TOOLS, tool_choice="none",
                                          temperature=0, max_tokens=24)
    shorter = client.chat.completions.create(model="m", messages=ASK, tools=TOOLS, tool_choice="none",
                                             temperature=0, max_tokens=1)
    assert resp.choices[0].message.content
    # the call and its result are part of the prompt
    assert resp.usage.prompt_tokens > shorter.usage.prompt_tokens + 20


def test_reasoning_qwen3_split_streaming_and_not(client):
    kw = dict(model="m", messages=[{"role": "user", "content": "Think, then answer."}], temperature=0, max_tokens=48,
              extra_body={"regex": "<think>[a-z ]{1,20}</think>[a-z ]{1,20}"})
    resp = client.chat.completions.create(**kw)
    msg = resp.choices[0].message
    assert msg.reasoning_content and msg.content and "<think>" not in msg.content + msg.reasoning_content
    chunks = list(client.chat.completions.create(stream=True, **kw))
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert (reasoning, content) == (msg.reasoning_content, msg.content)
    plain = client.chat.completions.create(**{**kw, "extra_body": {"regex": "[a-z ]{1,20}"}})
    assert plain.choices[0].message.reasoning_content is None and plain.choices[0].message.content


# ---- logprobs ----------------------------------------------------------------------------


def test_chat_logprobs_stream_matches_non_stream(client):
    kw = dict(model="m", messages=ASK, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    resp = client.chat.completions.create(**kw)
    content = resp.choices[0].logprobs.content
    assert len(content) == resp.usage.completion_tokens
    for entry in content:
        tops = [t.logprob for t in entry.top_logprobs]
        assert len(tops) == 3 and tops == sorted(tops, reverse=True)
        assert math.isclose(entry.logprob, tops[0], abs_tol=1e-6)  # greedy takes the top token
        assert entry.bytes == list(entry.token.encode())
    chunks = list(client.chat.completions.create(stream=True, **kw))
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [(e.token, round(e.logprob, 5)) for e in streamed] == [(e.token, round(e.logprob, 5)) for e in content]
    assert "".join(e.token for e in content) == resp.choices[0].message.content


def test_completions_logprobs_with_echo(client):
    resp = client.completions.create(model="m", prompt="Hello world", max_tokens=4, temperature=0, logprobs=2, echo=True)
    lp = resp.choices[0].logprobs
    n_prompt = resp.usage.prompt_tokens
    assert len(lp.tokens) == n_prompt + resp.usage.completion_tokens
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert "".join(lp.tokens) == resp.choices[0].text
    assert lp.text_offset == sorted(lp.text_offset) and lp.text_offset[0] == 0
    assert all(len(t) == 2 for t in lp.top_logprobs[n_prompt:])


def test_generate_return_logprob(server):
    body = {"text": "The capital of France is", "return_logprob": True, "top_logprobs_num": 2, "logprob_start_len": 0,
            "return_text_in_logprobs": True, "sampling_params": {"temperature": 0, "max_new_tokens": 4}}
    meta = generate(server, body)["meta_info"]
    assert len(meta["input_token_logprobs"]) == meta["prompt_tokens"] and meta["input_token_logprobs"][0][0] is None
    assert len(meta["output_token_logprobs"]) == 4 and len(meta["output_top_logprobs"]) == 4
    assert all(isinstance(text, str) for _, _, text in meta["output_token_logprobs"])
    # the first output token's logprob equals the top-1 of its position
    assert meta["output_token_logprobs"][0][:2] == meta["output_top_logprobs"][0][0][:2]


# ---- n, seed, logit_bias, penalties, the rest ---------------------------------------------------


def test_n4_shares_the_prompt_kv(client):
    messages = [{"role": "user", "content": "Invent a name for a new kind of tea, a unique one (n-test)."}]
    resp = client.chat.completions.create(model="m", messages=messages, n=4, temperature=1.0, seed=3, max_tokens=8)
    assert [c.index for c in resp.choices] == [0, 1, 2, 3]
    prompt = resp.usage.prompt_tokens
    assert resp.usage.prompt_tokens_details.cached_tokens >= 3 * (prompt - 1)
    assert len({c.message.content for c in resp.choices}) > 1
    chunks = list(client.chat.completions.create(model="m", messages=messages, n=2, temperature=0, max_tokens=4, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    many = client.completions.create(model="m", prompt=["a b c", "1 2 3"], n=2, max_tokens=3, temperature=0)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text and many.choices[2].text == many.choices[3].text


def test_seed_reproducible(server):
    def run(seed):
        body = {"text": "My favourite animal is", "sampling_params": {"temperature": 1.0, "max_new_tokens": 12, "seed": seed}}
        return generate(server, body)["text"]

    with ThreadPoolExecutor(4) as pool:
        a, b, c, d = pool.map(run, [11, 11, 12, 13])
    assert a == b and len({a, c, d}) > 1


def test_logit_bias_bans_a_token(client, server):
    body = {"text": "The capital of France is", "sampling_params": {"temperature": 0, "max_new_tokens": 8}}
    ids = generate(server, body)["output_ids"]
    banned = ids[1]
    biased = generate(server, {**body, "sampling_params": {**body["sampling_params"], "logit_bias": {str(banned): -100}}})
    assert banned not in biased["output_ids"]
    resp = client.completions.create(model="m", prompt="The capital of France is", max_tokens=8, temperature=0,
                                     logit_bias={str(banned): -100})
    assert resp.choices[0].text == biased["text"]  # the OpenAI route maps the string keys the same way
    plus = generate(server, {**body, "sampling_params": {**body["sampling_params"], "logit_bias": {"42": 100}}})
    assert set(plus["output_ids"]) == {42}


def _repeat_ratio(ids):
    return 1 - len(set(ids)) / len(ids)


def test_penalties_change_repetition(server):
    prompt = "Repeat after me: go go go go go go go go go go go go"

    def run(**sp):
        body = {"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 24, "ignore_eos": True, **sp}}
        return generate(server, body)["output_ids"]

    cases = [{}, {"frequency_penalty": 1.5}, {"presence_penalty": 1.5}, {"repetition_penalty": 1.8},
             {"frequency_penalty": -1.0}]
    with ThreadPoolExecutor(len(cases)) as pool:
        base, freq, pres, rep, neg = pool.map(lambda kw: run(**kw), cases)
    assert _repeat_ratio(freq) < _repeat_ratio(base)
    assert _repeat_ratio(pres) < _repeat_ratio(base)
    assert _repeat_ratio(rep) < _repeat_ratio(base)
    assert _repeat_ratio(neg) >= _repeat_ratio(base)


def test_min_tokens_stop_lists_and_limits(client, server):
    with ThreadPoolExecutor(4) as pool:
        short = pool.submit(client.chat.completions.create, model="m", messages=[{"role": "user", "content": "Say hi."}],
                            temperature=0, max_tokens=40)
        forced = pool.submit(client.chat.completions.create, model="m", messages=[{"role": "user", "content": "Say hi."}],
                             temperature=0, max_tokens=40, extra_body={"min_tokens": 30})
        capped = pool.submit(client.chat.completions.create, model="m", messages=ASK, temperature=0,
                             max_completion_tokens=3, user="someone", stream=True, stream_options={"include_usage": True})
        stops = pool.submit(client.completions.create, model="m", prompt="1, 2, 3, 4, 5,", max_tokens=30, temperature=0,
                            stop=[" 9", " 8", " 7", " 6"])
        short, forced, capped, stops = short.result(), forced.result(), list(capped.result()), stops.result()
    assert short.usage.completion_tokens < 30 <= forced.usage.completion_tokens
    assert capped[-1].usage.completion_tokens == 3
    assert stops.choices[0].finish_reason == "stop" and stops.choices[0].matched_stop == " 6"
    eos_like = generate(server, {"text": "1, 2, 3,", "sampling_params": {"temperature": 0, "max_new_tokens": 20,
                                                                         "stop_token_ids": [28]}})  # 28 = ","
    assert eos_like["meta_info"]["finish_reason"] == {"type": "stop", "matched": 28}


def test_continue_final_message(client):
    messages = [{"role": "user", "content": "What is the capital of France?"},
                {"role": "assistant", "content": "The capital of France is"}]
    resp = client.chat.completions.create(model="m", messages=messages, temperature=0, max_tokens=6,
                                          extra_body={"continue_final_message": True})
    assert "Paris" in resp.choices[0].message.content
