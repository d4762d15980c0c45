"""The HTTP process's own cost, on the CPU: the real FastAPI app and TokenizerManager, driven
in-process through ASGI (no sockets, no client), fed by a stand-in backend in a child
process that answers one token per step to every request (no model, no detokenizer).

Two phases per route, so each cost is seen alone:
  burst   N requests arrive at once; the backend only collects them. Reports the time from a
          request's arrival to its receipt by the backend (tokenization + validation + send),
          the process's CPU and the event-loop thread's CPU per request, and the loop's worst
          stall (a 1 ms ticker's lateness) meanwhile.
  stream  the backend then emits --tokens steps, one token per request per step, every
          --step-ms. Reports the HTTP process's CPU per streamed SSE chunk (receive loop +
          chunk building + JSON + SSE framing + ASGI send).

    python benchmarks/bench_http_path.py --requests 500 --tokens 64
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import random
import shutil
import statistics
import time
from typing import Any, Dict, List

import orjson

N_SCHED_INFO = {"max_total_num_tokens": 1 << 20, "context_len": 8192, "vocab_size": 49152,
                "max_req_input_len": 8191, "max_running_requests": 4096}
WORDS = ("the of and to in is that for it as was with be by on not he this are or his from at which but have "
         "an they you were her she there one all we their").split()


def backend(port_args: Any, n: int, tokens: int, step_s: float, times: Any) -> None:
    """Collect n requests (their arrival times go back on `times`), then stream `tokens` steps."""
    import zmq

    from sglserve.io_struct import BatchStrOut, ReqInfo, TokenizedGenerateReqInput, finish_length
    from sglserve.utils.zmq_queue import PullQueue, PushQueue

    ctx = zmq.Context()
    recv = PullQueue(ctx, port_args.scheduler_input_ipc_name, bind=True)
    send = PushQueue(ctx, port_args.tokenizer_ipc_name)
    arrived: Dict[str, float] = {}
    prompt: Dict[str, int] = {}
    while len(arrived) < n:
        msg = recv.get()
        if isinstance(msg, TokenizedGenerateReqInput):
            arrived[msg.rid] = time.time()
            prompt[msg.rid] = len(msg.input_ids)
    times.put(arrived)
    rids = list(arrived)
    for step in range(1, tokens + 1):  # one columnar message per step, as the detokenizer sends them
        last, first = step == tokens, step == 1
        send.put(BatchStrOut(
            rids=rids, offsets=list(range(n + 1)), ids=[264] * n, completion_tokens=[step] * n, texts=[" a"] * n,
            first=list(range(n)) if first else [],
            infos=[ReqInfo(prompt_tokens=prompt[r], cached_tokens=0) for r in rids] if first else [],
            finished=list(range(n)) if last else [], finished_reasons=[finish_length(tokens)] * n if last else []))
        time.sleep(step_s)
    send.close(linger=1000)
    recv.close(0)
    ctx.term()


class AsgiCall:
    """One POST through the app, as uvicorn would make it; counts the SSE chunks that come back."""

    def __init__(self, app: Any, path: str, body: bytes) -> None:
        self.app, self.path, self.body = app, path, body
        self.status = 0
        self.chunks = 0
        self.done = asyncio.Event()

    async def run(self) -> None:
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": self.path, "raw_path": self.path.encode(), "query_string": b"",
                 "root_path": "", "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
                 "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(self.body)).encode())]}
        sent = False

        async def receive() -> Dict[str, Any]:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            await self.done.wait()
            return {"type": "http.disconnect"}

        async def send(msg: Dict[str, Any]) -> None:
            if msg["type"] == "http.response.start":
                self.status = msg["status"]
            elif msg["type"] == "http.response.body" and msg.get("body"):
                self.chunks += msg["body"].count(b"data: ")

        try:
            await self.app(scope, receive, send)
        finally:
            self.done.set()


async def ticker(lags: List[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        t = time.perf_counter()
        await asyncio.sleep(0.001)
        lags.append(time.perf_counter() - t - 0.001)


def body_of(route: str, i: int, text: str, tokens: int, chat_usage: bool = False) -> bytes:
    if route == "generate":
        return orjson.dumps({"text": text, "rid": f"r{i}", "stream": True,
                             "sampling_params": {"max_new_tokens": tokens, "ignore_eos": True}})
    body = {"model": "m", "messages": [{"role": "user", "content": text}], "rid": f"r{i}",
            "stream": True, "max_tokens": tokens, "ignore_eos": True}
    if chat_usage:  # what bench_serving's openai-chat client asks for: usage in every chunk
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    return orjson.dumps(body)


async def run_route(route: str, args: argparse.Namespace, tokenizer: Any) -> Dict[str, float]:
    from sglserve.entrypoints.http_server import create_app
    from sglserve.port_args import PortArgs
    from sglserve.server_args import ServerArgs
    from sglserve.tokenizer.tokenizer_manager import TokenizerManager

    port_args = PortArgs.create()
    times: Any = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(
        target=backend, args=(port_args, args.requests, args.tokens, args.step_ms / 1000, times), daemon=True)
    proc.start()
    server_args = ServerArgs(device="cpu", served_model_name="m")
    tm = TokenizerManager(server_args, port_args, N_SCHED_INFO, tokenizer=tokenizer)
    app = create_app(server_args, tm)
    tm.start()
    rng = random.Random(0)
    texts = [" ".join(rng.choice(WORDS) for _ in range(args.prompt_words)) for _ in range(args.requests)]
    path = "/generate" if route == "generate" else "/v1/chat/completions"
    calls = [AsgiCall(app, path, body_of(route, i, t, args.tokens, args.chat_usage)) for i, t in enumerate(texts)]
    await asyncio.sleep(0.5)  # the backend's sockets are up

    lags: List[float] = []
    stop = asyncio.Event()
    tick = asyncio.ensure_future(ticker(lags, stop))
    cpu0, loop0, t0 = time.process_time(), time.thread_time(), time.time()
    tasks = [asyncio.ensure_future(c.run()) for c in calls]
    arrived = await asyncio.get_running_loop().run_in_executor(None, times.get)
    cpu1, loop1 = time.process_time(), time.thread_time()
    burst_lags = list(lags)
    await asyncio.gather(*tasks)
    cpu2 = time.process_time()
    stop.set()
    await tick
    proc.join(10)
    shutil.rmtree(port_args.ipc_dir, ignore_errors=True)
    bad = [c.status for c in calls if c.status != 200]
    assert not bad, f"{len(bad)} requests failed: {bad[:5]}"
    waits = sorted(arrived[f"r{i}"] - t0 for i in range(args.requests))
    chunks = sum(c.chunks for c in calls)
    return {"burst_cpu_us_per_req": (cpu1 - cpu0) / args.requests * 1e6,
            "burst_loop_cpu_us_per_req": (loop1 - loop0) / args.requests * 1e6,
            "arrival_to_sched_p50_ms": statistics.median(waits) * 1e3, "arrival_to_sched_max_ms": waits[-1] * 1e3,
            "burst_loop_stall_max_ms": max(burst_lags, default=0) * 1e3,
            "stream_cpu_us_per_chunk": (cpu2 - cpu1) / chunks * 1e6, "chunks": chunks,
            "stream_loop_stall_max_ms": max(lags[len(burst_lags):], default=0) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=64, help="streamed tokens per request")
    parser.add_argument("--prompt-words", type=int, default=200, help="about 1.2 tokens per word")
    parser.add_argument("--step-ms", type=float, default=50.0, help="backend step interval (the HTTP side must keep up)")
    parser.add_argument("--routes", default="generate,chat")
    parser.add_argument("--chat-usage", action="store_true",
                        help="chat requests ask for usage in every chunk (stream_options), as bench_serving's do")
    args = parser.parse_args()

    from sglserve.server_args import default_model_path
    from sglserve.utils.hf_transformers_utils import get_tokenizer

    tokenizer = get_tokenizer(default_model_path())
    for route in args.routes.split(","):
        res = asyncio.run(run_route(route, args, tokenizer))
        print(f"{route:9s} " + "  ".join(f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in res.items()),
              flush=True)


if __name__ == "__main__":
    main()
