"""/tokenize, /detokenize (vLLM's routes) and /version on the default model, through HTTP."""

from __future__ import annotations

import requests

from sglserve.server_args import default_model_path
from sglserve.utils.hf_transformers_utils import get_tokenizer

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _post(server, route, body):
    return requests.post(server.base_url + route, json=body, timeout=60)


def test_tokenize_prompt_and_round_trip(server):
    tok = get_tokenizer(default_model_path())
    text = "The capital of France is Paris. Ünïcödé 🎉"
    r = _post(server, "/tokenize", {"prompt": text})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tokens"] == tok.encode(text) and body["count"] == len(body["tokens"])
    assert body["max_model_len"] == requests.get(server.base_url + "/v1/models", timeout=30).json()["data"][0]["max_model_len"]
    back = _post(server, "/detokenize", {"tokens": body["tokens"]})
    assert back.status_code == 200 and back.json() == {"prompt": text}


def test_tokenize_messages_is_what_chat_feeds_the_model(server):
    r = _post(server, "/tokenize", {"model": "default", "messages": MESSAGES})
    assert r.status_code == 200, r.text
    chat = _post(server, "/v1/chat/completions", {"model": "default", "messages": MESSAGES, "max_tokens": 1})
    assert r.json()["count"] == chat.json()["usage"]["prompt_tokens"]
    without = _post(server, "/tokenize", {"messages": MESSAGES, "add_generation_prompt": False}).json()
    assert without["count"] < r.json()["count"]  # the assistant header is what add_generation_prompt adds
    assert r.json()["tokens"][: without["count"]] == without["tokens"]


def test_tokenize_bad_input_is_a_clear_400(server):
    cases = [
        ("/tokenize", {"prompt": "a", "messages": MESSAGES}),  # both
        ("/tokenize", {}),  # neither
        ("/tokenize", {"prompt": "a", "unknown": 1}),
        ("/detokenize", {"tokens": [1, 10**9]}),
        ("/detokenize", {"tokens": "abc"}),
    ]
    for route, body in cases:
        r = _post(server, route, body)
        assert r.status_code == 400, (route, body, r.status_code, r.text[:300])
        err = r.json()
        assert err["object"] == "error" and err["message"] and err["code"] == 400, err


def test_version(server):
    r = requests.get(server.base_url + "/version", timeout=30)
    assert r.status_code == 200 and r.json()["version"]
