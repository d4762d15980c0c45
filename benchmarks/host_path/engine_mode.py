"""The offline Engine's workload with the free forward: host µs per prefill step and per decode step.

The R12 online stage's Engine run (SmolLM2, 2000 prompts of 256 in / 256 out, all at once, step
budget 32768, overlap on) spends most of its non-GPU time in the ~16 steps that admit ~128 new
prompts each while the running set grows to 2000. This replays that workload through the real
Engine (InputProcessor, Scheduler with overlap, in-process sink) with hp_stubs' forward and
sampler, and times each `Scheduler.step()` in thread CPU time, split by what the step launched:
a prefill (mixed) step or a decode step. With overlap a step also resolves the step before it,
as on the GPU.

  python benchmarks/host_path/run.py --engine 2000 --input-len 256 --engine-output-len 256
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from typing import Any, Dict, List, Sequence

import hp_stubs
from inproc import GcClock

clock = time.thread_time


def _summary(xs: List[float]) -> Dict[str, float]:
    if not xs:
        return {"steps": 0, "median_us": 0.0, "mean_us": 0.0, "total_ms": 0.0}
    return {"steps": len(xs), "median_us": statistics.median(xs) * 1e6, "mean_us": statistics.fmean(xs) * 1e6,
            "total_ms": sum(xs) * 1e3}


def run_engine(n: int, model_dir: str, table: Sequence[int], input_len: int, output_len: int,
               budget: int = 32768) -> Dict[str, Any]:
    """n prompts submitted at once to an Engine with the free forward and overlap on; per-step
    host time split into steps that launch a prefill (mixed) batch and the others."""
    from sglserve.engine import Engine
    from sglserve.model_executor.forward_batch import ForwardMode

    context = input_len + output_len + 8
    engine = Engine(model_dir, load_format="dummy", device="cpu", random_seed=0, skip_tokenizer_init=True,
                    chunked_prefill_size=budget, max_running_requests=n, context_length=context,
                    max_total_tokens=n * context + 4096)
    sched = engine.scheduler
    sched.enable_overlap = True  # the GPU's mode; ServerArgs turns it off on CPU
    hp_stubs.install_on_instance(sched.model_runner, table)
    width, hp_stubs.LOGITS_WIDTH = hp_stubs.LOGITS_WIDTH, 1  # plain greedy rows: nobody reads logits (hp_stubs)
    # Random ids as the benchmark's random dataset has them: no two prompts share a prefix
    rng = random.Random(0)
    ids = [[rng.randrange(10, hp_stubs.VOCAB) for _ in range(input_len)] for _ in range(n)]
    params = {"temperature": 0, "max_new_tokens": output_len, "ignore_eos": True}

    steps: Dict[str, List[float]] = {"prefill": [], "decode": []}
    step, launch, launched = sched.step, sched.batch_runner.launch, []

    def noted_launch(batch, *a, **kw):
        launched.append(batch.forward_mode)
        return launch(batch, *a, **kw)

    def timed_step() -> bool:
        launched.clear()
        stub0, t0 = hp_stubs.CLOCK.seconds, clock()
        busy = step()
        host = clock() - t0 - (hp_stubs.CLOCK.seconds - stub0)
        # a step that only resolves the last one (nothing launched) counts as decode
        steps["prefill" if ForwardMode.EXTEND in launched else "decode"].append(host)
        return busy

    sched.batch_runner.launch = noted_launch
    sched.step = timed_step
    gc.collect()
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)
    t0 = clock()
    try:
        outs = engine.generate(input_ids=ids, sampling_params=[params] * n)
    finally:
        total = clock() - t0
        gc.callbacks.remove(gc_clock)
        hp_stubs.LOGITS_WIDTH = width
    step_host = sum(sum(v) for v in steps.values())
    got = sum(o["meta_info"]["completion_tokens"] for o in outs)
    if got != n * output_len:
        raise RuntimeError(f"{got} tokens generated, not {n * output_len}")
    engine.shutdown()
    del engine, sched
    gc.collect()
    return {"n": n, "input_len": input_len, "output_len": output_len, "budget": budget,
            "prefill": _summary(steps["prefill"]), "decode": _summary(steps["decode"]), "steps_host_ms": step_host * 1e3,
            # generate() outside the steps: InputProcessor per prompt, results (stubs' time is in steps)
            "outside_steps_ms": (total - step_host) * 1e3,
            # the cyclic collector's pauses (in the steps' and the outside figures alike)
            "gc_ms": gc_clock.seconds * 1e3, "gc_full_collections": gc_clock.full}
