"""Where a decode step's time goes: host phases vs GPU time, and the top CUDA kernels.

    python benchmarks/kernels/profile_decode.py --model-path benchmarks/configs/Llama-3.1-8B-Instruct \
        --load-format dummy --context-length 4096 --batch-size 1 64 256 --input-len 256
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from sglserve.configs.model_config import ModelConfig
from sglserve.scheduler.schedule_batch import Req, ScheduleBatch
from sglserve.mem_cache.chunk_cache import ChunkCache
from sglserve.model_executor.forward_batch import ForwardMode
from sglserve.model_executor.model_runner import ModelRunner
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.server_args import ServerArgs


def profile_bs(runner, cache, bs, input_len, steps, kernels_table, rows=12):
    rng = np.random.default_rng(0)
    sp = SamplingParams(temperature=0, max_new_tokens=steps + 8, ignore_eos=True)
    sp.verify()
    reqs = [Req(f"p{i}", rng.integers(0, 1000, input_len).tolist(), sp, steps + 8, set()) for i in range(bs)]
    for r in reqs:
        r.init_next_round_input(cache)
    dev = runner.device.type
    cuda = dev == "cuda"
    batch = ScheduleBatch(reqs, ForwardMode.EXTEND, runner.req_to_token_pool, runner.allocator, cache, dev)
    info = runner.make_sampling_info([sp] * bs, [0] * bs)
    _, ids = runner.forward_and_sample(batch.prepare_for_extend(), info)
    for r, t in zip(reqs, ids.tolist()):
        r.output_ids.append(t)
    phases = {"prepare": [], "sampling_info": [], "forward_launch": [], "sample_launch": [], "sync": [], "gpu_forward": []}
    for step in range(steps):
        t0 = time.perf_counter()
        b = ScheduleBatch(reqs, ForwardMode.DECODE, runner.req_to_token_pool, runner.allocator, cache, dev)
        fb = b.prepare_for_decode()
        t1 = time.perf_counter()
        info = runner.make_sampling_info([sp] * bs, [len(r.output_ids) for r in reqs])
        t2 = time.perf_counter()
        if cuda:
            e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            e0.record()
        out = runner.forward(fb)
        if cuda:
            e1.record()
        t3 = time.perf_counter()
        ids = runner.sample(out.next_token_logits, info)
        t4 = time.perf_counter()
        host = ids.tolist()
        t5 = time.perf_counter()
        for r, t in zip(reqs, host):
            r.output_ids.append(t)
        for k, v in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            phases[k].append(v * 1e3)
        phases["gpu_forward"].append(e0.elapsed_time(e1) if cuda else (t3 - t2) * 1e3)
    res = {k: float(np.median(v[2:])) for k, v in phases.items()}
    res["bs"] = bs
    res["step_ms_total"] = res["prepare"] + res["sampling_info"] + res["forward_launch"] + res["sample_launch"] + res["sync"]
    print(json.dumps(res))
    if kernels_table:
        b = ScheduleBatch(reqs, ForwardMode.DECODE, runner.req_to_token_pool, runner.allocator, cache, dev)
        fb = b.prepare_for_decode()
        saved, runner.cuda_graph_runner = runner.cuda_graph_runner, None  # eager, so kernels are visible
        activity = torch.profiler.ProfilerActivity.CUDA if cuda else torch.profiler.ProfilerActivity.CPU
        with torch.profiler.profile(activities=[activity]) as prof:
            for _ in range(3):
                runner.forward(fb)
            if cuda:
                torch.cuda.synchronize()
        runner.cuda_graph_runner = saved
        print(prof.key_averages().table(sort_by="cuda_time_total" if cuda else "cpu_time_total", row_limit=rows,
                                        max_name_column_width=60))
    for r in reqs:
        cache.cache_finished_req(r, is_insert=False)


def main():
    p = argparse.ArgumentParser()
    ServerArgs.add_cli_args(p)
    p.add_argument("--batch-size", type=int, nargs="+", default=[1, 64, 256])
    p.add_argument("--input-len", type=int, default=256)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--rows", type=int, default=12, help="kernels in the profile table")
    args = p.parse_args()
    sa = ServerArgs.from_cli_args(args)
    runner = ModelRunner(ModelConfig.from_server_args(sa), sa)
    cache = ChunkCache(runner.req_to_token_pool, runner.allocator, sa.page_size)
    for bs in args.batch_size:
        profile_bs(runner, cache, bs, args.input_len, args.steps, kernels_table=True, rows=args.rows)


if __name__ == "__main__":
    main()
