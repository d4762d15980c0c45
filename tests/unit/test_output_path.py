"""The scheduler's per-step output message: columns, fixed flags once, --stream-interval,
and the msgpack round trip of the typed queues."""

from __future__ import annotations

from typing import List

from sglserve.io_struct import BatchTokenIDOut, finish_length
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.scheduler.logprobs import LogprobState
from sglserve.scheduler.output_sender import OutputSender
from sglserve.scheduler.schedule_batch import Req
from sglserve.utils.zmq_queue import decode, encode


def _req(rid: str, stream: bool = True, stop=None) -> Req:
    sp = SamplingParams(max_new_tokens=100, stop=stop)
    sp.verify()
    return Req(rid, [1, 2, 3], sp, 100, set(), stream=stream)


def _steps(sender_interval: int, n_steps: int, reqs: List[Req]) -> List[BatchTokenIDOut]:
    sent: List[BatchTokenIDOut] = []
    sender = OutputSender(sent.append, stream_interval=sender_interval)
    for step in range(n_steps):
        for r in reqs:
            r.output_ids.append(10 + step)
        if step == n_steps - 1:
            reqs[0].finished_reason = finish_length(n_steps)
        sender.send(reqs)
    return sent


def test_columns_and_fixed_flags_once():
    a, b, quiet = _req("a", stop=["END"]), _req("b"), _req("q", stream=False)
    msgs = _steps(1, 3, [a, b, quiet])
    assert [m.rids for m in msgs] == [["a", "b"], ["a", "b"], ["a", "b"]]  # non-stream: only at its end
    first = msgs[0]
    assert first.offsets == [0, 1, 2] and first.ids == [10, 10] and first.completion_tokens == [1, 1]
    assert first.first == [0, 1] and first.infos[0].stop_strs == ["END"] and first.infos[0].prompt_tokens == 3
    assert msgs[1].first == [] and msgs[1].infos == []
    assert msgs[2].finished == [0] and msgs[2].finished_reasons == [finish_length(3)]
    assert decode(encode(msgs[2])) == msgs[2]


def test_stream_interval_sends_first_every_nth_and_finish():
    r = _req("r")
    msgs = _steps(3, 8, [r])
    assert [m.completion_tokens[0] for m in msgs] == [1, 4, 7, 8]
    assert [m.new_ids(0) for m in msgs] == [[10], [11, 12, 13], [14, 15, 16], [17]]


def test_logprobs_column_only_for_requests_that_asked():
    a, b = _req("a"), _req("b")
    b.logprobs = LogprobState.create(0, -1, b.origin_input_ids)
    b.logprobs.output.append((-0.5, 10))
    sent: List[BatchTokenIDOut] = []
    for r in (a, b):
        r.output_ids.append(10)
    OutputSender(sent.append).send([a, b])
    lp = decode(encode(sent[0])).logprobs
    assert lp.index == [1] and lp.output == [[(-0.5, 10)]] and lp.input == [[]]  # no input logprobs asked: sent once, empty
