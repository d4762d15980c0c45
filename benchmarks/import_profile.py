"""One server process's start-up alone, for `python -X importtime`: what it imports, and when.

    python3 -X importtime benchmarks/import_profile.py scheduler -- <launch_server flags> 2> import_scheduler.txt
    python3 -X importtime benchmarks/import_profile.py http -- <launch_server flags> 2> import_http.txt

scheduler: what the spawned scheduler child does before its ReadyMsg (spawn re-imports the
launcher's module, then the scheduler's imports, then Scheduler(...) with its lazy imports:
transformers' config classes, the tokenizer, xgrammar, Triton, the CUDA graphs), without ZMQ.
http: what the launcher does beside it (its own imports, then HttpSidePrep: the web stack and
the tokenizer). The importtime lines go to stderr as Python writes them, the server's log lines
between them; the last line is one JSON object with the wall time of each part, in seconds.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Dict, List

from sglserve.utils.process import process_age_s


def profile(side: str, argv: List[str]) -> Dict[str, float]:
    out = {"interpreter_s": round(process_age_s(), 3)}
    t = time.perf_counter()
    import sglserve.launch_server  # noqa: F401  (the launcher; in the child: spawn's re-import of __main__)
    from sglserve.server_args import prepare_server_args
    from sglserve.utils.logging_utils import configure_logger

    out["launcher_imports_s"] = round(time.perf_counter() - t, 3)
    sa = prepare_server_args(argv)
    configure_logger(sa)
    t = time.perf_counter()
    if side == "scheduler":
        from sglserve.scheduler.scheduler import Scheduler

        out["scheduler_imports_s"] = round(time.perf_counter() - t, 3)
        t = time.perf_counter()
        Scheduler(sa, None)
        out["scheduler_init_s"] = round(time.perf_counter() - t, 3)
    else:
        from sglserve.entrypoints.http_prep import HttpSidePrep

        HttpSidePrep(sa).result(lambda: None)
        out["http_prep_s"] = round(time.perf_counter() - t, 3)
    return out


def main() -> None:
    args = sys.argv[1:]
    if not args or args[0] not in ("scheduler", "http"):
        sys.exit("usage: import_profile.py scheduler|http -- <launch_server flags>")
    side, rest = args[0], args[1:]
    rest = rest[1:] if rest[:1] == ["--"] else rest
    t0 = time.perf_counter()
    out = profile(side, rest)
    out["total_s"] = round(time.perf_counter() - t0, 3)
    print(json.dumps({"tag": f"import_profile_{side}", **out}), file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
