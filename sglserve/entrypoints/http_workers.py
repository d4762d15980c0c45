"""--api-server-count N > 1: N HTTP worker processes on one port, all feeding the one scheduler.

One HTTP process accepts requests at ~1.2 ms of its CPU each (FastAPI routing, pydantic,
tokenization, ZMQ send), which caps the server's intake; N processes (vLLM's --api-server-count,
SGLang's --tokenizer-worker-num) divide that work. Each worker runs the same app with its own
TokenizerManager bound to its own ipc endpoint (PortArgs.tokenizer_ipc_names[k]); its requests
carry its index, so the detokenizer and the scheduler's control replies come back to it alone
(utils/worker_routing.py).

Sharing the port: the launcher binds N sockets with SO_REUSEPORT, one per worker, and hands
socket k to worker k when it spawns it (the fd is inherited). Why not one socket shared by all:
a listening socket's readiness wakes every worker and uvloop (libuv) accepts in a loop until
the backlog is empty, so a burst of connections would land mostly on one worker; with one socket
each, the kernel spreads the connections evenly over the workers. Why the launcher binds rather
than each worker: a port in use fails start-up at once, before any model is loaded, and the
launcher keeps no copy (it closes its own), so when the workers stop listening on shutdown new
connections are refused, as with one process. A socket starts listening only when its worker
starts serving, after every worker reported ready.

Lifetime: the workers ignore SIGINT/SIGTERM like the other children (utils/process.py) and take
their orders from the launcher over a pipe: ("start", scheduler info) -> ReadyMsg -> ("serve",);
("stop",) is a graceful uvicorn shutdown (--shutdown-grace-period); ("dead", reason) fails their
pending requests with 503 when another process died. Any child dying takes the server down.
Metrics: prometheus multiprocess mode (metrics/collector.py); /v1/responses: one SQLite store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing as mp
import os
import socket
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from typing import Any, List

from sglserve.entrypoints.http_prep import HttpSidePrep
from sglserve.io_struct import ReadyMsg
from sglserve.launch_server import (CHILD_DEATH_DRAIN_S, READY_TIMEOUT_S, Subprocesses, read_ready_msgs,
                                    start_subprocesses, uvicorn_config, wait_ready)
from sglserve.metrics.collector import MULTIPROC_ENV
from sglserve.port_args import PortArgs
from sglserve.server_args import ServerArgs
from sglserve.utils.logging_utils import configure_logger
from sglserve.utils.process import freeze_startup_objects, setup_child_process

logger = logging.getLogger(__name__)

STOP_MARGIN_S = 10.0  # beyond the grace period: uvicorn's own shutdown (lifespan, closing sockets)


def bind_sockets(host: str, port: int, n: int) -> List[socket.socket]:
    """n sockets bound to host:port with SO_REUSEPORT (not listening yet: uvicorn listens)."""
    socks: List[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            s.bind((host, port))
    except OSError as e:
        for s in socks:
            s.close()
        raise RuntimeError(f"Cannot bind the HTTP port {host}:{port}: {e}") from None
    return socks


class HttpWorkers:
    """The launcher's handle on its HTTP workers (their processes are in `subs.procs` too)."""

    def __init__(self, server_args: ServerArgs, subs: Subprocesses, socks: List[socket.socket]) -> None:
        self.names = [f"http worker {k}" for k in range(len(socks))]
        self.conns: List[Connection] = []
        self.procs = []
        ctx = mp.get_context("spawn")
        for k, sock in enumerate(socks):
            ours, theirs = ctx.Pipe(duplex=True)
            proc = ctx.Process(target=run_http_worker, args=(server_args, subs.port_args, k, sock, theirs),
                               name=f"sglserve-http-{k}", daemon=True)
            proc.start()
            theirs.close()
            sock.close()  # the worker holds its own copy: ours would keep the port open after it stops
            subs.procs[self.names[k]] = proc
            self.procs.append(proc)
            self.conns.append(ours)

    def start(self, scheduler_info: dict, timeout: float = READY_TIMEOUT_S) -> None:
        """Give every worker the scheduler's info, wait until each one built its app, then let all serve."""
        self.broadcast(("start", scheduler_info))
        read_ready_msgs(dict(zip(self.names, self.conns)), dict(zip(self.names, self.procs)), timeout)
        self.broadcast(("serve",))

    def broadcast(self, msg: tuple) -> None:
        for conn, proc in zip(self.conns, self.procs):
            if proc.is_alive():
                with contextlib.suppress(OSError):
                    conn.send(msg)

    def stop(self, timeout: float) -> None:
        """Graceful: each worker stops accepting, lets its in-flight requests finish (up to the
        grace period), and exits; the launcher then stops the scheduler and the detokenizer."""
        self.broadcast(("stop",))
        deadline = time.monotonic() + timeout
        for proc in self.procs:
            proc.join(max(deadline - time.monotonic(), 0.1))


