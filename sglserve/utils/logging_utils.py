"""One log format for every process, so lines from the three processes read as one log."""

from __future__ import annotations

import logging


def configure_logger(server_args, prefix: str = "") -> None:
    level = getattr(logging, server_args.log_level.upper(), logging.INFO)
    fmt = f"[%(asctime)s{prefix}] %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%Y-%m-%d %H:%M:%S", force=True)
