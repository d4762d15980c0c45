"""Optimistic admission through the real server (default model): chat requests without
max_tokens in a KV pool far smaller than their context. SGLang's own test of this case sets
SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION=256; without it none of them may hang either."""

from __future__ import annotations

import threading
import time

import openai
import pytest
import requests

from tests.helpers import start_server

FLAGS = ["--max-total-tokens", "1536", "--context-length", "8192"]
# Questions the default model answers in 43-90 tokens at temperature 0 with min_tokens 32 (checked;
# "Say hello in Spanish." loops until the pool is exhausted): no max_tokens, yet each ends
PROMPTS = ["What is the capital of France?", "What is 2 + 2?", "Name a primary color.", "What color is the sky?"]


def _chat_all(base_url: str, min_tokens: int) -> list:
    """Four concurrent chats without max_tokens; returns their responses (or exceptions)."""
    client = openai.OpenAI(base_url=base_url + "/v1", api_key="none", timeout=600)
    results: list = [None] * len(PROMPTS)

    def one(i: int) -> None:
        try:
            results[i] = client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": PROMPTS[i]}], temperature=0,
                extra_body={"min_tokens": min_tokens})
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[i] = e

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(PROMPTS))]
    for t in threads:
        t.start()
    return threads, results


def _most_running(base_url: str, threads) -> int:
    most = 0
    while any(t.is_alive() for t in threads):
        info = requests.get(base_url + "/get_server_info", timeout=30).json()
        most = max(most, info["num_running_reqs"])
        time.sleep(0.02)
    return most


@pytest.mark.parametrize("clip", ["256", None])
def test_open_ended_chats_share_a_small_pool(tmp_path_factory, clip):
    env = {"SGLANG_CLIP_MAX_NEW_TOKENS_ESTIMATION": clip} if clip else {}
    server = start_server(tmp_path_factory, FLAGS, name=f"admission{clip}", env=env)
    try:
        threads, results = _chat_all(server.base_url, min_tokens=32)
        most = _most_running(server.base_url, threads)
        for t in threads:
            t.join()
        for r in results:
            assert not isinstance(r, Exception), r
            assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens >= 32
        if clip:
            assert most == 4, f"with the clip all four should run at once; saw at most {most}"
        info = requests.get(server.base_url + "/get_server_info", timeout=30).json()
        assert info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0
    finally:
        server.stop()
