"""Overlap scheduling: launch decode step N+1 on the GPU before reading step N's tokens.

Steady decode needs nothing from the host to build the next step: its input ids are the
tokens just sampled, still on the device (the rows of the requests that have not finished:
finishes do not break the overlap). So the scheduler launches step N+1 with those
ids, then waits only for N's (small, asynchronous) copy of sampled ids and processes them
while the GPU runs N+1: host work hides behind device work. A request that finished at
step N has one wasted token in N+1, discarded when N+1 is resolved; its KV slot from N+1
is counted in its kv_len and freed with it.

The same holds for prefill and mixed steps (Scheduler.step's look-ahead): a request whose
prompt completes joins the running set at launch, and decodes in the next step from its
first token still on the device; a chunk goes into the prefix cache at launch, so the next
chunk can be planned at once. Only plain requests overlap: per-step state that depends on the
previous token (grammar masks, penalties, min_tokens, logprobs, seeded sampling, aborts)
forces a sync first.

Step N need not wait for all of N+1 to be enqueued: the scheduler resolves it between N+1's
layers once the device has finished it, and, when N+1 is a mixed step, before N+1's logits
(Scheduler._resolve_when_done): the host runs ahead until CUDA's launch queue is full, and a
mixed launch then blocked there while N's tokens, already computed, waited (RESULTS.md V13).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, List, Optional

import numpy as np
import torch

from sglserve.mem_cache.memory_pool import to_device_async

if TYPE_CHECKING:
    from sglserve.scheduler.schedule_batch import Req, ScheduleBatch


@dataclass
class LaunchedBatch:
    """A batch whose forward and sampling are enqueued; its ids may still be in flight."""

    batch: "ScheduleBatch"
    sample_rows: List[int]
    sample_reqs: List["Req"]
    next_ids: Optional[torch.Tensor]  # sampled ids on the device
    host_ids: Optional[torch.Tensor]  # pinned host copy, valid once copy_done has fired
    copy_done: Any  # torch.cuda.Event or None (CPU: already done)
    logprob_state: Any
    out: Any
    trace: Optional[dict] = None  # --step-trace-path: what the step held and when it was launched
    resolved: bool = False  # its ids were read and its outputs sent (maybe during the next launch)

    @classmethod
    def start_copy(cls, next_ids: Optional[torch.Tensor], **kw: Any) -> "LaunchedBatch":
        host, event = None, None
        if next_ids is not None and next_ids.is_cuda:
            host = torch.empty(next_ids.shape, dtype=next_ids.dtype, pin_memory=True)
            host.copy_(next_ids, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        return cls(next_ids=next_ids, host_ids=host, copy_done=event, **kw)

    def carried_ids(self, rows: List[int]) -> torch.Tensor:
        """The in-flight ids of `rows`, gathered on the device (no wait for this step)."""
        if len(rows) == len(self.next_ids) and all(i == r for i, r in enumerate(rows)):
            return self.next_ids
        index = torch.from_numpy(np.array(rows, dtype=np.int64))
        return self.next_ids[to_device_async(index, self.next_ids.device)]

    def is_done(self) -> bool:
        """The device has finished this step (its ids are on the host): resolving will not wait."""
        return self.copy_done is None or self.copy_done.query()

    def host_token_ids(self) -> List[int]:
        if self.next_ids is None:
            return []
        if self.copy_done is None:
            return self.next_ids.tolist()
        self.copy_done.synchronize()  # waits for this step only, not for work queued after it
        return self.host_ids.tolist()


def all_overlap_safe(reqs: List["Req"]) -> bool:
    """No request needs its last token on the host before the next step (one pass per step over
    every running request: inlined, without a call per request)."""
    return all(r.plain and r.to_abort is None and r.min_new_tokens <= len(r.output_ids) for r in reqs)


def same_reqs(a: List["Req"], b: List["Req"]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def carried_rows(running: List["Req"], sampled: List["Req"]) -> Optional[List[int]]:
    """For each running request, its row in the in-flight step's sampled ids; None when one
    of them was not sampled there (its last token is on the host only: sync first).

    Fast paths for steady decode: the same requests, or the same less a few finished ones."""
    if same_reqs(running, sampled):
        return list(range(len(sampled)))
    rows = [i for i, r in enumerate(sampled) if r.finished_reason is None]
    if len(rows) == len(running) and all(sampled[i] is r for i, r in zip(rows, running)):
        return rows
    pos = {id(r): i for i, r in enumerate(sampled)}
    rows = [pos.get(id(r), -1) for r in running]
    return None if -1 in rows else rows
