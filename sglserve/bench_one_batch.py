"""python -m sglserve.bench_one_batch: latency of one static batch (prefill, then decode), no HTTP.

Like sglang.bench_one_batch: the model runner, the paged KV pool and the sampler exactly as
the scheduler drives them, minus the queueing. Example (W1):

    python -m sglserve.bench_one_batch --model-path benchmarks/configs/Llama-3.1-8B \
        --load-format dummy --batch-size 1 --input-len 128 --output-len 512
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from typing import List

import numpy as np
import torch

from sglserve.configs.model_config import ModelConfig
from sglserve.scheduler.schedule_batch import Req, ScheduleBatch
from sglserve.mem_cache.chunk_cache import ChunkCache
from sglserve.model_executor.forward_batch import ForwardMode
from sglserve.model_executor.model_runner import ModelRunner
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.server_args import ServerArgs
from sglserve.utils.logging_utils import configure_logger


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_once(runner: ModelRunner, cache, bs: int, input_len: int, output_len: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    vocab = runner.model_config.vocab_size
    sp = SamplingParams(temperature=0, max_new_tokens=output_len, ignore_eos=True)
    sp.verify()
    reqs = [Req(f"b{i}", rng.integers(0, vocab, input_len).tolist(), sp, output_len, set()) for i in range(bs)]
    for r in reqs:
        r.init_next_round_input(cache)
    device = runner.server_args.device
    info = runner.make_sampling_info([sp] * bs, [0] * bs)

    synchronize(device)
    t0 = time.perf_counter()
    batch = ScheduleBatch(reqs, ForwardMode.EXTEND, runner.req_to_token_pool, runner.allocator, cache, device)
    out, ids = runner.forward_and_sample(batch.prepare_for_extend(), info)
    for r, t in zip(reqs, ids.tolist()):
        r.output_ids.append(t)
    synchronize(device)
    prefill = time.perf_counter() - t0

    decode_lat: List[float] = []
    overlap = not runner.server_args.disable_overlap_schedule
    prev = None  # overlap: (device ids, host copy, event) of the step whose ids are still in flight
    last_ids = ids
    for _ in range(output_len - 1):
        t1 = time.perf_counter()
        batch = ScheduleBatch(reqs, ForwardMode.DECODE, runner.req_to_token_pool, runner.allocator, cache, device)
        fb = batch.prepare_for_decode()
        if overlap:
            fb.input_ids = last_ids  # the previous step's ids, never read back before this launch
        out, last_ids = runner.forward_and_sample(fb, info)
        if overlap and device == "cuda":
            host = torch.empty(bs, dtype=last_ids.dtype, pin_memory=True)
            host.copy_(last_ids, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
            if prev is not None:
                prev[1].synchronize()
                for r, t in zip(reqs, prev[0].tolist()):
                    r.output_ids.append(t)
            prev = (host, event)
        else:
            for r, t in zip(reqs, last_ids.tolist()):  # the one host sync per step
                r.output_ids.append(t)
        decode_lat.append(time.perf_counter() - t1)
    if prev is not None:
        prev[1].synchronize()
        for r, t in zip(reqs, prev[0].tolist()):
            r.output_ids.append(t)
    total = time.perf_counter() - t0
    for r in reqs:
        cache.cache_finished_req(r, is_insert=False)
    med = float(np.median(decode_lat)) if decode_lat else float("nan")
    return {
        "batch_size": bs, "input_len": input_len, "output_len": output_len,
        "prefill_latency_s": prefill, "prefill_throughput_tok_s": bs * input_len / prefill,
        "median_decode_latency_s": med, "median_decode_throughput_tok_s": bs / med,
        "total_latency_s": total, "overall_output_throughput_tok_s": bs * output_len / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ServerArgs.add_cli_args(parser)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1])
    parser.add_argument("--input-len", type=int, nargs="+", default=[128])
    parser.add_argument("--output-len", type=int, nargs="+", default=[512])
    parser.add_argument("--warmup-output-len", type=int, default=16)
    parser.add_argument("--result-file", type=str, default=None, help="append one JSON line per run")
    args = parser.parse_args()
    server_args = ServerArgs.from_cli_args(args)
    configure_logger(server_args)
    runner = ModelRunner(ModelConfig.from_server_args(server_args), server_args)
    cache = ChunkCache(runner.req_to_token_pool, runner.allocator, server_args.page_size)
    for bs in args.batch_size:
        for il in args.input_len:
            for ol in args.output_len:
                run_once(runner, cache, bs, il, min(ol, args.warmup_output_len), seed=1)  # warm up
                res = run_once(runner, cache, bs, il, ol, seed=2)
                res.update(model_path=server_args.model_path, device=server_args.device,
                           gpu=torch.cuda.get_device_name() if server_args.device == "cuda" else "cpu",
                           attention_backend=server_args.attention_backend,
                           cuda_graph=not server_args.disable_cuda_graph, dtype=str(runner.dtype),
                           overlap=not server_args.disable_overlap_schedule)
                logging.info("Benchmark: %s", json.dumps(res))
                print(json.dumps(res))
                if args.result_file:
                    with open(args.result_file, "a") as f:
                        f.write(json.dumps(res) + "\n")


if __name__ == "__main__":
    main()
