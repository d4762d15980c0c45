"""usage.completion_tokens_details.reasoning_tokens on /v1/chat/completions with the shared
server's qwen3 reasoning parser: the output tokens up to the one that completes </think>."""

from __future__ import annotations

import openai
import pytest
import requests

THINK = {"regex": "<think>[a-z ]{1,20}</think>[a-z ]{1,20}"}
ASK = [{"role": "user", "content": "Think, then answer."}]


@pytest.fixture(scope="module")
def client(server):
    return openai.Client(base_url=server.base_url + "/v1", api_key="None")


def detokenize(server, ids):
    return requests.post(server.base_url + "/detokenize", json={"tokens": ids}, timeout=30).json()["prompt"]


def test_reasoning_tokens_count_the_think_block(client, server):
    kw = dict(model="m", messages=ASK, temperature=0, max_tokens=48, extra_body=THINK)
    resp = client.chat.completions.create(**kw)
    n = resp.usage.completion_tokens_details.reasoning_tokens
    assert resp.choices[0].message.reasoning_content and 0 < n < resp.usage.completion_tokens
    # the same greedy output's ids: the first n tokens close the think block, n - 1 do not
    prompt = requests.post(server.base_url + "/tokenize", json={"messages": ASK}, timeout=30).json()["tokens"]
    out = requests.post(server.base_url + "/generate", json={
        "input_ids": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": 48, **THINK}}, timeout=60).json()
    ids = out["output_ids"]
    assert len(ids) == resp.usage.completion_tokens
    assert "</think>" in detokenize(server, ids[:n]) and "</think>" not in detokenize(server, ids[:n - 1])
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    assert chunks[-1].usage.completion_tokens_details.reasoning_tokens == n


def test_no_think_block_is_zero_reasoning_tokens(client):
    resp = client.chat.completions.create(model="m", messages=ASK, temperature=0, max_tokens=8,
                                          extra_body={"regex": "[a-z ]{1,20}"})
    assert resp.choices[0].message.reasoning_content is None
    assert resp.usage.completion_tokens_details.reasoning_tokens == 0
