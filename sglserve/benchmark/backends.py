"""Streaming HTTP clients for the three backends, timing every chunk with perf_counter.

- sglserve: POST /generate {"text" | "input_ids", "sampling_params", "stream": true}.
  Each `data:` line carries the cumulative text and meta_info with prompt_tokens,
  completion_tokens and cached_tokens; a chunk is content when the text grew or
  completion_tokens grew (a server without a tokenizer streams ids, not text).
- openai: POST /v1/completions with stream_options.include_usage and continuous_usage_stats
  (vLLM's and SGLang's name: usage on every chunk); the last usage gives completion_tokens,
  prompt_tokens and prompt_tokens_details.cached_tokens.
- openai-chat: POST /v1/chat/completions, the same with delta.content (reasoning_content
  counts as content for timing).

ITL is per token on every backend: a chunk that carries k new tokens (a busy server coalesces
them) adds its gap / k, k times, as SGLang's bench does for its native stream. The OpenAI routes
learn k from the per-chunk usage; a server that sends none counts one token a chunk, so its ITL is
per chunk (R12's chat ITL of 138 ms against /generate's 8.3 was partly this: per chunk vs per token).
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Dict, List, Optional, Union

import aiohttp
import orjson

from sglserve.benchmark.metrics import RequestOutput

BACKENDS = ("sglserve", "openai", "openai-chat")
# SGLang's / vLLM's names for the same protocols, accepted so their command lines work.
BACKEND_ALIASES = {"sglang": "sglserve", "sglang-native": "sglserve", "sglang-oai": "openai",
                   "sglang-oai-chat": "openai-chat", "vllm": "openai", "vllm-chat": "openai-chat"}
API_PATHS = {"sglserve": "/generate", "openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}


@dataclass
class RequestInput:
    prompt: Union[str, List[int]]
    prompt_len: int
    output_len: int
    api_url: str
    model: str = ""
    ignore_eos: bool = True
    extra_body: Dict[str, Any] = field(default_factory=dict)
    headers: Dict[str, str] = field(default_factory=dict)


def make_session() -> aiohttp.ClientSession:
    """No connection cap, long timeout, a large read buffer so long SSE lines never stall."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=6 * 3600),
        read_bufsize=10 * 1024 * 1024,
        connector=aiohttp.TCPConnector(limit=0, limit_per_host=0),
    )


