"""The W1/W2/W5 workloads run through plain transformers, as the peer our numbers are read against.

Random weights from a config folder (AutoModelForCausalLM.from_config), bf16 on CUDA.

  # W1: batch-1 decode, 128 in / 512 out, greedy, static cache, length forced
  python benchmarks/peers/hf_transformers.py one-batch --model-path benchmarks/configs/Llama-3.1-8B-Instruct \\
      --batch-size 1 --input-len 128 --output-len 512 --result-file benchmarks/results/w1_hf.jsonl
  # W2 / W5: offline throughput; transformers' continuous batching when the installed
  # version has it (init_continuous_batching / generate_batch), else padded batched generate
  python benchmarks/peers/hf_transformers.py throughput --model-path benchmarks/configs/Qwen3-0.6B \\
      --num-prompts 256 --random-input-len 1024 --random-output-len 1024 --random-range-ratio 0.0977 \\
      --result-file benchmarks/results/w5_hf.jsonl
  # CPU smoke test
  python benchmarks/peers/hf_transformers.py one-batch --model-path benchmarks/configs/Qwen3-0.6B --tiny \\
      --device cpu --input-len 8 --output-len 4

Results are appended as JSON lines with the keys of bench_one_batch / bench_offline_throughput
(see benchmarks/README.md), plus "backend": "hf_transformers".
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import statistics
import sys
import time
from typing import Any, Dict, List

import numpy as np
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
from sglserve.benchmark.datasets import sample_random_requests  # noqa: E402

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, vocab_size=512, max_position_embeddings=2048)


def load_model(args):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(args.model_path)
    if args.tiny:
        for k, v in TINY.items():
            setattr(config, k, v)
    dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[args.dtype]
    torch.manual_seed(args.seed)
    kwargs = {"attn_implementation": args.attn_implementation} if args.attn_implementation else {}
    with torch.device(args.device):  # initialise the random weights on the device itself (8B on a CPU is slow)
        model = AutoModelForCausalLM.from_config(config, dtype=dtype, **kwargs)
    model = model.eval()
    return model, config


def _greedy_config(model, max_new_tokens: int, force_len: bool):
    from transformers import GenerationConfig

    kw = dict(max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=0)
    if force_len:
        kw.update(min_new_tokens=max_new_tokens, eos_token_id=None)
    return GenerationConfig(**kw)


class _StepClock:
    """A generate() streamer that timestamps each step (put(prompt), then one put per token)."""

    def __init__(self):
        self.times: List[float] = []

    def put(self, value):
        if value.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter())

    def end(self):
        pass


def one_batch(args) -> Dict[str, Any]:
    model, config = load_model(args)
    rng = np.random.default_rng(args.seed)
    ids = torch.tensor(rng.integers(0, config.vocab_size, size=(args.batch_size, args.input_len)), device=args.device)
    mask = torch.ones_like(ids)
    gen = _greedy_config(model, args.output_len, force_len=True)
    if args.cache == "static":
        gen.cache_implementation = "static"

    def run():
        clock = _StepClock()
        start = time.perf_counter()
        out = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen,
                             streamer=clock if args.batch_size == 1 else None)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return start, time.perf_counter(), clock.times, out

    with torch.no_grad():
        for _ in range(args.warmup):  # the same shapes: any compile or graph capture happens here
            run()
        start, end, times, out = run()
    generated = out.shape[1] - args.input_len
    assert generated == args.output_len, f"generated {generated} tokens, expected {args.output_len}"
    total = end - start
    # streamer timestamps: times[0] = prompt handed over, times[1] = first token (prefill), then decode steps
    prefill = (times[1] - start) if len(times) > 1 else float("nan")
    decode = [b - a for a, b in zip(times[1:], times[2:])]
    med = statistics.median(decode) if decode else float("nan")
    return {
        "run_name": args.run_name, "backend": "hf_transformers", "model": os.path.basename(args.model_path.rstrip("/")),
        "batch_size": args.batch_size, "input_len": args.input_len, "output_len": args.output_len,
        "prefill_latency": prefill, "prefill_throughput": args.batch_size * args.input_len / prefill,
        "median_decode_latency": med, "median_decode_throughput": args.batch_size / med,
        "total_latency": total, "overall_throughput": args.batch_size * (args.input_len + args.output_len) / total,
        "output_throughput": args.batch_size * args.output_len / total,
        "cache_implementation": args.cache, **_env(args),
    }


def _continuous_batching(model, rows, args) -> Dict[str, Any]:
    """transformers' continuous batching manager, one request per row with its own length."""
    gen = _greedy_config(model, max(r.output_len for r in rows), force_len=False)
    gen.eos_token_id = -1  # never stop early: every request runs to its max_new_tokens
    cm = model.continuous_batching_context_manager
    params = inspect.signature(cm).parameters
    # The manager's own warmup (graph capture at the largest sizes) runs before the clock
    # starts; on the CPU it only costs time.
    kw = dict(generation_config=gen, block=True, timeout=5, warmup=args.device.startswith("cuda"))
    if not args.device.startswith("cuda"):
        # The manager sizes its cache from "free device memory": on a CPU that is the host's RAM
        # (a 64-prompt smoke run took 14 GB). Give it what the workload needs instead.
        try:
            from transformers.generation.configuration_utils import ContinuousBatchingConfig

            page = ContinuousBatchingConfig().page_size or 256
            blocks = sum(-(-(len(r.prompt) + r.output_len) // page) for r in rows) + 2
            kw["continuous_batching_config"] = ContinuousBatchingConfig(num_blocks=blocks)
        except (ImportError, TypeError):
            pass
    kw = {k: v for k, v in kw.items() if k in params}
    try:
        from transformers.generation.continuous_batching import ContinuousBatchingManager

        per_request_len = "max_new_tokens" in inspect.signature(ContinuousBatchingManager.add_request).parameters
    except ImportError:
        per_request_len = False  # every request then runs to the longest output length
    results = {}
    with cm(**kw) as manager:
        start = time.perf_counter()
        for i, r in enumerate(rows):
            if per_request_len:
                manager.add_request(r.prompt, request_id=f"r{i}", max_new_tokens=r.output_len)
            else:
                manager.add_request(r.prompt, request_id=f"r{i}")
        while len(results) < len(rows):
            res = manager.get_result(timeout=1)
            if res is not None and res.is_finished():
                results[res.request_id] = res
            elif res is None and not manager.is_running():
                break
        end = time.perf_counter()
    failed = [k for k, v in results.items() if v.error]
    out_tokens = sum(min(len(v.generated_tokens), rows[int(k[1:])].output_len) for k, v in results.items())
    return dict(method="continuous_batching", start=start, end=end, completed=len(results) - len(failed),
                output_tokens=out_tokens, per_request_len=per_request_len)


def _padded_generate(model, rows, args) -> Dict[str, Any]:
    """Fallback: left-padded batches of --max-batch-size through generate(), length forced to the batch max."""
    start = time.perf_counter()
    out_tokens = 0
    for b in range(0, len(rows), args.max_batch_size):
        batch = rows[b:b + args.max_batch_size]
        width = max(len(r.prompt) for r in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(batch):
            ids[i, width - len(r.prompt):] = torch.tensor(r.prompt)
            mask[i, width - len(r.prompt):] = 1
        n = max(r.output_len for r in batch)
        model.generate(input_ids=ids.to(args.device), attention_mask=mask.to(args.device),
                       generation_config=_greedy_config(model, n, force_len=True))
        out_tokens += sum(r.output_len for r in batch)  # useful tokens; the rest of each row is padding work
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return dict(method="padded_generate", start=start, end=time.perf_counter(), completed=len(rows),
                output_tokens=out_tokens, per_request_len=False)


def throughput(args) -> Dict[str, Any]:
    model, config = load_model(args)
    rows = sample_random_requests(args.random_input_len, args.random_output_len, args.num_prompts,
                                  args.random_range_ratio, np.random.default_rng(args.seed),
                                  vocab_size=config.vocab_size, return_text=False)
    use_cb = args.method == "continuous_batching" or (
        args.method == "auto" and hasattr(model, "continuous_batching_context_manager"))
    with torch.no_grad():
        if use_cb:
            if "warmup" not in inspect.signature(model.continuous_batching_context_manager).parameters:
                _continuous_batching(model, rows[: min(len(rows), 4)], args)  # an untimed first run instead
            r = _continuous_batching(model, rows, args)
        else:
            _padded_generate(model, rows[:1], args)
            r = _padded_generate(model, rows, args)
    dur = r["end"] - r["start"]
    total_in = sum(x.prompt_len for x in rows[: r["completed"]])
    return {
        "run_name": args.run_name, "backend": "hf_transformers", "method": r["method"],
        "per_request_output_len": r["per_request_len"], "model": os.path.basename(args.model_path.rstrip("/")),
        "dataset_name": "random", "num_prompts": len(rows), "random_input_len": args.random_input_len,
        "random_output_len": args.random_output_len, "random_range_ratio": args.random_range_ratio,
        "successful_requests": r["completed"], "total_latency": dur, "total_input_tokens": total_in,
        "total_output_tokens": r["output_tokens"], "request_throughput": r["completed"] / dur,
        "input_throughput": total_in / dur, "output_throughput": r["output_tokens"] / dur,
        "total_throughput": (total_in + r["output_tokens"]) / dur, **_env(args),
    }


def _env(args) -> Dict[str, Any]:
    import transformers

    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    return {"transformers_version": transformers.__version__, "torch_version": torch.__version__,
            "device": dev, "dtype": args.dtype, "tiny": args.tiny}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("mode", choices=["one-batch", "throughput"])
    p.add_argument("--model-path", required=True, help="A folder with config.json (weights are random).")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="Default: bfloat16 on CUDA, float32 on CPU.")
    p.add_argument("--attn-implementation", default=None, help="e.g. sdpa; default: transformers' choice.")
    p.add_argument("--tiny", action="store_true", help="Shrink the config to a 2-layer toy (CPU smoke test).")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--run-name", default="hf_transformers")
    p.add_argument("--result-file", default=None, help="Append the result as a JSON line.")
    p.add_argument("--batch-size", type=int, default=1)
    p.add_argument("--input-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=512)
    p.add_argument("--cache", default="static", choices=["static", "dynamic"])
    p.add_argument("--warmup", type=int, default=1, help="Untimed runs of the same shape first.")
    p.add_argument("--num-prompts", type=int, default=1000)
    p.add_argument("--random-input-len", type=int, default=256)
    p.add_argument("--random-output-len", type=int, default=256)
    p.add_argument("--random-range-ratio", type=float, default=1.0)
    p.add_argument("--method", default="auto", choices=["auto", "continuous_batching", "padded_generate"])
    p.add_argument("--max-batch-size", type=int, default=64, help="Batch size of the padded_generate fallback.")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.dtype is None:
        args.dtype = "bfloat16" if args.device == "cuda" else "float32"
    result = one_batch(args) if args.mode == "one-batch" else throughput(args)
    print(json.dumps(result, indent=2))
    if args.result_file:
        os.makedirs(os.path.dirname(os.path.abspath(args.result_file)), exist_ok=True)
        with open(args.result_file, "a") as f:
            f.write(json.dumps(result) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
