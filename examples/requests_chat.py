"""Chat and completions with plain `requests`.

Start the server first: python -m sglserve.launch_server
"""

import requests

BASE = "http://127.0.0.1:30000"
r = requests.post(f"{BASE}/v1/chat/completions", json={
    "model": "default",
    "messages": [{"role": "user", "content": "What is the capital of France?"}],
    "temperature": 0,
})
print(r.json()["choices"][0]["message"]["content"])

r = requests.post(f"{BASE}/v1/completions", json={"model": "default", "prompt": ["1, 2, 3,", "a, b, c,"],
                                                   "max_tokens": 8, "temperature": 0})
for choice in r.json()["choices"]:
    print(choice["index"], repr(choice["text"]))