async def iter_sse_data(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """Yield the payload (bytes, for orjson) of each `data:` line; comments and other SSE fields are skipped."""
    async for raw in response.content:
        line = raw.strip()
        if not line or line.startswith(b":"):
            continue
        if line.startswith(b"data:"):
            yield line[5:].strip()


class _Timer:
    """Turns content-chunk arrivals into TTFT and ITL on the output it fills in."""

    def __init__(self, out: RequestOutput):
        self.out = out
        self.last = out.start_time

    def content(self, now: float, new_tokens: Optional[int] = None) -> None:
        out = self.out
        if not out.chunk_times:
            out.ttft = now - out.start_time
        else:
            n = new_tokens if new_tokens and new_tokens > 0 else 1
            out.itl.extend([(now - self.last) / n] * n)
        out.chunk_times.append(now)
        self.last = now


def _fail(out: RequestOutput, message: str) -> RequestOutput:
    out.success, out.error = False, message
    return out


def _read_usage(out: RequestOutput, usage: Optional[dict]) -> Optional[int]:
    if not usage:
        return None
    if usage.get("prompt_tokens") is not None:
        out.prompt_tokens = int(usage["prompt_tokens"])
    details = usage.get("prompt_tokens_details") or {}
    if details.get("cached_tokens") is not None:
        out.cached_tokens = int(details["cached_tokens"])
    return usage.get("completion_tokens")


async def request_sglserve(session: aiohttp.ClientSession, inp: RequestInput) -> RequestOutput:
    key = "text" if isinstance(inp.prompt, str) else "input_ids"
    payload = {key: inp.prompt,
               "sampling_params": {"temperature": 0.0, "max_new_tokens": inp.output_len,
                                   "ignore_eos": inp.ignore_eos},
               "stream": True, **inp.extra_body}
    out = RequestOutput(prompt_len=inp.prompt_len)
    timer = _Timer(out)
    text, tokens = "", 0

    async def handle(data: dict, now: float) -> None:
        nonlocal text, tokens
        meta = data.get("meta_info") or {}
        new_text = data.get("text") or ""
        new_tokens = meta.get("completion_tokens")
        grew_tokens = new_tokens is not None and new_tokens > tokens
        if grew_tokens or len(new_text) > len(text):
            timer.content(now, (new_tokens - tokens) if grew_tokens else None)
        text = new_text if len(new_text) >= len(text) else text
        if new_tokens is not None:
            tokens = max(tokens, int(new_tokens))
        if meta.get("prompt_tokens") is not None:
            out.prompt_tokens = int(meta["prompt_tokens"])
        if meta.get("cached_tokens") is not None:
            out.cached_tokens = int(meta["cached_tokens"])

    await _stream(session, inp, payload, out, handle)
    out.generated_text = text
    out.output_len = tokens if tokens else len(out.chunk_times)
    out.output_len_reported = tokens > 0
    return out


async def request_openai(session: aiohttp.ClientSession, inp: RequestInput, chat: bool) -> RequestOutput:
    payload: Dict[str, Any] = {"model": inp.model, "temperature": 0.0, "max_tokens": inp.output_len,
                               "stream": True, "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                               "ignore_eos": inp.ignore_eos}
    if chat:
        if not isinstance(inp.prompt, str):
            raise ValueError("openai-chat needs text prompts: pass a tokenizer (--tokenizer)")
        payload["messages"] = [{"role": "user", "content": inp.prompt}]
        payload["max_completion_tokens"] = inp.output_len
    else:
        payload["prompt"] = inp.prompt
    payload.update(inp.extra_body)
    out = RequestOutput(prompt_len=inp.prompt_len)
    timer = _Timer(out)
    pieces: List[str] = []
    completion_tokens: Optional[int] = None

    async def handle(data: dict, now: float) -> None:
        nonlocal completion_tokens
        n = _read_usage(out, data.get("usage"))
        new_tokens = None if n is None or completion_tokens is None else int(n) - completion_tokens
        for choice in data.get("choices") or []:
            if chat:
                delta = choice.get("delta") or {}
                piece = (delta.get("content") or "") + (delta.get("reasoning_content") or "")
            else:
                piece = choice.get("text") or ""
            if piece:
                timer.content(now, new_tokens)
                pieces.append(piece)
        if n is not None:
            completion_tokens = int(n)

    await _stream(session, inp, payload, out, handle)
    out.generated_text = "".join(pieces)
    # Without usage, count content chunks; bench_serving re-tokenizes when it has a tokenizer.
    out.output_len = completion_tokens if completion_tokens is not None else len(out.chunk_times)
    out.output_len_reported = completion_tokens is not None
    return out


async def _stream(session, inp: RequestInput, payload: dict, out: RequestOutput, handle) -> None:
    out.start_time = time.perf_counter()
    try:
        async with session.post(inp.api_url, json=payload, headers=inp.headers) as resp:
            if resp.status != 200:
                body = (await resp.text())[:500]
                _fail(out, f"HTTP {resp.status} {resp.reason}: {body}")
                return
            async for chunk in iter_sse_data(resp):
                now = time.perf_counter()
                if chunk == b"[DONE]":
                    continue
                # orjson: /generate streams the cumulative text and ids (SGLang's default), ~370 KB of JSON
                # per 256-token request; json.loads parsed that at ~5.5 ms a request against orjson's ~1.6,
                # which kept 4 client processes busy ~70 % of a 4 s run of 2000 requests (RESULTS.md V15b)
                data = orjson.loads(chunk)
                if isinstance(data, dict) and data.get("error"):
                    _fail(out, f"server error in stream: {data['error']}")
                    return
                await handle(data, now)
        out.latency = time.perf_counter() - out.start_time
        if not out.chunk_times:
            _fail(out, "stream ended without any content chunk")
            return
        out.success = True
    except Exception:
        _fail(out, traceback.format_exc(limit=3))


async def send_request(session: aiohttp.ClientSession, backend: str, inp: RequestInput) -> RequestOutput:
    backend = BACKEND_ALIASES.get(backend, backend)
    if backend == "sglserve":
        return await request_sglserve(session, inp)
    if backend in ("openai", "openai-chat"):
        return await request_openai(session, inp, chat=backend == "openai-chat")
    raise ValueError(f"--backend={backend!r} is unknown; allowed: {list(BACKENDS) + list(BACKEND_ALIASES)}")
