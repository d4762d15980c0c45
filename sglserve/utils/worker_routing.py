"""Messages back to the HTTP processes (--api-server-count N): each goes to the one that owns it.

A request carries the index of its HTTP worker (`TokenizedGenerateReqInput.http_worker`); the
scheduler copies it into the per-step output message as the column `http_workers`, and the
detokenizer splits each BatchStrOut into one message per worker (`split_by_worker`). Control
requests (FlushCacheReq, GetLoadReq) carry it too, and the scheduler sends the reply to that
worker only. With one worker the column is None and a message goes out whole, as before.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, TypeVar

import zmq

from sglserve.io_struct import BatchStrOut, Columns, LogprobNews, Message
from sglserve.utils.zmq_queue import PushQueue

C = TypeVar("C", bound=Columns)


def select(msg: C, positions: Sequence[int]) -> C:
    """The requests at `positions` (ascending) of a columns message, as a message of the same type."""
    new_pos = {p: k for k, p in enumerate(positions)}
    offsets, ids = [0], []
    for p in positions:
        ids += msg.ids[msg.offsets[p]: msg.offsets[p + 1]]
        offsets.append(len(ids))
    lp = msg.logprobs
    if lp is not None:
        keep = [k for k, p in enumerate(lp.index) if p in new_pos]
        lp = LogprobNews(index=[new_pos[lp.index[k]] for k in keep],
                         **{f: [getattr(lp, f)[k] for k in keep] for f in LogprobNews.FIELDS}) if keep else None
    first = [(new_pos[p], x) for p, x in zip(msg.first, msg.infos) if p in new_pos]
    finished = [(new_pos[p], x) for p, x in zip(msg.finished, msg.finished_reasons) if p in new_pos]
    extra = {"texts": [msg.texts[p] for p in positions]} if isinstance(msg, BatchStrOut) else {}
    return type(msg)(
        rids=[msg.rids[p] for p in positions], offsets=offsets, ids=ids,
        completion_tokens=[msg.completion_tokens[p] for p in positions],
        first=[p for p, _ in first], infos=[x for _, x in first],
        finished=[p for p, _ in finished], finished_reasons=[x for _, x in finished], logprobs=lp,
        http_workers=None if msg.http_workers is None else [msg.http_workers[p] for p in positions], **extra)


def split_by_worker(msg: C) -> Dict[int, C]:
    """worker -> the part of `msg` it owns (the whole message when there is one worker)."""
    workers = msg.http_workers
    if workers is None:
        return {0: msg}
    first = workers[0] if workers else 0
    if all(w == first for w in workers):
        return {first: msg}
    positions: Dict[int, List[int]] = {}
    for p, w in enumerate(workers):
        positions.setdefault(w, []).append(p)
    return {w: select(msg, ps) for w, ps in positions.items()}


class WorkerQueues:
    """One PUSH queue per HTTP worker's ipc endpoint (PortArgs.tokenizer_ipc_names)."""

    def __init__(self, context: zmq.Context, addrs: List[str]) -> None:
        self.queues = [PushQueue(context, a) for a in addrs]

    def put(self, msg: Message, worker: int = 0, block: bool = True) -> None:
        """To one worker (a control reply: the worker that asked)."""
        self.queues[worker].put(msg, block)

    def put_columns(self, msg: Columns) -> None:
        """A per-step output message: each worker gets the requests it owns."""
        for worker, part in split_by_worker(msg).items():
            self.queues[worker].put(part)
