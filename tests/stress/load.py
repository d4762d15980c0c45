"""A loopback load generator for the stress test and the soak script.

Clients mix /v1/chat/completions, /v1/completions and /generate, streaming and not, greedy
with a few tokens (CPU-feasible), over a small set of prompts whose answers are computed one
at a time first; a given fraction disconnects at a random point (before the answer, or after
a few SSE events). Every client that stays must get exactly the reference answer.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import time
from typing import Any, Dict, List, Optional, Tuple

import aiohttp
import psutil
import requests

PROMPTS = ["What is the capital of France?", "Name a primary color.", "Say hello in Spanish.",
           "What is 2 + 2?", "Name a planet.", "Give me a fruit.", "What day comes after Monday?",
           "Name an ocean."]
KINDS = ("chat", "completions", "generate")
MAX_TOKENS = 8


@dataclasses.dataclass
class Outcome:
    kind: str
    stream: bool
    disconnect: bool
    ok: bool = False  # finished with the reference answer
    aborted: bool = False  # the client left on purpose
    error: Optional[str] = None
    latency: float = 0.0


def request_for(kind: str, prompt: str, stream: bool) -> Tuple[str, Dict[str, Any]]:
    if kind == "chat":
        return "/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": prompt}],
                                        "max_tokens": MAX_TOKENS, "temperature": 0, "stream": stream}
    if kind == "completions":
        return "/v1/completions", {"model": "m", "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0,
                                   "stream": stream}
    return "/generate", {"text": prompt, "stream": stream,
                         "sampling_params": {"max_new_tokens": MAX_TOKENS, "temperature": 0}}


def text_of(kind: str, body: Dict[str, Any]) -> str:
    if kind == "chat":
        return body["choices"][0]["message"]["content"] or ""
    if kind == "completions":
        return body["choices"][0]["text"]
    return body["text"]


def stream_text(kind: str, events: List[Dict[str, Any]]) -> str:
    if kind == "generate":
        return events[-1]["text"] if events else ""  # cumulative
    parts = []
    for e in events:
        for c in e.get("choices", []):
            parts.append(((c.get("delta") or {}).get("content") if kind == "chat" else c.get("text")) or "")
    return "".join(parts)


def reference_answers(base_url: str, headers: Optional[dict] = None) -> Dict[Tuple[str, str], str]:
    """Each (kind, prompt) answered alone, not streamed."""
    refs = {}
    for kind in KINDS:
        for prompt in PROMPTS:
            path, body = request_for(kind, prompt, False)
            r = requests.post(base_url + path, json=body, headers=headers, timeout=120)
            r.raise_for_status()
            refs[(kind, prompt)] = text_of(kind, r.json())
    return refs


async def _client(session: aiohttp.ClientSession, base_url: str, refs, rng: random.Random,
                  disconnect_frac: float) -> Outcome:
    kind, prompt, stream = rng.choice(KINDS), rng.choice(PROMPTS), rng.random() < 0.5
    out = Outcome(kind, stream, disconnect=rng.random() < disconnect_frac)
    path, body = request_for(kind, prompt, stream)
    give_up_after = rng.uniform(0.0, 2.0)  # seconds (not streaming) ...
    read_events = rng.randint(0, 3)  # ... or SSE events read before leaving
    t0 = time.perf_counter()
    try:
        async def call() -> None:
            async with session.post(base_url + path, json=body) as resp:
                if resp.status != 200:
                    out.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                    return
                if not stream:
                    got = text_of(kind, await resp.json())
                else:
                    events, done = [], False
                    async for raw in resp.content:
                        line = raw.decode().strip()
                        if not line.startswith("data: "):
                            continue
                        if line == "data: [DONE]":
                            done = True
                            break
                        event = json.loads(line[6:])
                        if "error" in event:
                            out.error = f"stream error: {event['error']}"
                            return
                        events.append(event)
                        if out.disconnect and len(events) > read_events:
                            out.aborted = True
                            return  # leaving the `async with` closes the connection mid-stream
                    if not done:
                        out.error = "stream ended without [DONE]"
                        return
                    got = stream_text(kind, events)
                want = refs[(kind, prompt)]
                out.ok = got == want
                if not out.ok:
                    out.error = f"mismatch: {got!r} != {want!r}"

        if out.disconnect and not stream:
            try:
                await asyncio.wait_for(call(), give_up_after)
            except asyncio.TimeoutError:
                out.aborted = True
        else:
            await call()
    except (aiohttp.ClientError, asyncio.TimeoutError) as e:
        out.error = f"{type(e).__name__}: {e}"
    out.latency = time.perf_counter() - t0
    return out  # a leaver that finished before it could leave counts as completed


async def run_load(base_url: str, n_clients: int, refs, disconnect_frac: float = 0.3, seed: int = 0,
                   headers: Optional[dict] = None) -> List[Outcome]:
    """n_clients at once, each one request."""
    rng = random.Random(seed)
    rngs = [random.Random(rng.random()) for _ in range(n_clients)]
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, headers=headers) as session:
        return list(await asyncio.gather(*[_client(session, base_url, refs, r, disconnect_frac) for r in rngs]))


def summarize(outcomes: List[Outcome]) -> Dict[str, Any]:
    completed = [o for o in outcomes if not o.aborted]
    lat = sorted(o.latency for o in completed if o.ok)
    pct = lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else None  # noqa: E731
    return {
        "requests": len(outcomes),
        "aborted_by_client": sum(o.aborted for o in outcomes),
        "completed_ok": sum(o.ok for o in completed),
        "failed": sum(not o.ok for o in completed),
        "errors": sorted({o.error for o in completed if not o.ok and o.error})[:5],
        "latency_p50_s": pct(0.5),
        "latency_p99_s": pct(0.99),
        "by_kind": {k: sum(o.kind == k for o in outcomes) for k in KINDS},
        "streaming": sum(o.stream for o in outcomes),
    }


def process_rss(pid: int) -> Dict[str, int]:
    """RSS (bytes) of the launcher and its children, keyed by role (the scheduler holds the model)."""
    root = psutil.Process(pid)
    out = {"http": root.memory_info().rss}
    kids = []
    for child in root.children(recursive=True):
        try:
            cmd = " ".join(child.cmdline())
            if "spawn_main" in cmd:
                kids.append((child.memory_info().rss, child.pid))
        except psutil.Error:
            continue
    for name, (rss, _) in zip(("scheduler", "detokenizer"), sorted(kids, reverse=True)):
        out[name] = rss
    return out


def kv_state(base_url: str, headers: Optional[dict] = None, timeout: float = 60.0) -> Dict[str, Any]:
    """Wait until nothing runs; report whether every KV token is free or held by the cache."""
    deadline = time.time() + timeout
    while True:
        info = requests.get(base_url + "/get_server_info", headers=headers, timeout=30).json()
        idle = info["num_running_reqs"] == 0 and info["num_waiting_reqs"] == 0
        clean = idle and info["used_tokens"] == 0 and (
            info["available_tokens"] + info["evictable_tokens"] == info["max_total_num_tokens"])
        if clean or time.time() > deadline:
            keys = ("num_running_reqs", "num_waiting_reqs", "used_tokens", "available_tokens", "evictable_tokens",
                    "max_total_num_tokens")
            return {"clean": clean, **{k: info[k] for k in keys}}
        time.sleep(0.5)


def rss_growth(before: Dict[str, int], after: Dict[str, int]) -> Dict[str, float]:
    return {k: round(after[k] / before[k] - 1.0, 4) for k in before if k in after}
