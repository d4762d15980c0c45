"""The scheduler and the detokenizer in-process with the free forward: host µs per step and per request.

Only the scheduler's public entry points are used (constructor, handle_generate_request, step,
output_sender.sink, model_runner), so the lead's refactors do not break this. Phase timers wrap
a few more attributes when they exist (make_sampling_info, add_sampling_extras,
process_batch_result, output_sender.send); a missing one just folds into "schedule+prepare".
"""

from __future__ import annotations

import gc
import random
import statistics
import time
from collections import defaultdict
from typing import Any, Callable, Dict, List, Sequence

import hp_stubs

from sglserve.utils.zmq_queue import decode, encode

# CPU time of this thread, not wall time: the machine is shared, and a step descheduled by another
# process would count that wait as host work. Wall time is reported separately (wall_s).
clock = time.thread_time


def _wrap(obj: Any, name: str, acc: Dict[str, float], key: str) -> bool:
    """Accumulate the time spent in obj.name into acc[key]; False when obj has no such attribute."""
    fn = getattr(obj, name, None)
    if fn is None:
        return False

    def timed(*a, **kw):
        t0 = clock()
        try:
            return fn(*a, **kw)
        finally:
            acc[key] += clock() - t0

    setattr(obj, name, timed)
    return True


def build_scheduler(model_dir: str, tokenizer_path: str, n: int, input_len: int, max_new: int, overlap: bool,
                    **admission: Any):
    """Default admission takes all n in one prefill (the decode steps are what is timed);
    `admission` overrides it (e.g. the server's chunked_prefill_size, the step's token budget)."""
    from sglserve.scheduler.scheduler import Scheduler
    from sglserve.server_args import ServerArgs

    context = input_len + max_new + 8
    budget = max(8192, n * input_len)
    args = ServerArgs(**{
        "model_path": model_dir, "tokenizer_path": tokenizer_path, "load_format": "dummy", "device": "cpu",
        "random_seed": 0, "max_running_requests": n, "max_total_tokens": n * context + 4096, "context_length": context,
        **(admission or {"chunked_prefill_size": budget, "max_prefill_tokens": budget}),
    })
    sched = Scheduler(args, None)
    if overlap and hasattr(sched, "enable_overlap"):
        sched.enable_overlap = True  # the GPU's mode; ServerArgs turns it off on CPU
    return sched


def submit(sched: Any, n: int, input_len: int, max_new: int, table: Sequence[int]) -> None:
    from sglserve.io_struct import TokenizedGenerateReqInput
    from sglserve.sampling.sampling_params import SamplingParams

    rng = random.Random(0)
    for i in range(n):
        start = rng.randrange(len(table) - input_len)
        sp = SamplingParams(temperature=0, max_new_tokens=max_new, ignore_eos=True)
        sp.verify()
        sched.handle_generate_request(
            TokenizedGenerateReqInput(rid=f"hp-{i}", input_text=None, input_ids=list(table[start:start + input_len]),
                                      sampling_params=sp, stream=True)
        )


def _med(xs: List[float]) -> float:
    return statistics.median(xs) if xs else 0.0


class GcClock:
    """Time spent in the cyclic garbage collector: with thousands of live Reqs a full collection
    is a pause of its own (a step that costs many times the median), which medians hide."""

    def __init__(self) -> None:
        self.seconds, self.full, self._t0 = 0.0, 0, 0.0

    def __call__(self, phase: str, info: Dict[str, int]) -> None:
        if phase == "start":
            self._t0 = clock()
        else:
            self.seconds += clock() - self._t0
            self.full += info.get("generation") == 2


def measure_scheduler(sched: Any, n: int, warmup: int, steps: int) -> Dict[str, Any]:
    """Admit all n, decode `warmup` steps, then time `steps` decode steps phase by phase."""
    acc: Dict[str, float] = defaultdict(float)
    msgs: List[bytes] = []
    sizes: List[int] = []

    def sink(msg: Any) -> None:
        t0 = clock()
        msgs.append(encode(msg))
        sizes.append(len(msg.rids))
        acc["outbox_encode"] += clock() - t0

    sched.output_sender.sink = sink
    _wrap(sched.model_runner, "make_sampling_info", acc, "sampling")
    _wrap(sched, "add_sampling_extras", acc, "sampling")
    _wrap(sched, "process_batch_result", acc, "process")
    _wrap(sched.output_sender, "send", acc, "outbox")

    def one_step() -> Dict[str, float]:
        acc.clear()
        stub0 = hp_stubs.CLOCK.seconds
        t0 = clock()
        busy = sched.step()
        spent = clock() - t0
        if not busy:
            raise RuntimeError("the scheduler went idle: requests finished early (max_new_tokens too small?)")
        stub = hp_stubs.CLOCK.seconds - stub0
        host = spent - stub
        outbox = acc["outbox"] - acc["outbox_encode"]
        process = acc["process"] - acc["outbox"]
        return {"host": host, "stub": stub, "sampling": acc["sampling"], "process": process,
                "outbox_build": outbox, "outbox_encode": acc["outbox_encode"],
                "schedule_prepare": host - acc["sampling"] - acc["process"]}

    admit_host, admit_steps = 0.0, 0
    while not (sizes and sizes[-1] == n):  # every request has its first token: all are decoding
        admit_host += one_step()["host"]
        admit_steps += 1
        if admit_steps > 10 * n + 100:
            raise RuntimeError(f"admission did not finish: last message had {sizes[-1] if sizes else 0} of {n}")
    for _ in range(warmup):
        one_step()
    first_measured = len(msgs)
    gc_clock = GcClock()
    gc.callbacks.append(gc_clock)
    try:
        rows = [one_step() for _ in range(steps)]
    finally:
        gc.callbacks.remove(gc_clock)
    bad = [s for s in sizes[first_measured:] if s != n]
    if bad:
        raise RuntimeError(f"a measured step sent {bad[0]} updates, not {n}: requests finished or stalled")
    phases = {k: _med([r[k] for r in rows]) * 1e6 for k in rows[0]}
    return {
        "admission_steps": admit_steps, "admission_host_us_per_req": admit_host / n * 1e6,
        "step_us": phases, "per_req_us": {k: v / n for k, v in phases.items()},
        "max_step_host_us": max(r["host"] for r in rows) * 1e6,
        "gc_us_per_step": gc_clock.seconds / steps * 1e6, "gc_full_collections": gc_clock.full,
        "msg_bytes": _med([len(m) for m in msgs[first_measured:]]),
        "_msgs": msgs, "_first_measured": first_measured,
    }


