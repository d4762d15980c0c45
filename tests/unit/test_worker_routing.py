"""--api-server-count routing: a request's HTTP worker index reaches the scheduler's output
column, the detokenizer's split sends each worker only its requests (over real ipc sockets),
and control replies go to the worker that asked."""

from __future__ import annotations

import shutil
from typing import List

import pytest
import zmq

from sglserve.io_struct import BatchStrOut, GetLoadReqOutput, LogprobNews, finish_length, finish_stop
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.scheduler.output_sender import OutputSender
from sglserve.scheduler.schedule_batch import Req
from sglserve.port_args import PortArgs
from sglserve.utils.worker_routing import WorkerQueues, select, split_by_worker
from sglserve.utils.zmq_queue import PullQueue
from tests.unit.messages import token_ids_out


def _msg(workers):
    """Four requests: r0 (2 ids, first), r1 (1 id, finished), r2 (no ids), r3 (3 ids, logprobs)."""
    out = token_ids_out(["r0", "r1", "r2", "r3"], [[1, 2], [3], [], [4, 5, 6]],
                        [None, finish_stop("x"), None, finish_length(9)], [5, 6, 7, 8], [2, 4, 0, 9],
                        first=[True, False, False, True])
    out.logprobs = LogprobNews(index=[1, 3], output=[[(-0.5, 3)], [(-0.25, 4)]], output_top=[[], []], input=[None, None],
                               input_top=[None, None], output_ids=[[], []])
    out.http_workers = workers
    return BatchStrOut(texts=["t0", "t1", "", "t3"], **{f: getattr(out, f) for f in out.__struct_fields__})


def test_select_keeps_each_requests_columns():
    part = select(_msg([0, 1, 0, 1]), [1, 3])
    assert type(part) is BatchStrOut and part.rids == ["r1", "r3"] and part.texts == ["t1", "t3"]
    assert part.new_ids(0) == [3] and part.new_ids(1) == [4, 5, 6] and part.completion_tokens == [4, 9]
    assert part.first == [1] and part.infos[0].prompt_tokens == 8
    assert part.finish_map() == {0: finish_stop("x"), 1: finish_length(9)}
    assert part.logprobs.index == [0, 1] and part.logprobs.output == [[(-0.5, 3)], [(-0.25, 4)]]
    assert part.http_workers == [1, 1]
    assert select(_msg([0, 1, 0, 1]), [2]).logprobs is None


def test_split_by_worker():
    msg = _msg([2, 0, 2, 1])
    parts = split_by_worker(msg)
    assert sorted(parts) == [0, 1, 2]
    assert parts[2].rids == ["r0", "r2"] and parts[0].rids == ["r1"] and parts[1].rids == ["r3"]
    assert sum(len(p.ids) for p in parts.values()) == len(msg.ids)
    one = _msg(None)  # one HTTP worker: the message goes out whole
    assert split_by_worker(one) == {0: one}
    same = _msg([1, 1, 1, 1])
    assert split_by_worker(same)[1] is same


def _req(rid: str, worker: int) -> Req:
    sp = SamplingParams(max_new_tokens=100)
    sp.verify()
    req = Req(rid, [1, 2, 3], sp, 100, set(), stream=True)
    req.http_worker = worker
    return req


@pytest.mark.parametrize("route", [False, True])
def test_output_sender_names_each_rows_worker(route):
    sent: List = []
    sender = OutputSender(sent.append)
    sender.route_workers = route
    reqs = [_req("a", 1), _req("b", 0), _req("c", 2)]
    for r in reqs:
        r.output_ids.append(7)
    sender.send(reqs)
    assert sent[0].http_workers == ([1, 0, 2] if route else None)


def test_worker_queues_deliver_to_the_owner_over_ipc():
    ports = PortArgs.create(3)
    ctx = zmq.Context()
    pulls = [PullQueue(ctx, name, bind=True) for name in ports.tokenizer_ipc_names]
    push = WorkerQueues(ctx, ports.tokenizer_ipc_names)
    try:
        push.put_columns(_msg([2, 0, 2, 1]))
        got = {k: pulls[k].get().rids for k in range(3)}
        assert got == {0: ["r1"], 1: ["r3"], 2: ["r0", "r2"]}
        reply = GetLoadReqOutput(max_total_num_tokens=1, available_tokens=1, evictable_tokens=0, used_tokens=0,
                                 num_running_reqs=0, num_waiting_reqs=0, cache_hit_rate=0.0)
        push.put(reply, 1)
        assert pulls[1].get() == reply
        assert not pulls[0].poll(50) and not pulls[2].poll(50)
    finally:
        for q in pulls + push.queues:
            q.close()
        ctx.term()
        shutil.rmtree(ports.ipc_dir)
