"""Loaded by every Python process of a server started with this folder on PYTHONPATH. With
SGLSERVE_BENCH_FREE_FORWARD=<file of token ids (JSON list)>, the scheduler's model forward and
sampler become the free stubs of benchmarks/host_path/hp_stubs.py, so the server's host path
(HTTP, scheduler, detokenizer) is all that is left to measure. Without the variable: nothing."""

import json
import os
import sys


def _install(path: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import hp_stubs

    # SGLSERVE_BENCH_LOGITS_WIDTH=1: 1-wide logits, as engine_mode uses (hp_stubs.LOGITS_WIDTH says why)
    hp_stubs.LOGITS_WIDTH = int(os.environ.get("SGLSERVE_BENCH_LOGITS_WIDTH", hp_stubs.VOCAB))
    with open(path) as f:
        hp_stubs.install_on_class(json.load(f))


if os.environ.get("SGLSERVE_BENCH_FREE_FORWARD"):
    _install(os.environ["SGLSERVE_BENCH_FREE_FORWARD"])