def measure_detokenizer(tokenizer: Any, msgs: List[bytes], first_measured: int, n: int) -> Dict[str, Any]:
    """Replay the scheduler's messages through the real DetokenizerManager, as its process would:
    decode, detokenize, encode the BatchStrOut for the HTTP process. Only decode steps count."""
    from sglserve.detokenizer.detokenizer_manager import DetokenizerManager

    dm = DetokenizerManager(tokenizer)
    rows: List[Dict[str, float]] = []
    chars = 0
    for i, raw in enumerate(msgs):
        t0 = clock()
        msg = decode(raw)
        t1 = clock()
        out = dm.handle_batch_token_id_out(msg)
        t2 = clock()
        encode(out)
        t3 = clock()
        if i >= first_measured:
            rows.append({"decode": t1 - t0, "detokenize": t2 - t1, "encode": t3 - t2, "total": t3 - t0})
            chars += sum(len(t) for t in out.texts)
    phases = {k: _med([r[k] for r in rows]) * 1e6 for k in rows[0]}
    return {"step_us": phases, "per_req_us": {k: v / n for k, v in phases.items()},
            "chars_per_step": chars / max(len(rows), 1)}


def run_one(n: int, model_dir: str, tokenizer_path: str, tokenizer: Any, table: Sequence[int],
            input_len: int, warmup: int, steps: int, overlap: bool, log: Callable[[str], None] = print) -> Dict[str, Any]:
    max_new = warmup + steps + 4  # one or two extra for overlap's look-ahead step
    t0 = time.perf_counter()
    sched = build_scheduler(model_dir, tokenizer_path, n, input_len, max_new, overlap)
    hp_stubs.install_on_instance(sched.model_runner, table)
    submit(sched, n, input_len, max_new, table)
    res = measure_scheduler(sched, n, warmup, steps)
    msgs, first = res.pop("_msgs"), res.pop("_first_measured")
    res["overlap"] = bool(getattr(sched, "enable_overlap", False))
    del sched
    gc.collect()  # the scheduler holds cycles: free it before the next N so its objects do not slow later GCs
    res["detokenizer"] = measure_detokenizer(tokenizer, msgs, first, n)
    res.update(n=n, input_len=input_len, warmup=warmup, steps=steps, wall_s=time.perf_counter() - t0)
    log(f"[host_path] N={n}: scheduler {res['step_us']['host']:.0f} us/step, "
        f"detokenizer {res['detokenizer']['step_us']['total']:.0f} us/step ({res['wall_s']:.1f} s)")
    return res


def run_whole(n: int, model_dir: str, tokenizer_path: str, table: Sequence[int], input_len: int, output_len: int,
              overlap: bool, admission: Dict[str, Any]) -> Dict[str, Any]:
    """The whole life of n requests of output_len tokens, submitted at once, with the server's
    admission flags: what the scheduler process would spend on the HTTP run, minus receiving."""
    sched = build_scheduler(model_dir, tokenizer_path, n, input_len, output_len, overlap, **admission)
    hp_stubs.install_on_instance(sched.model_runner, table)
    done = [0, 0]  # finished requests, tokens sent

    def sink(msg: Any) -> None:
        encode(msg)
        done[0] += len(msg.finished)
        done[1] += len(msg.ids)

    sched.output_sender.sink = sink
    submit(sched, n, input_len, output_len, table)
    stub0, t0, steps = hp_stubs.CLOCK.seconds, clock(), 0
    while done[0] < n:
        if not sched.step():
            raise RuntimeError(f"the scheduler went idle with {done[0]} of {n} requests finished")
        steps += 1
    host = clock() - t0 - (hp_stubs.CLOCK.seconds - stub0)
    if done[1] != n * output_len:
        raise RuntimeError(f"{done[1]} tokens sent, not {n * output_len}")
    del sched
    gc.collect()
    return {"n": n, "output_len": output_len, "admission": admission, "steps": steps, "host_s": host,
            "us_per_token": host / (n * output_len) * 1e6}
