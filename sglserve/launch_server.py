"""python -m sglserve.launch_server: start scheduler + detokenizer, wait until ready, serve HTTP.

Start-up runs side by side: the children are spawned first (before this process imports torch
or the web stack), and this process imports the web stack and loads its tokenizer on a thread
while they load (HttpSidePrep); only the ReadyMsgs are waited for at the end.

Any child dying takes the server down with a clear log line and a non-zero exit (pending
requests get 503 first). On SIGTERM/Ctrl-C the server stops accepting connections, lets
in-flight requests finish for up to --shutdown-grace-period seconds (then aborts them), stops
the children and removes the private ipc directory, and exits 0.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.connection import wait as wait_any
from typing import Any, Dict, List, Optional, Tuple

from sglserve.utils.optional_imports import hide_unused_optional_packages, import_transformers_without_torch

hide_unused_optional_packages()  # before transformers; spawned children run this module first too

from sglserve.distributed.node_watch import Heartbeat, NodeWatch, store_client  # noqa: E402
from sglserve.entrypoints.http_prep import HttpSidePrep  # noqa: E402
from sglserve.io_struct import ReadyMsg  # noqa: E402
from sglserve.port_args import PortArgs  # noqa: E402
from sglserve.server_args import ServerArgs, ServerArgsError, local_gpu_id, node_tp_ranks, prepare_server_args  # noqa: E402
from sglserve.utils.cuda_context import start_context_creation  # noqa: E402
from sglserve.utils.logging_utils import configure_logger  # noqa: E402
from sglserve.utils.process import freeze_startup_objects, pause_gc_for_imports  # noqa: E402

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 1800.0


@dataclass
class Subprocesses:
    """The child processes of one server and the ipc dir they share."""

    port_args: PortArgs
    procs: Dict[str, mp.Process] = field(default_factory=dict)
    readers: Dict[str, Connection] = field(default_factory=dict)  # each child's ReadyMsg comes here
    info: dict = field(default_factory=dict)
    node: Optional[Tuple[str, int, int]] = None  # (--dist-init-addr, node rank, nnodes) with --nnodes > 1
    node_watch: Optional[NodeWatch] = None  # node 0: the other hosts' heartbeats, once ready
    heartbeat: Optional[Heartbeat] = None  # nodes 1..: this host's heartbeat, once ready

    def start_node_link(self) -> None:
        """Multi-node, once this node's ranks are ready: node 0 watches the others' heartbeats, the
        others send theirs (distributed/node_watch.py)."""
        if self.node is None:
            return
        addr, node_rank, nnodes = self.node
        if node_rank == 0:
            self.node_watch = NodeWatch(store_client(addr), nnodes)
        else:
            self.heartbeat = Heartbeat(addr, node_rank)

    def shutdown(self) -> None:
        if self.heartbeat is not None:
            self.heartbeat.stop()
        # SIGKILL: the children ignore SIGTERM/SIGINT (utils/process.py) and hold nothing to flush
        for p in self.procs.values():
            if p.is_alive():
                p.kill()
        for p in self.procs.values():
            p.join(timeout=10)
        shutil.rmtree(self.port_args.ipc_dir, ignore_errors=True)

    def dead_child(self) -> Optional[str]:
        """Names the dead child that most likely caused the others' deaths, else (node 0 of several)
        a host that stopped its heartbeat, or None if all live.

        When one TP rank is killed, its peers fail their next collective and exit with code 1 within
        milliseconds, often before the watcher looks: a signal death is named before an error exit,
        and an error exit before a clean one."""
        dead = [(name, p) for name, p in self.procs.items() if not p.is_alive()]
        if not dead:
            return None if self.node_watch is None else self.node_watch.silent_node()
        name, p = min(dead, key=lambda item: death_rank(item[1].exitcode))
        return f"{name} process (pid {p.pid}) exited with code {p.exitcode}"


def death_rank(exitcode: Optional[int]) -> int:
    """0 for a signal death (negative code), 1 for an error exit, 2 for a clean exit or an unknown code."""
    if exitcode is not None and exitcode < 0:
        return 0
    return 1 if exitcode else 2


def _scheduler_main(*args) -> None:
    pause_gc_for_imports()  # resumed by Scheduler once the model config (transformers) is imported
    server_args, tp_rank = args[0], (args[3] if len(args) > 3 else 0)
    if server_args.device == "cuda":  # the device's context is made while torch imports (utils/cuda_context.py)
        start_context_creation(local_gpu_id(server_args, tp_rank))
    import_transformers_without_torch(server_args)  # before torch: transformers' torch-only imports are skipped
    # Imported in the child only: the launcher must not pay torch/transformers imports before
    # it spawns, or start-up runs them twice in a row instead of in parallel
    from sglserve.scheduler.scheduler import run_scheduler_process

    run_scheduler_process(*args)


def _detokenizer_main(*args) -> None:
    pause_gc_for_imports()  # resumed by run_detokenizer_process
    import_transformers_without_torch(args[0])  # the detokenizer never uses torch
    from sglserve.detokenizer.detokenizer_manager import run_detokenizer_process

    run_detokenizer_process(*args)


def scheduler_names(server_args: ServerArgs) -> Dict[int, str]:
    """tp rank -> process name, for this node's ranks."""
    if server_args.tp_size == 1:
        return {0: "scheduler"}
    return {r: f"scheduler TP{r}" for r in node_tp_ranks(server_args)}


