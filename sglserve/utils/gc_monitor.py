"""--gc-warning-threshold-secs (SGLang's flag): log every garbage collection that takes longer.

A full collection walks every object the process tracks. With thousands of running requests
(their Req objects and lists in the scheduler; pending responses, tasks and buffers in the HTTP
process) that can hold a process's loop for tens of milliseconds, and every streaming request
then sees one long inter-token gap at the same moment: a P99 ITL made of pauses rather than of
steps. The log line says which process paused, how long, and how much it freed.
"""

from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager
from typing import Iterator, Optional

logger = logging.getLogger(__name__)


class GcMonitor:
    """A `gc.callbacks` entry that times each collection (start -> stop) against a threshold."""

    def __init__(self, threshold_s: float) -> None:
        self.threshold_s = threshold_s
        self._t0 = 0.0
        self.slow_collections = 0
        self.quiet = False  # a collection on purpose (start-up's freeze) is not a pause to report

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
            return
        took = time.perf_counter() - self._t0
        if took >= self.threshold_s and not self.quiet:
            self.slow_collections += 1
            logger.warning("GC of generation %d took %.1f ms (%d objects collected; --gc-warning-threshold-secs %.3f)",
                           info.get("generation", -1), took * 1e3, info.get("collected", 0), self.threshold_s)


def install_gc_monitor(threshold_s: float) -> Optional[GcMonitor]:
    """Start timing this process's collections (once per process); None when the threshold is 0."""
    if threshold_s <= 0:
        return None
    for cb in gc.callbacks:
        if isinstance(cb, GcMonitor):
            cb.threshold_s = threshold_s
            return cb
    monitor = GcMonitor(threshold_s)
    gc.callbacks.append(monitor)
    return monitor


@contextmanager
def collections_on_purpose() -> Iterator[None]:
    """A collection the code asks for (before `gc.freeze()`), not one to warn about."""
    monitors = [cb for cb in gc.callbacks if isinstance(cb, GcMonitor)]
    for m in monitors:
        m.quiet = True
    try:
        yield
    finally:
        for m in monitors:
            m.quiet = False
