"""python -m sglserve.bench_offline_throughput: all prompts at once through the in-process Engine.

Like sglang.bench_offline_throughput. Example (W2):

    python -m sglserve.bench_offline_throughput --model-path benchmarks/configs/Llama-3.1-8B-Instruct \
        --load-format dummy --dataset-name random --num-prompts 1000 \
        --random-input-len 256 --random-output-len 256 --random-range-ratio 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time

import numpy as np

from sglserve.benchmark import datasets
from sglserve.benchmark.tokenizer import load_tokenizer
from sglserve.engine import Engine
from sglserve.server_args import ServerArgs


def build_rows(args, tokenizer, vocab_size: int):
    rng = np.random.default_rng(args.seed)
    if args.dataset_name == "random":
        return datasets.sample_random_requests(args.random_input_len, args.random_output_len, args.num_prompts,
                                               args.random_range_ratio, rng, tokenizer, vocab_size, return_text=False)
    if args.dataset_name == "sharegpt":
        if tokenizer is None:
            raise SystemExit("--dataset-name sharegpt needs a tokenizer (--tokenizer-path)")
        return datasets.sample_sharegpt_requests(args.dataset_path or datasets.default_sharegpt_path(),
                                                 args.num_prompts, tokenizer, seed=args.seed)
    return datasets.sample_generated_shared_prefix_requests(
        args.gsp_num_groups, args.gsp_prompts_per_group, args.gsp_system_prompt_len, args.gsp_question_len,
        args.gsp_output_len, rng, tokenizer, vocab_size, return_text=False)


def install_gpu_timer(engine: Engine) -> list:
    """Wraps the model runner's forward with CUDA events; returns the (mode, start, end) list."""
    import torch

    runner, events = engine.scheduler.model_runner, []
    forward = runner.forward

    def timed(fb):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = forward(fb)
        end.record()
        events.append(("decode" if fb.forward_mode.is_decode() else "extend", start, end))
        return out

    runner.forward = timed
    return events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ServerArgs.add_cli_args(parser)
    parser.add_argument("--dataset-name", choices=["random", "sharegpt", "generated-shared-prefix"], default="random")
    parser.add_argument("--dataset-path", default=None)
    parser.add_argument("--num-prompts", type=int, default=1000)
    parser.add_argument("--random-input-len", type=int, default=256)
    parser.add_argument("--random-output-len", type=int, default=256)
    parser.add_argument("--random-range-ratio", type=float, default=1.0)
    parser.add_argument("--gsp-num-groups", type=int, default=64)
    parser.add_argument("--gsp-prompts-per-group", type=int, default=16)
    parser.add_argument("--gsp-system-prompt-len", type=int, default=2048)
    parser.add_argument("--gsp-question-len", type=int, default=128)
    parser.add_argument("--gsp-output-len", type=int, default=256)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--disable-ignore-eos", action="store_true")
    parser.add_argument("--warmup-prompts", type=int, default=16)
    parser.add_argument("--result-file", default=None, help="append one JSON line")
    parser.add_argument("--measure-gpu-busy", action="store_true",
                        help="CUDA events around every forward: report the share of wall time the GPU computed")
    args = parser.parse_args()
    # The flags as given (None = unset), so the Engine's own defaults apply to what was not set
    kwargs = {f.name: getattr(args, f.name) for f in dataclasses.fields(ServerArgs) if f.name != "model_path"}
    kwargs["skip_tokenizer_init"] = args.dataset_name != "sharegpt" or args.skip_tokenizer_init
    engine = Engine(args.model_path, **kwargs)
    vocab = engine.scheduler.model_config.vocab_size
    tokenizer = None if engine.tokenizer is None else load_tokenizer(args.tokenizer_path)
    rows = build_rows(args, tokenizer, vocab)
    ids = [r.prompt if isinstance(r.prompt, list) else tokenizer.encode(r.prompt) for r in rows]
    params = [{"temperature": 0, "max_new_tokens": r.output_len, "ignore_eos": not args.disable_ignore_eos} for r in rows]
    if args.warmup_prompts:
        engine.generate(input_ids=ids[: args.warmup_prompts], sampling_params=params[: args.warmup_prompts])
        engine.scheduler.flush_cache()
    events = install_gpu_timer(engine) if args.measure_gpu_busy else None
    t0 = time.perf_counter()
    outs = engine.generate(input_ids=ids, sampling_params=params)
    dur = time.perf_counter() - t0
    n_in = sum(o["meta_info"]["prompt_tokens"] for o in outs)
    n_out = sum(o["meta_info"]["completion_tokens"] for o in outs)
    res = {
        "backend": "sglserve-engine", "dataset_name": args.dataset_name, "num_prompts": len(rows),
        "duration_s": dur, "total_input_tokens": n_in, "total_output_tokens": n_out,
        "request_throughput": len(rows) / dur, "input_throughput": n_in / dur,
        "output_throughput": n_out / dur, "total_throughput": (n_in + n_out) / dur,
        "model_path": args.model_path, "device": engine.server_args.device,
        "attention_backend": engine.server_args.attention_backend,
        "cuda_graph": not engine.server_args.disable_cuda_graph,
        "max_total_num_tokens": engine.scheduler.max_total_num_tokens,
        "kv_cache_dtype": engine.server_args.kv_cache_dtype,
        "kv_bytes_per_token": engine.scheduler.model_runner.kv_bytes_per_token,
        "kv_cache_gb": engine.scheduler.max_total_num_tokens * engine.scheduler.model_runner.kv_bytes_per_token / 2**30,
    }
    if events is not None:
        import torch

        torch.cuda.synchronize()
        for mode in ("decode", "extend"):
            busy = sum(a.elapsed_time(b) for m, a, b in events if m == mode) / 1e3
            res[f"gpu_busy_s_{mode}"] = busy
        res["gpu_busy_fraction"] = (res["gpu_busy_s_decode"] + res["gpu_busy_s_extend"]) / dur
    logging.getLogger(__name__).info("%s", res)
    print(json.dumps(res))
    if args.result_file:
        with open(args.result_file, "a") as f:
            f.write(json.dumps(res) + "\n")
    engine.shutdown()


if __name__ == "__main__":
    main()