def dist_init_addr(server_args: ServerArgs) -> Optional[str]:
    """Where the ranks meet: --dist-init-addr, else (one node) a free port on this host."""
    if server_args.tp_size == 1:
        return None
    if server_args.dist_init_addr:
        return server_args.dist_init_addr
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def start_subprocesses(server_args: ServerArgs) -> Subprocesses:
    """Spawn this node's scheduler ranks (and, on node 0, the detokenizer); wait_ready() waits for them."""
    port_args = PortArgs.create(server_args.api_server_count)
    subs = Subprocesses(port_args)
    ctx = mp.get_context("spawn")
    addr = dist_init_addr(server_args)
    if server_args.nnodes > 1:
        subs.node = (addr, server_args.node_rank, server_args.nnodes)
    targets = [(name, _scheduler_main, (rank, addr)) for rank, name in scheduler_names(server_args).items()]
    if server_args.node_rank == 0:
        targets.append(("detokenizer", _detokenizer_main, ()))
    try:
        for name, target, extra in targets:
            reader, writer = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=target, args=(server_args, port_args, writer, *extra),
                               name=f"sglserve-{name.replace(' ', '-')}", daemon=True)
            proc.start()
            writer.close()  # the child holds its own end: its death reads as EOF here at once
            subs.procs[name] = proc
            subs.readers[name] = reader
    except BaseException:
        subs.shutdown()
        raise
    return subs


def read_ready_msgs(readers: Dict[str, Connection], procs: Dict[str, Any], timeout: float) -> List[ReadyMsg]:
    """Each child's ReadyMsg over its pipe, in the order they come; raise with a child's error.
    A child dying while others load fails at once (a lone rank would otherwise wait for its
    peers until the collective timeout)."""
    deadline = time.monotonic() + timeout
    waiting, msgs = dict(readers), []
    while waiting:
        for reader in wait_any(list(waiting.values()), timeout=0.5):  # the first message, no poll interval
            name = next(n for n, r in waiting.items() if r is reader)
            try:
                msg: ReadyMsg = reader.recv()
            except EOFError:  # the child's end closed without a message: it died
                procs[name].join(5)
                raise RuntimeError(f"{name} process died during start-up "
                                   f"(exit code {procs[name].exitcode})") from None
            if msg.error:
                raise RuntimeError(f"{name} failed to start: {msg.error}")
            msgs.append(msg)
            del waiting[name]
        for name in waiting:
            if not procs[name].is_alive():
                raise RuntimeError(f"{name} process died during start-up (exit code {procs[name].exitcode})")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{', '.join(waiting)} not ready after {timeout:.0f} s")
    return msgs


def wait_ready(subs: Subprocesses, timeout: float = READY_TIMEOUT_S) -> None:
    """Wait for every child's ReadyMsg; the children are stopped before an error is raised."""
    try:
        for msg in read_ready_msgs(subs.readers, subs.procs, timeout):
            subs.info.update(msg.info)  # every rank reports the same sizes (they agree on them)
        subs.start_node_link()
    except BaseException:
        subs.shutdown()
        raise


def launch_subprocesses(server_args: ServerArgs) -> Subprocesses:
    """start_subprocesses + wait_ready: the children, all ready."""
    subs = start_subprocesses(server_args)
    wait_ready(subs)
    return subs


CHILD_DEATH_DRAIN_S = 2.0  # time for pending requests to get their 503 before the listener closes


