"""One mixed step (every running request's decode token + prefill chunks in one forward) on the
Triton backend: attention with the decoding rows split off to the decode kernel vs all rows in
the extend kernel, and the whole forward both ways; plus the first mixed step after start-up
and how many Triton kernels it compiled (0 when the start-up warm-up did its job: RESULTS.md R8).

    python benchmarks/kernels/profile_mixed.py --model-path benchmarks/configs/Llama-3.1-8B-Instruct \
        --num-decoding 1000 --decode-len 400 --prefill-tokens 2048 3096 --prefill-len 512
    TRITON_INTERPRET=1 python benchmarks/kernels/profile_mixed.py --dry   # tiny shapes on the CPU

Prints one JSON line per prefill size (tag mixed_step) and one for the first step (tag
mixed_first_step). KV slots hold whatever the pool was initialised with (dummy weights):
timings do not depend on values.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Callable, List, Optional

import torch

from sglserve.configs.model_config import ModelConfig
from sglserve.layers.attention import create_attn_backend
from sglserve.layers.radix_attention import RadixAttention
from sglserve.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglserve.model_executor.model_runner import ModelRunner
from sglserve.model_executor.warmup import warm_up_extend
from sglserve.server_args import ServerArgs

DRY = dict(num_decoding=5, decode_len=24, prefill_tokens=[20], prefill_len=12, iters=2, warmup=1,
           chunked_prefill_size=64)  # the warm-up's largest step: 64 tokens, not max_prefill_tokens, on the interpreter


def tiny_config(folder: str) -> str:
    """Two layers, 4 heads of 32 (2 KV heads), fp32: the shapes the interpreter runs in seconds."""
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 128,
           "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
           "vocab_size": 512, "max_position_embeddings": 1024, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
           "tie_word_embeddings": True, "torch_dtype": "float32"}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    return folder


def compile_log() -> Optional[List[str]]:
    """A list that gets one entry (the kernel's repr) per Triton compile or cache load from now
    on (knobs.runtime.jit_post_compile_hook, Triton >= 3.4); None where there is no such hook."""
    try:
        from triton import knobs

        runtime = knobs.runtime
        prev = runtime.jit_post_compile_hook
    except (ImportError, AttributeError):
        return None
    log: List[str] = []

    def hook(*args, **kwargs):
        log.append(str(kwargs.get("repr", "?"))[:120])
        return prev(*args, **kwargs) if prev else None

    runtime.jit_post_compile_hook = hook
    return log


def timer(device: torch.device, iters: int, warmup: int) -> Callable[[Callable[[], object]], float]:
    """Median ms of fn over iters runs after warmup runs (CUDA events on the GPU)."""

    def run(fn: Callable[[], object]) -> float:
        for _ in range(warmup):
            fn()
        times = []
        for _ in range(iters):
            if device.type == "cuda":
                e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                e0.record()
                fn()
                e1.record()
                e1.synchronize()
                times.append(e0.elapsed_time(e1))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[len(times) // 2]

    return run


class MixedStep:
    """num_decoding requests with decode_len - 1 tokens in KV decoding their next one, plus
    prefill requests of prefill_len tokens (the last one shorter) making prefill_tokens; the
    pool's rows and slots are the runner's own."""

    def __init__(self, runner: ModelRunner, num_decoding: int, decode_len: int) -> None:
        self.runner, self.k, self.decode_len = runner, num_decoding, decode_len
        self._free = ([], torch.zeros(0, dtype=torch.int64))
        self.dec_rows = runner.req_to_token_pool.alloc(num_decoding)
        slots = runner.allocator.alloc(num_decoding * decode_len)
        if self.dec_rows is None or slots is None:
            raise SystemExit("pool too small for the decoding requests: lower --num-decoding / --decode-len")
        for i, row in enumerate(self.dec_rows):
            runner.req_to_token_pool.write_row(row, 0, slots[i * decode_len:(i + 1) * decode_len])
        self.last_slots = [int(slots[(i + 1) * decode_len - 1]) for i in range(num_decoding)]

    def batch(self, prefill_tokens: int, prefill_len: int, split: bool) -> ForwardBatch:
        lens = [prefill_len] * (prefill_tokens // prefill_len) + ([prefill_tokens % prefill_len] if prefill_tokens % prefill_len else [])
        rows = self.runner.req_to_token_pool.alloc(len(lens))
        slots = self.runner.allocator.alloc(prefill_tokens)
        if rows is None or slots is None:
            raise SystemExit("pool too small for the prefill requests")
        off = 0
        for row, n in zip(rows, lens):
            self.runner.req_to_token_pool.write_row(row, 0, slots[off:off + n])
            off += n
        self._free = (rows, slots)
        # The decoding rows' new token reuses its last slot: repeated timing never grows them
        prefix = [0] * len(lens) + [self.decode_len - 1] * self.k
        seq = lens + [self.decode_len] * self.k
        out_loc = torch.cat([slots, torch.tensor(self.last_slots, dtype=torch.int64)])
        return ForwardBatch.build(ForwardMode.EXTEND, [1] * (prefill_tokens + self.k), rows + self.dec_rows, prefix,
                                  seq, out_loc, self.runner.device, num_decoding=self.k if split else 0)

    def release(self) -> None:
        """Give back the last batch's prefill rows and slots."""
        rows, slots = self._free
        self.runner.req_to_token_pool.free(rows)
        self.runner.allocator.free(slots)


def attention_ms(runner: ModelRunner, fb: ForwardBatch, run: Callable) -> float:
    """One layer's attention (K/V store included) on the batch, random q/k/v."""
    backend = runner.attn_backend
    layer = next(m for m in runner.model.modules() if isinstance(m, RadixAttention))
    n, dt = fb.num_tokens, runner.dtype
    q = torch.randn(n, layer.tp_q_head_num * layer.qk_head_dim, device=runner.device, dtype=dt)
    k = torch.randn(n, layer.tp_k_head_num * layer.qk_head_dim, device=runner.device, dtype=dt)
    v = torch.randn(n, layer.tp_v_head_num * layer.v_head_dim, device=runner.device, dtype=dt)
    fb.req_to_token_pool, fb.token_to_kv_pool, fb.attn_backend = runner.req_to_token_pool, runner.token_to_kv_pool, backend
    backend.init_forward_metadata(fb)
    with torch.inference_mode():
        return run(lambda: backend.forward(q, k, v, layer, fb))


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ServerArgs.add_cli_args(p)
    p.add_argument("--num-decoding", type=int, default=1000)
    p.add_argument("--decode-len", type=int, default=400, help="tokens of each decoding request, its new one included")
    p.add_argument("--prefill-tokens", type=int, nargs="+", default=[2048, 3096])
    p.add_argument("--prefill-len", type=int, default=512, help="tokens per prefill request (chunks of the step)")
    p.add_argument("--iters", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--dry", action="store_true", help="tiny config on the CPU (TRITON_INTERPRET=1), tiny shapes")
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--dry" in argv and "--model-path" not in argv:
        argv += ["--model-path", tiny_config(tempfile.mkdtemp(prefix="profile_mixed_")), "--device", "cpu",
                 "--load-format", "dummy", "--max-total-tokens", "4096", "--context-length", "1024"]
    args = p.parse_args(argv)
    if args.dry:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--dry runs the Triton kernels on the CPU interpreter: set TRITON_INTERPRET=1")
        for key, val in DRY.items():
            setattr(args, key, val)
    args.max_running_requests = args.max_running_requests or args.num_decoding + 64
    sa = ServerArgs.from_cli_args(args)
    runner = ModelRunner(ModelConfig.from_server_args(sa), sa)  # on CUDA with triton: warms up itself
    if runner.device.type != "cuda" or sa.attention_backend != "triton":
        # ServerArgs gives the CPU torch_native: swap the Triton backend in (the interpreter runs it)
        runner.attn_backend = create_attn_backend("triton", runner)
        warm_up_extend(runner)
    compiles = compile_log() if runner.device.type == "cuda" else None
    step = MixedStep(runner, args.num_decoding, args.decode_len)
    run = timer(runner.device, args.iters, args.warmup)
    base = dict(model=os.path.basename(os.path.normpath(sa.model_path)), device=str(runner.device),
                num_decoding=args.num_decoding, decode_len=args.decode_len, prefill_len=args.prefill_len,
                layers=runner.model_config.num_hidden_layers)

    first = step.batch(args.prefill_tokens[0], args.prefill_len, split=True)
    first_ms = timer(runner.device, 1, 0)(lambda: runner.forward(first))  # cold: any compile lands here
    print(json.dumps(dict(tag="mixed_first_step", **base, prefill_tokens=args.prefill_tokens[0],
                          forward_ms=round(first_ms, 3),
                          triton_compiles=None if compiles is None else len(compiles),
                          compiled=None if compiles is None else compiles[:8])), flush=True)
    step.release()

    for n in args.prefill_tokens:
        res = dict(tag="mixed_step", **base, prefill_tokens=n)
        for split in (True, False):
            fb = step.batch(n, args.prefill_len, split)
            name = "split" if split else "unsplit"
            res[f"attn_{name}_ms_per_layer"] = round(attention_ms(runner, fb, run), 4)
            res[f"forward_{name}_ms"] = round(run(lambda: runner.forward(fb)), 3)
            step.release()
        res["attn_speedup"] = round(res["attn_unsplit_ms_per_layer"] / max(res["attn_split_ms_per_layer"], 1e-9), 2)
        res["forward_speedup"] = round(res["forward_unsplit_ms"] / max(res["forward_split_ms"], 1e-9), 2)
        if compiles is not None:
            res["triton_compiles_total"] = len(compiles)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
