"""Liveness of the other hosts of a multi-node server (--nnodes > 1), apart from the collectives.

A rank on another host that dies is usually noticed by its peers' next collective: gloo reads
the closed connection. That is not guaranteed. Rank 0 only sends in the idle loop's broadcast,
and a send into a dead peer's socket can succeed for a long time (CI saw node 0 serve on for 35 s
after node 1's rank was killed). A host that loses power or its network closes nothing at all.

So the launcher of every node but 0 adds 1 to a counter in the ranks' own TCPStore every BEAT_S.
Rank 0 serves that store at --dist-init-addr. Node 0's launcher shuts the server down when a
node's counter has not moved for DEAD_AFTER_S, or when the first beat has not come within
FIRST_BEAT_S. Counters, not timestamps: the hosts' clocks need not agree.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Callable, Dict, Optional, Tuple

logger = logging.getLogger(__name__)

BEAT_S = 1.0
DEAD_AFTER_S = 10.0
FIRST_BEAT_S = 120.0  # node 0 is ready before the others' launchers have read their ranks' ready


def heartbeat_key(node_rank: int) -> str:
    return f"sglserve/heartbeat/node{node_rank}"


def store_client(addr: str):
    """A client of the TCPStore that rank 0 serves at addr ("host:port")."""
    from torch.distributed import TCPStore  # only multi-node launchers pay this import, once ready

    host, port = addr.rsplit(":", 1)
    return TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=10), wait_for_workers=False)


class Heartbeat:
    """A node's beat (nodes 1..N-1), on a daemon thread: it stops with the launcher, and its last
    beat is then what node 0 sees stand still. The first beat is sent before the constructor
    returns, so a node that reports ready has beaten once (node 0 then allows DEAD_AFTER_S, not
    FIRST_BEAT_S)."""

    def __init__(self, addr: str, node_rank: int, beat_s: float = BEAT_S) -> None:
        self.addr, self.key, self.beat_s = addr, heartbeat_key(node_rank), beat_s
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        try:
            self.store = store_client(addr)
            self.store.add(self.key, 1)
        except Exception as e:
            logger.warning("No heartbeat to node 0 (%s): %s", addr, e)
            return
        self._thread = threading.Thread(target=self._run, name="sglserve-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.beat_s):
                self.store.add(self.key, 1)
        except Exception as e:  # node 0 gone: this node's ranks fail their next collective and stop it
            logger.warning("Heartbeat to node 0 (%s) stopped: %s", self.addr, e)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class NodeWatch:
    """Node 0's view of the others' beats; silent_node() is polled with the children's liveness."""

    def __init__(self, store, nnodes: int, dead_after_s: float = DEAD_AFTER_S,
                 first_beat_s: float = FIRST_BEAT_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store  # store_client(--dist-init-addr)
        self.dead_after_s, self.first_beat_s, self.clock = dead_after_s, first_beat_s, clock
        start = clock()
        self.seen: Dict[int, Tuple[int, float]] = {r: (0, start) for r in range(1, nnodes)}  # count, since
        self._lock = threading.Lock()  # polled from the watcher thread and the start-up path

    def silent_node(self) -> Optional[str]:
        with self._lock:
            now = self.clock()
            for node, (count, since) in self.seen.items():
                try:
                    value = int(self.store.add(heartbeat_key(node), 0))
                except Exception:  # the store lives in rank 0: its death is the child check's to report
                    return None
                if value != count:
                    self.seen[node] = (value, now)
                    continue
                limit = self.dead_after_s if count else self.first_beat_s
                if now - since > limit:
                    what = "sent no heartbeat" if count else "sent no first heartbeat"
                    return f"node {node} {what} for {now - since:.0f} s (its host or launcher stopped)"
            return None