def _watch_children(subs: Subprocesses, server, state: dict) -> None:
    while not state.get("stopping"):
        dead = subs.dead_child()
        if dead:
            logger.error("%s; shutting the server down.", dead)
            state["child_died"] = True
            time.sleep(CHILD_DEATH_DRAIN_S)  # the TokenizerManager's watcher fails pending requests (503)
            server.should_exit = True
            return
        time.sleep(0.5)


def _make_server(config, tokenizer_manager, grace: float):
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame) -> None:
            if not self.should_exit:
                logger.info("Received signal %d: no new connections; letting %d in-flight requests finish "
                            "(up to %g s, --shutdown-grace-period), then exiting.", sig,
                            tokenizer_manager.num_inflight, grace)
            super().handle_exit(sig, frame)

    return Server(config)


def event_loop_kind() -> str:
    """uvloop when installed (a dependency on Linux): each streamed chunk is an event-loop wake-up
    per request per step, and uvloop's are a fraction of asyncio's; else asyncio's own loop."""
    import importlib.util

    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def uvicorn_config(server_args: ServerArgs, app):
    import uvicorn

    # log_config=None: uvicorn's lines (access log too) use our format and carry [rid=...].
    # http="httptools": its C parser and plain chunk framing cost ~10 % less HTTP-process CPU per
    # streamed chat token than h11's state machine (a dependency; h11 only if it is missing)
    import importlib.util

    http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    return uvicorn.Config(app, host=server_args.host, port=server_args.port, log_config=None,
                          log_level=server_args.log_level, access_log=not server_args.disable_access_log,
                          timeout_keep_alive=5, loop=event_loop_kind(), http=http,
                          timeout_graceful_shutdown=server_args.shutdown_grace_period)


def run_server(server_args: ServerArgs) -> int:
    if server_args.api_server_count > 1:  # N HTTP processes; this one only starts and watches them
        from sglserve.entrypoints.http_workers import run_http_workers

        return run_http_workers(server_args)
    subs = start_subprocesses(server_args)  # first: the scheduler's imports and loading are the long pole
    state: dict = {}
    try:
        prep = HttpSidePrep(server_args)  # web stack imports + tokenizer, on a thread
        wait_ready(subs)  # a child's failure is reported first, as when nothing ran beside it
        tokenizer = prep.result(subs.dead_child)
        from sglserve.entrypoints.http_server import create_app
        from sglserve.tokenizer.tokenizer_manager import TokenizerManager

        tokenizer_manager = TokenizerManager(server_args, subs.port_args, subs.info, tokenizer=tokenizer)
        tokenizer_manager.watch_processes(subs.procs)  # a dead child: pending requests get 503
        app = create_app(server_args, tokenizer_manager)
        server = _make_server(uvicorn_config(server_args, app), tokenizer_manager, server_args.shutdown_grace_period)
        threading.Thread(target=_watch_children, args=(subs, server, state), daemon=True).start()
        freeze_startup_objects()
        logger.info("The server is fired up and ready to roll! http://%s:%d", server_args.host, server_args.port)
        server.run()
    finally:
        state["stopping"] = True
        subs.shutdown()
    return 1 if state.get("child_died") else 0


def run_worker_node(server_args: ServerArgs) -> int:
    """A node other than 0 (--node-rank > 0): only its scheduler ranks, no HTTP. They take their
    input from rank 0's broadcast; when one of them exits (a peer died, node 0 shut down), the
    node stops the others and exits non-zero."""
    subs = launch_subprocesses(server_args)
    logger.info("Node %d of %d: TP ranks %s ready.", server_args.node_rank, server_args.nnodes,
                node_tp_ranks(server_args))
    try:
        while True:
            dead = subs.dead_child()
            if dead:
                logger.error("%s; stopping this node.", dead)
                return 1
            time.sleep(0.5)
    finally:
        subs.shutdown()


def main(argv: Optional[List[str]] = None) -> None:
    from sglserve.utils.model_source import ModelSourceError, QuantizationError, prepare_model_source

    try:
        server_args = prepare_server_args(argv)
    except ServerArgsError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    try:  # hub ids -> local files; a quantization we cannot run is refused before any weight is read
        prepare_model_source(server_args)
    except (ModelSourceError, QuantizationError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    configure_logger(server_args)
    logger.info("Starting sglserve: model %s on %s", server_args.model_path, server_args.device)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        code = run_server(server_args) if server_args.node_rank == 0 else run_worker_node(server_args)
    except KeyboardInterrupt:
        code = 0
    except RuntimeError as e:
        logger.error("%s", e)
        code = 1
    sys.exit(code)


if __name__ == "__main__":
    main()
