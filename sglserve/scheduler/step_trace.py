"""--step-trace-path: one JSON line per resolved step, for finding what stalls the streams.

Every running stream gets its token when its step is resolved and sent, so an inter-token gap
that a client sees is the time between two sends, unless something after the scheduler held
it. The trace says, per step, when it was launched, when its ids reached the host and when its
outputs were sent (perf_counter seconds, the clock bench_serving stamps its chunks with), and
what it held. benchmarks/host_path/step_gaps.py sets it beside a client's chunk times.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, List

import orjson
import torch

if TYPE_CHECKING:
    from sglserve.scheduler.overlap import LaunchedBatch
    from sglserve.scheduler.schedule_batch import ScheduleBatch

FLUSH_ROWS = 512


class StepTrace:
    def __init__(self, path: str) -> None:
        self.path = path
        self.rows: List[bytes] = []
        open(path, "ab").close()  # a path that cannot be written fails at start-up, not mid-serving

    @staticmethod
    def at_launch(batch: "ScheduleBatch", marks: dict) -> dict:
        """What the step holds, taken at launch (resolving drops the requests that finished), its
        marks (planning began and ended, batch prepared, forward enqueued, launch done) and the
        CUDA allocators' counters: a launch that waits for the device shows up as a long part."""
        n_prefill = len(batch.reqs) - batch.num_decoding if batch.forward_mode.is_extend() else 0
        ends = marks.get("layer_ends")
        row = {k: round(v, 6) for k, v in marks.items() if k != "layer_ends"}
        if ends:  # where the forward's launch spent its time: before, between and after the layers
            gaps = [b - a for a, b in zip(ends, ends[1:])]
            worst = max(range(len(gaps)), key=gaps.__getitem__) if gaps else 0
            row.update(first_layer_end=round(ends[0], 6), last_layer_end=round(ends[-1], 6),
                       max_layer_gap_ms=round(gaps[worst] * 1e3, 2) if gaps else 0.0, max_gap_layer=worst + 1)
        row.update(launched=round(time.perf_counter(), 6), mode=batch.forward_mode.name.lower(), reqs=len(batch.reqs),
                   prefill_reqs=n_prefill, prefill_tokens=sum(r.extend_input_len for r in batch.reqs[:n_prefill]))
        row.update(allocator_counters())
        return row

    def record(self, launched: "LaunchedBatch", resolve_started: float, synced_at: float, looked_ahead: bool) -> None:
        row = dict(launched.trace or {})
        row.update(resolve=round(resolve_started, 6), synced=round(synced_at, 6), sent=round(time.perf_counter(), 6),
                   looked_ahead=looked_ahead)
        self.rows.append(orjson.dumps(row))
        if len(self.rows) >= FLUSH_ROWS:
            self.flush()

    def flush(self) -> None:
        if self.rows:
            with open(self.path, "ab") as f:
                f.write(b"\n".join(self.rows) + b"\n")
            self.rows = []


def allocator_counters() -> dict:
    """Cumulative counts of the CUDA caching allocator's device mallocs, frees and retries (a
    retry frees every cached block: a device sync) and of the pinned host allocator's mallocs."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    dev = torch.cuda.memory_stats()
    out = {"cuda_mallocs": dev.get("num_device_alloc", 0), "cuda_frees": dev.get("num_device_free", 0),
           "alloc_retries": dev.get("num_alloc_retries", 0)}
    try:
        host = torch.cuda.host_memory_stats()
        out["host_mallocs"] = host.get("num_host_alloc", 0)
    except (AttributeError, RuntimeError):
        pass
    return out
