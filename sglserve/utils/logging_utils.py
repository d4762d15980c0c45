"""One log format for every process, so lines from the three processes read as one log.

In the HTTP process each HTTP request runs with a `RequestContext` (set by
`entrypoints/middleware.RequestContextMiddleware`); every log line written while serving it
ends with `[rid=...]`, uvicorn's access line included, so a request's lines can be grepped.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
from typing import Optional


@dataclasses.dataclass
class RequestContext:
    """The request id of the HTTP request being served (mutable: the TokenizerManager may
    replace it by the rid the request really runs under, e.g. a client-given one)."""

    rid: str
    claimed: bool = False  # the TokenizerManager used `rid` as a request's id already


request_context: contextvars.ContextVar[Optional[RequestContext]] = contextvars.ContextVar(
    "sglserve_request_context", default=None
)


class RequestIdFilter(logging.Filter):
    """Appends ` [rid=...]` to records written while a request is being served."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = request_context.get()
        if ctx is not None and not getattr(record, "_sglserve_rid", False):
            record.msg = f"{record.getMessage()} [rid={ctx.rid}]"
            record.args = None
            record._sglserve_rid = True
        return True


def configure_logger(server_args, prefix: str = "") -> None:
    level = getattr(logging, server_args.log_level.upper(), logging.INFO)
    fmt = f"[%(asctime)s{prefix}] %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%Y-%m-%d %H:%M:%S", force=True)
    for handler in logging.getLogger().handlers:
        handler.addFilter(RequestIdFilter())
    # Every server process configures its logger first: the one place to start the GC monitor
    from sglserve.utils.gc_monitor import install_gc_monitor

    install_gc_monitor(getattr(server_args, "gc_warning_threshold_secs", 0.0))
