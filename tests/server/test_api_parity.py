"""API details SGLang / vLLM client code relies on (issue 14), through the shared server (llama3
tool parser): model names, stream delta keys, lenient fields, stop_regex, cache_salt, tools with
$defs and strict tools."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from sglserve.server_args import default_model_path
from tests.server.tool_helpers import ASK, assert_well_formed

UNIT = {"enum": ["celsius", "fahrenheit"], "title": "Unit", "type": "string"}
CITY = {"enum": ["Paris", "Tokyo", "Lima"], "title": "City", "type": "string"}
# What Pydantic generates for a model with enum-typed fields: definitions under $defs, $ref pointers
WEATHER_DEFS = {"$defs": {"City": CITY, "Unit": UNIT}, "title": "Weather", "type": "object",
                "properties": {"city": {"$ref": "#/$defs/City"}, "unit": {"$ref": "#/$defs/Unit"}},
                "required": ["city", "unit"]}
TIME_DEFS = {"$defs": {"Unit": UNIT}, "type": "object", "properties": {"unit": {"$ref": "#/$defs/Unit"}},
             "required": ["unit"]}
DEFS_TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER_DEFS}},
              {"type": "function", "function": {"name": "get_temp_unit", "parameters": TIME_DEFS}}]


@pytest.fixture(scope="module")
def client(server):
    return openai.Client(base_url=server.base_url + "/v1", api_key="None")


def generate(server, body, status=200):
    r = requests.post(server.base_url + "/generate", json=body, timeout=300)
    assert r.status_code == status, r.text
    return r.json()


def sse_data(response):
    return [json.loads(line[6:]) for line in response.iter_lines(decode_unicode=True)
            if line.startswith("data: ") and line != "data: [DONE]"]


# ---- names and shapes --------------------------------------------------------------------


def test_model_names(server, client):
    path = default_model_path()
    listed = requests.get(server.base_url + "/v1/models").json()["data"]
    assert [m["id"] for m in listed] == [path]  # --served-model-name defaults to --model-path as given
    short = path.rsplit("/", 1)[-1].removesuffix(".gguf")
    for name in (path, short):
        r = requests.get(server.base_url + "/v1/models/" + name)
        assert r.status_code == 200 and r.json()["id"] == path, r.text
    assert requests.get(server.base_url + "/v1/models/other-model").status_code == 404
    # without --strict-model-name any name is accepted, as SGLang does; responses name the served model
    resp = client.chat.completions.create(model="gpt-4o", messages=ASK, max_tokens=2)
    assert resp.model == path


def test_stream_delta_keys_match_message_keys(client):
    kw = dict(model="m", messages=ASK, max_tokens=4, temperature=0)
    url = str(client.base_url) + "chat/completions"
    message = requests.post(url, json=kw, timeout=120).json()["choices"][0]["message"]
    r = requests.post(url, json={**kw, "stream": True}, timeout=120)
    chunks = [c for c in sse_data(r) if c["choices"]]
    assert len(chunks) >= 3
    for chunk in chunks:  # role chunk, content chunks and the finish chunk alike
        delta = chunk["choices"][0]["delta"]
        assert set(delta) == set(message) == {"role", "content", "reasoning_content", "tool_calls"}, (delta, message)
    assert chunks[1]["choices"][0]["delta"]["reasoning_content"] is None
    assert chunks[1]["choices"][0]["delta"]["tool_calls"] is None


# ---- leniency ----------------------------------------------------------------------------


def test_lenient_fields_and_unknown_sampling_fields(server, client):
    out = generate(server, {"text": "Hi", "sampling_params": {"max_new_tokens": 3, "temperature": 0,
                                                                  "stop_token_ids": [10**9]}})
    assert out["meta_info"]["completion_tokens"] == 3  # an id outside the vocabulary never matches
    out = generate(server, {"text": "Hi", "top_logprobs_num": 3, "logprob_start_len": 0,
                            "sampling_params": {"max_new_tokens": 2}})
    assert "output_token_logprobs" not in out["meta_info"]  # ignored without return_logprob
    err = generate(server, {"text": "Hi", "sampling_params": {"max_new_tokens": 2, "top_q": 0.5}}, 400)
    assert "top_q" in err["message"]
    err = generate(server, {"input_ids": [1, 10**9], "sampling_params": {"max_new_tokens": 2}}, 400)
    assert "vocabulary" in err["message"]  # input ids are still checked
    resp = client.chat.completions.create(model="m", messages=ASK, max_tokens=2, extra_body={"stop_token_ids": [10**9]})
    assert resp.usage.completion_tokens == 2
    with pytest.raises(openai.BadRequestError, match="guided_json"):
        client.chat.completions.create(model="m", messages=ASK, max_tokens=2, extra_body={"guided_json": {}})
    # OpenAI's own extra fields are accepted
    client.chat.completions.create(model="m", messages=ASK, max_tokens=2, extra_body={"metadata": {"k": "v"}})


def test_stop_regex_streamed_and_not(server, client):
    prompt, regex = "Count: 1, 2, 3, 4,", r"\b[7-9]\b"
    sp = {"max_new_tokens": 30, "temperature": 0}
    full = generate(server, {"text": prompt, "sampling_params": sp})["text"]
    assert "7" in full  # the model counts on past 7 without the stop
    out = generate(server, {"text": prompt, "sampling_params": {**sp, "stop_regex": regex}})
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": "7"}
    assert out["text"] == full[: full.index("7")]
    r = requests.post(server.base_url + "/generate", json={"text": prompt, "stream": True,
                                                          "sampling_params": {**sp, "stop_regex": [regex, "zzz+"]}},
                      stream=True, timeout=300)
    frames = sse_data(r)
    assert all("7" not in f["text"] for f in frames)  # never streamed, even in part
    assert frames[-1]["text"] == out["text"] and frames[-1]["meta_info"]["finish_reason"]["matched"] == "7"
    kw = dict(model="m", prompt=prompt, max_tokens=30, temperature=0, extra_body={"stop_regex": regex})
    assert client.completions.create(**kw).choices[0].text == out["text"]
    streamed = "".join(c.choices[0].text for c in client.completions.create(stream=True, **kw) if c.choices)
    assert streamed == out["text"]
    err = generate(server, {"text": prompt, "sampling_params": {"stop_regex": "(unclosed"}}, 400)
    assert "stop_regex" in err["message"]


# ---- cache_salt --------------------------------------------------------------------------


def test_cache_salt_separates_tenants(server, client):
    prompt = "Tenant story number 7. " + "The quick brown fox jumps over the lazy dog. " * 12

    def cached(salt, route="generate"):
        if route == "generate":
            body = {"text": prompt, "sampling_params": {"max_new_tokens": 1}}
            if salt is not None:
                body["cache_salt"] = salt
            return generate(server, body)["meta_info"]["cached_tokens"]
        extra = {} if salt is None else {"cache_salt": salt}
        resp = client.completions.create(model="m", prompt=prompt, max_tokens=1, extra_body=extra)
        return resp.usage.prompt_tokens_details.cached_tokens

    assert cached("tenant-a") == 0
    assert cached("tenant-b") == 0  # the same prompt, another tenant: no hit
    assert cached("tenant-a") > 50  # the same tenant: a hit
    assert cached("tenant-b", "completions") > 50
    assert cached(None, "completions") == 0  # unsalted requests do not see salted entries either
    assert cached(None) > 50
    chat = lambda salt: client.chat.completions.create(  # noqa: E731
        model="m", messages=[{"role": "user", "content": prompt}], max_tokens=1,
        extra_body={"cache_salt": salt}).usage.prompt_tokens_details.cached_tokens
    assert chat("tenant-c") == 0 and chat("tenant-c") > 50


# ---- tools -------------------------------------------------------------------------------


@pytest.mark.parametrize("tool_choice", ["required", {"type": "function", "function": {"name": "get_weather"}}])
def test_defs_tools_under_required_and_named(client, tool_choice):
    kw = dict(model="m", messages=ASK, tools=DEFS_TOOLS, tool_choice=tool_choice, temperature=0, max_tokens=60)
    with ThreadPoolExecutor(2) as pool:
        plain = pool.submit(client.chat.completions.create, **kw)
        chunks = pool.submit(lambda: list(client.chat.completions.create(stream=True, **kw)))
        resp, chunks = plain.result(), chunks.result()
    calls = resp.choices[0].message.tool_calls
    assert calls and resp.choices[0].finish_reason == "tool_calls"
    for call in calls:
        args = json.loads(call.function.arguments)
        assert args["unit"] in UNIT["enum"]
        if call.function.name == "get_weather":
            assert args["city"] in CITY["enum"]
    streamed = "".join(tc.function.arguments or "" for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or [])
    assert streamed == "".join(c.function.arguments for c in calls)


def test_conflicting_defs_are_refused(client):
    other = {"$defs": {"Unit": {"enum": ["kelvin"], "type": "string"}}, "type": "object",
             "properties": {"u": {"$ref": "#/$defs/Unit"}}}
    tools = DEFS_TOOLS + [{"type": "function", "function": {"name": "kelvin", "parameters": other}}]
    with pytest.raises(openai.BadRequestError, match=r"\$defs/Unit"):
        client.chat.completions.create(model="m", messages=ASK, tools=tools, tool_choice="required", max_tokens=8)


def test_strict_tool_under_auto(client):
    """strict: true adds the structural-tag grammar (tests/unit/test_grammar_backends.py shows it
    rejects bad arguments); the model may still answer in text, and whatever it writes parses."""
    tools = [{"type": "function", "function": {**t["function"], "strict": True}} for t in DEFS_TOOLS]
    kw = dict(model="m", messages=ASK, tools=tools, tool_choice="auto", temperature=0, max_tokens=40)
    resp = client.chat.completions.create(**kw)
    assert_well_formed(resp, list(client.chat.completions.create(stream=True, **kw)))
