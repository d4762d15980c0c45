"""/v1/score (SGLang's) through the real server on the default model: probabilities of label
tokens after query + item, checked against the logprobs /v1/completions reports for the same
prompt, with and without softmax, text and token ids, and the 400s."""

from __future__ import annotations

import math

import pytest
import requests

QUERY, ITEMS = "The capital of France", [" is", " was", " has"]


def score(server, **body):
    return requests.post(server.base_url + "/v1/score", json={"model": "m", **body}, timeout=120)


def tokenize(server, text):
    return requests.post(server.base_url + "/tokenize", json={"prompt": text, "add_special_tokens": False},
                         timeout=30).json()["tokens"]


@pytest.fixture(scope="module")
def labels(server):
    """Three tokens that are each one token: the likely next words after each item."""
    ids = [tokenize(server, w) for w in (" Paris", " the", " a")]
    assert all(len(t) == 1 for t in ids)
    return [t[0] for t in ids]


def top_logprobs(server, prompt):
    """{token text: logprob} of the next token, from /v1/completions (top 20)."""
    r = requests.post(server.base_url + "/v1/completions", json={
        "model": "m", "prompt": prompt, "max_tokens": 1, "temperature": 0, "logprobs": 20}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["logprobs"]["top_logprobs"][0]


def test_scores_agree_with_completion_logprobs(server, labels):
    r = score(server, query=QUERY, items=ITEMS, label_token_ids=labels)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "scoring" and len(body["scores"]) == len(ITEMS)
    assert body["usage"]["prompt_tokens"] > 0
    words = [" Paris", " the", " a"]
    for item, row in zip(ITEMS, body["scores"]):
        assert len(row) == len(labels) and all(0.0 <= p <= 1.0 for p in row)
        assert sum(row) <= 1.0 + 1e-6
        tops = top_logprobs(server, QUERY + item)
        checked = 0
        for word, p in zip(words, row):
            if word in tops:  # the label is among the 20 most likely: its probability must match
                assert math.isclose(p, math.exp(tops[word]), rel_tol=1e-3, abs_tol=1e-6), (item, word)
                checked += 1
        assert checked, f"none of {words} in the top 20 after {QUERY + item!r}: {tops}"


def test_softmax_sums_to_one_and_keeps_ratios(server, labels):
    raw = score(server, query=QUERY, items=ITEMS, label_token_ids=labels).json()["scores"]
    soft = score(server, query=QUERY, items=ITEMS, label_token_ids=labels, apply_softmax=True).json()["scores"]
    for r, s in zip(raw, soft):
        assert math.isclose(sum(s), 1.0, rel_tol=1e-6)
        assert all(math.isclose(si, ri / sum(r), rel_tol=1e-4) for ri, si in zip(r, s))


def test_token_ids_and_item_first(server, labels):
    text = score(server, query=QUERY, items=ITEMS[:2], label_token_ids=labels).json()["scores"]
    q, items = tokenize(server, QUERY), [tokenize(server, i) for i in ITEMS[:2]]
    ids = score(server, query=q, items=items, label_token_ids=labels)
    assert ids.status_code == 200, ids.text
    for a, b in zip(text, ids.json()["scores"]):
        assert all(math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-7) for x, y in zip(a, b))
    # item_first: item + query, the same as the query placed after the item by hand
    first = score(server, query=" is", items=[QUERY], label_token_ids=labels, item_first=True).json()["scores"]
    assert all(math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-7) for x, y in zip(first[0], text[0]))
    single = score(server, query=QUERY, items=" is", label_token_ids=labels).json()["scores"]  # one item as a string
    assert len(single) == 1 and all(math.isclose(x, y, rel_tol=1e-3, abs_tol=1e-7) for x, y in zip(single[0], text[0]))


@pytest.mark.parametrize("body, param", [
    ({"query": QUERY, "items": [], "label_token_ids": [5]}, "items"),
    ({"query": QUERY, "items": [" is"], "label_token_ids": []}, "label_token_ids"),
    ({"query": QUERY, "items": [" is"], "label_token_ids": [10 ** 7]}, "label_token_ids"),
    ({"query": QUERY, "items": [" is"], "label_token_ids": [-1]}, "label_token_ids"),
    ({"query": QUERY, "items": [[1, 2]], "label_token_ids": [5]}, "items"),
    ({"query": [1, 2], "items": [" is"], "label_token_ids": [5]}, "items"),
    ({"query": QUERY, "items": [" is", [1, 2]], "label_token_ids": [5]}, None),
    ({"query": [1, 2], "items": [[10 ** 7]], "label_token_ids": [5]}, None),
    ({"items": [" is"], "label_token_ids": [5]}, "query"),
])
def test_bad_requests(server, body, param):
    r = score(server, **body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["object"] == "error" and err["code"] == 400 and err["message"]
    if param is not None:
        assert err["param"] == param, err
