"""Where a scheduler rank's input comes from, under tensor parallelism (docs/architecture.md).

Rank 0 owns the ZMQ socket from the tokenizer manager: each loop it drains what arrived and
broadcasts it (msgpack bytes, the socket's own encoding) to the other ranks over the gloo CPU
group; the other ranks block in that broadcast instead of polling a socket. Every rank then
processes the same messages in the same order and takes the same scheduling decisions, so no
per-step plan has to be sent. With tp size 1 this is the plain socket drain.
"""

from __future__ import annotations

from typing import List, Optional

import zmq

from sglserve.distributed.parallel_state import broadcast_objects
from sglserve.utils.zmq_queue import PullQueue, decode, encode


class RankInput:
    def __init__(self, pull: Optional[PullQueue], tp_rank: int, tp_size: int) -> None:
        if (pull is None) != (tp_rank != 0):
            raise ValueError("rank 0, and only rank 0, reads the tokenizer manager's socket")
        self.pull = pull
        self.tp_rank, self.tp_size = tp_rank, tp_size

    def _drain(self) -> list:
        msgs = []
        while True:
            try:
                msgs.append(self.pull.get(block=False))
            except zmq.ZMQError:
                return msgs

    def recv(self) -> List:
        """This loop's messages, the same list on every rank (a collective when tp > 1)."""
        msgs = self._drain() if self.pull is not None else None
        if self.tp_size == 1:
            return msgs
        data = broadcast_objects([encode(m) for m in msgs] if msgs is not None else None)
        return msgs if msgs is not None else [decode(d) for d in data]

    def wait(self, timeout_ms: float) -> None:
        """Idle: rank 0 waits for the socket (up to timeout_ms); the others wait in the next recv."""
        if self.pull is not None:
            self.pull.poll(timeout=timeout_ms)


class DiscardQueue:
    """The outbox of a rank other than 0: rank 0 alone answers the tokenizer manager and the
    detokenizer, the others compute the same answers and drop them."""

    def put(self, msg, worker: int = 0, block: bool = True) -> None:
        del msg, worker, block
