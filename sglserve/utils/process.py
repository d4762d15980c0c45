"""Signal and lifetime set-up of the server's child processes (scheduler, detokenizer)."""

from __future__ import annotations

import ctypes
import gc
import logging
import os
import signal
import sys
import time

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def setup_child_process() -> None:
    """The launcher alone decides when its children stop: Ctrl-C (SIGINT to the process group)
    and a SIGTERM sent to the whole group (systemd, `kill -- -PGID`) are ignored here, so the
    launcher can drain in-flight requests first; it then stops the children with SIGKILL. If the
    launcher dies without doing so, Linux kills the child too (PR_SET_PDEATHSIG): no orphans."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError) as e:  # pragma: no cover - libc without prctl
            logger.warning("prctl(PR_SET_PDEATHSIG) failed: %s", e)


def process_age_s() -> float:
    """Seconds since this process was created (start-up logs: a spawned child's import time).
    On Linux from /proc/self/stat's start tick and the boot-time clock (10 ms steps; psutil's
    create_time() counts from a boot time rounded to the second)."""
    if sys.platform.startswith("linux"):
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - start_ticks / os.sysconf("SC_CLK_TCK")
    import psutil

    return time.time() - psutil.Process().create_time()


def pause_gc_for_imports() -> None:
    """No cyclic GC while a child imports torch and transformers: their ~10^6 new objects set
    off hundreds of collections, full ones among them (up to 0.2 s each on a GPU host's CPU,
    V9's start-up log; 0.6 s in all on this CPU), on the scheduler's critical path. Imports
    make almost no cyclic garbage. resume_gc_after_imports ends the pause."""
    global _gc_paused
    if gc.isenabled():
        gc.disable()
        _gc_paused = True


def resume_gc_after_imports() -> None:
    """Freeze what the imports made (no collection walks it again, as after start-up) and turn
    the GC back on; a no-op where pause_gc_for_imports did not turn it off (an in-process
    Engine leaves its caller's GC setting alone)."""
    global _gc_paused
    if _gc_paused:
        _gc_paused = False
        gc.freeze()
        gc.enable()


_gc_paused = False


def freeze_startup_objects() -> None:
    """Move everything alive after start-up (modules, the model, the tokenizer: ~10^6 objects)
    into the permanent generation: the cyclic GC then never walks them again, and a full
    collection under load costs milliseconds instead of a stall of the serving loop (SGLang
    freezes after warm-up the same way)."""
    from sglserve.utils.gc_monitor import collections_on_purpose

    with collections_on_purpose():
        gc.collect()
    gc.freeze()
