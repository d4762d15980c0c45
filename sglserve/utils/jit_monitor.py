"""Warn about every Triton kernel compiled after start-up.

Triton compiles one variant of a kernel per specialization it meets (an int argument equal to 1
or a multiple of 16, pointer alignment, each constexpr set). The warm-up forwards are meant to
meet them all before the first request; a variant that they miss is compiled mid-serving, which
holds the scheduler for up to a second on a fresh machine (less when Triton's disk cache has it),
and every running stream sees that as one inter-token gap. The warning names the kernel and its
specialization, so the warm-up can be taught the missing shape.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Optional

logger = logging.getLogger(__name__)


class JitMonitor:
    """Triton's jit_cache_hook / jit_post_compile_hook pair, timing each compile (or disk-cache
    load) of a variant that the process had not loaded before. Until start_serving, it only
    counts them (start-up's share of them is a phase of its own); after, each is a warning."""

    def __init__(self, serving: bool = True) -> None:
        self.serving = serving
        self.compiles = 0
        self.startup_variants = 0
        self.startup_s = 0.0
        self._started: dict = {}

    def start_serving(self) -> None:
        """Start-up is over: log what it compiled or loaded, then warn about every later variant."""
        self.serving = True
        if self.startup_variants:
            logger.info("Triton: %d kernel variants compiled or loaded from the disk cache during start-up, %.2f s",
                        self.startup_variants, self.startup_s)

    def before(self, **kw: Any) -> bool:
        self._started[_key(kw)] = time.perf_counter()
        return False  # go on and compile

    def after(self, **kw: Any) -> None:
        t0 = self._started.pop(_key(kw), None)
        took_s = time.perf_counter() - t0 if t0 is not None else 0.0
        if not self.serving:
            self.startup_variants += 1
            self.startup_s += took_s
            return
        self.compiles += 1
        logger.warning("Triton compiled %s after start-up in %.0f ms: a variant the warm-up missed (%s)",
                       _name(kw), took_s * 1e3, _specialization(kw))


def _key(kw: dict) -> str:
    return str(kw.get("repr") or kw.get("key"))


def _name(kw: dict) -> str:
    fn = kw.get("fn")
    return getattr(fn, "name", None) or str(kw.get("repr") or fn)


def _specialization(kw: dict) -> str:
    """The variant's key (argument types, which ints are 1 or multiples of 16, which pointers are
    aligned) and constexprs, as this Triton version spells them."""
    compile_info = kw.get("compile") or {}
    return f"key={kw.get('key')}, constants={compile_info.get('constants')}"[:1500]


def install_jit_monitor(serving: bool = True) -> Optional[JitMonitor]:
    """Hooks the monitor into Triton (serving=False: before the model loads, counting start-up's
    variants until start_serving); None where this Triton has no runtime hooks (before 3.4) or
    another hook is already set."""
    try:
        from triton import knobs
    except ImportError:
        return None
    runtime = getattr(knobs, "runtime", None)
    if runtime is None or not hasattr(runtime, "jit_post_compile_hook"):
        return None
    if runtime.jit_cache_hook is not None or runtime.jit_post_compile_hook is not None:
        logger.debug("Triton hooks already set; not monitoring compiles")
        return None
    monitor = JitMonitor(serving)
    runtime.jit_cache_hook = monitor.before
    runtime.jit_post_compile_hook = monitor.after
    return monitor
