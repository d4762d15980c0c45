"""Overlap scheduling: launch decode step N+1 on the GPU before reading step N's tokens.

Steady decode needs nothing from the host to build the next step: its input ids are the
tokens just sampled, still on the device (the rows of the requests that have not finished:
finishes do not break the overlap). So the scheduler launches step N+1 with those
ids, then waits only for N's (small, asynchronous) copy of sampled ids and processes them
while the GPU runs N+1: host work hides behind device work. A request that finished at
step N has one wasted token in N+1, discarded when N+1 is resolved; its KV slot from N+1
is counted in its kv_len and freed with it.

Only plain requests overlap: per-step state that depends on the previous token (grammar
masks, penalties, min_tokens, logprobs, seeded sampling) forces a sync first.
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
        if len(rows) == len(self.next_ids):
            return self.next_ids
        index = torch.from_numpy(np.array(rows, dtype=np.int64))
        return self.next_ids[to_device_async(index, self.next_ids.device)]

    def host_token_ids(self) -> List[int]:
        if self.next_ids is None:
            return []
        if self.copy_done is None:
            return self.next_ids.tolist()
        self.copy_done.synchronize()  # waits for this step only, not for work queued after it
        return self.host_ids.tolist()


def overlap_safe(req: "Req") -> bool:
    return req.plain and req.to_abort is None and req.min_new_tokens <= len(req.output_ids)


def same_reqs(a: List["Req"], b: List["Req"]) -> bool:
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def carried_rows(running: List["Req"], launched: List["Req"]) -> Optional[List[int]]:
    """Rows of `launched` whose requests still run, when `running` is exactly `launched` less
    the requests that finished since (the steady state: a few finish every step); else None.

    The next decode step can then start from those rows of the in-flight ids, so a finish
    does not cost a sync. An empty list means nothing is left to run."""
    if same_reqs(running, launched):
        return list(range(len(launched)))
    rows = [i for i, r in enumerate(launched) if r.finished_reason is None]
    if len(rows) != len(running) or any(launched[i] is not r for i, r in zip(rows, running)):
        return None
    return rows
