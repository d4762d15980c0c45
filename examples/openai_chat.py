"""Chat through the official openai client, plain and streaming.

Start the server first: python -m sglserve.launch_server
"""

import openai

client = openai.Client(base_url="http://127.0.0.1:30000/v1", api_key="None")
messages = [{"role": "user", "content": "What is the capital of France?"}]

resp = client.chat.completions.create(model="default", messages=messages, temperature=0, max_tokens=64)
print(resp.choices[0].message.content)
print(resp.usage)

stream = client.chat.completions.create(model="default", messages=messages, temperature=0, max_tokens=64,
                                        stream=True, stream_options={"include_usage": True})
for chunk in stream:
    if chunk.choices:
        print(chunk.choices[0].delta.content or "", end="", flush=True)
    elif chunk.usage:
        print("\n", chunk.usage)