def run_http_workers(server_args: ServerArgs) -> int:
    """The launcher with N HTTP workers: it serves nothing itself, it starts and watches."""
    n = server_args.api_server_count
    socks = bind_sockets(server_args.host, server_args.port, n)
    try:
        subs = start_subprocesses(server_args)
    except BaseException:
        for s in socks:
            s.close()
        raise
    workers = None
    grace = server_args.shutdown_grace_period
    try:
        metrics_dir = os.path.join(subs.port_args.ipc_dir, "prometheus")
        os.makedirs(metrics_dir)
        os.environ[MULTIPROC_ENV] = metrics_dir  # read by the workers' prometheus_client at import
        workers = HttpWorkers(server_args, subs, socks)
        wait_ready(subs)  # the scheduler ranks and the detokenizer
        workers.start(subs.info)
        logger.info("The server is fired up and ready to roll! http://%s:%d (%d HTTP worker processes)",
                    server_args.host, server_args.port, n)
        while True:
            wait_any([p.sentinel for p in subs.procs.values()], timeout=5.0)  # wakes when any child exits
            dead = subs.dead_child()
            if dead:
                logger.error("%s; shutting the server down.", dead)
                workers.broadcast(("dead", f"The server is shutting down: {dead}."))  # pending requests: 503
                time.sleep(CHILD_DEATH_DRAIN_S)
                workers.stop(CHILD_DEATH_DRAIN_S + STOP_MARGIN_S)
                return 1
    except KeyboardInterrupt:
        if workers is not None:
            logger.info("Received a stop signal: no new connections; the %d HTTP workers let their in-flight "
                        "requests finish (up to %g s, --shutdown-grace-period), then exit.", n, grace)
            workers.stop(grace + STOP_MARGIN_S)
        return 0
    finally:
        subs.shutdown()


# ---- the worker process --------------------------------------------------------------------


def _worker_server(config: Any) -> Any:
    """uvicorn.Server without its signal handlers: the launcher decides when a worker stops."""
    import uvicorn

    class Server(uvicorn.Server):
        def capture_signals(self):
            return contextlib.nullcontext()

    return Server(config)


def run_http_worker(server_args: ServerArgs, port_args: PortArgs, worker: int, sock: socket.socket,
                    conn: Connection) -> None:
    """Child-process entry point: prepare beside the scheduler, build the app, serve until told to stop."""
    configure_logger(server_args, prefix=f" HTTP{worker}")
    setup_child_process()
    try:
        prep = HttpSidePrep(server_args)  # web stack imports and tokenizer, while the scheduler loads
        order = conn.recv()
        if order[0] != "start":
            return
        tokenizer = prep.result(lambda: None)
        from sglserve.entrypoints.http_server import create_app
        from sglserve.tokenizer.tokenizer_manager import TokenizerManager

        tm = TokenizerManager(server_args, port_args, order[1], tokenizer=tokenizer, http_worker=worker)
        app = create_app(server_args, tm, shared_dir=port_args.ipc_dir)
        server = _worker_server(uvicorn_config(server_args, app))
    except Exception as e:
        logger.error("HTTP worker %d failed to start:\n%s", worker, traceback.format_exc())
        conn.send(ReadyMsg(who=f"http worker {worker}", error=f"{type(e).__name__}: {e}"))
        sys.exit(1)
    conn.send(ReadyMsg(who=f"http worker {worker}", info={"pid": os.getpid()}))
    if conn.recv()[0] != "serve":
        return
    freeze_startup_objects()
    with asyncio.Runner(loop_factory=server.config.get_loop_factory()) as runner:
        runner.run(_serve(server, tm, sock, conn))


async def _serve(server: Any, tm: Any, sock: socket.socket, conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    threading.Thread(target=_take_orders, args=(conn, server, tm, loop), daemon=True,
                     name="sglserve-worker-orders").start()
    await server.serve(sockets=[sock])


def _take_orders(conn: Connection, server: Any, tm: Any, loop: asyncio.AbstractEventLoop) -> None:
    while True:
        try:
            order = conn.recv()
        except (EOFError, OSError):  # the launcher is gone
            order = ("stop",)
        if order[0] == "dead":
            loop.call_soon_threadsafe(tm.set_dead, order[1])
        elif order[0] == "stop":
            logger.info("Stopping: no new connections; letting %d in-flight requests finish.", tm.num_inflight)
            server.should_exit = True
            return
