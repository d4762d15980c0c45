"""SGLang's native /generate API: one prompt, a batch, and SSE streaming of the cumulative text.

Start the server first: python -m sglserve.launch_server
"""

import json

import requests

BASE = "http://127.0.0.1:30000"
params = {"temperature": 0, "max_new_tokens": 32}

out = requests.post(f"{BASE}/generate", json={"text": "The capital of France is", "sampling_params": params}).json()
print(out["text"], out["meta_info"])

outs = requests.post(f"{BASE}/generate", json={"text": ["Hello, my name is", "The sky is"], "sampling_params": params}).json()
print([o["text"] for o in outs])

with requests.post(f"{BASE}/generate", json={"text": "The capital of France is", "sampling_params": params,
                                             "stream": True}, stream=True) as r:
    shown = ""
    for line in r.iter_lines(decode_unicode=True):
        if not line or line == "data: [DONE]":
            continue
        text = json.loads(line[len("data: "):])["text"]  # cumulative
        print(text[len(shown):], end="", flush=True)
        shown = text
print()
