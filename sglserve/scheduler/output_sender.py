"""The scheduler's outbox: one message per step with the news of every request that advanced
or finished, to the detokenizer (server) or an in-process sink (Engine).

The message is columns (io_struct.Columns): the loop below appends a few ints per request
and one slice of ids into a flat list; what stays fixed (sampling flags, stop strings,
prompt and cached token counts) goes once, with a request's first message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional

from sglserve.io_struct import BatchTokenIDOut, LogprobNews, ReqInfo, finish_abort
from sglserve.scheduler import logprobs

if TYPE_CHECKING:
    from sglserve.io_struct import TokenizedGenerateReqInput
    from sglserve.scheduler.schedule_batch import Req

Sink = Callable[[BatchTokenIDOut], None]


class OutputSender:
    def __init__(self, sink: Optional[Sink] = None, stream_interval: int = 1) -> None:
        self.sink = sink  # None: nobody listens (bench_one_batch)
        self.stream_interval = stream_interval  # --stream-interval: a stream's news every N tokens
        self.route_workers = False  # --api-server-count > 1: each row names its HTTP worker (utils/worker_routing.py)

    def send(self, reqs: List["Req"]) -> None:
        """Streamed requests' new tokens (on the first, then every stream_interval-th), and
        every finished request's end."""
        rids: List[str] = []
        offsets = [0]
        ids: List[int] = []
        completion: List[int] = []
        out = BatchTokenIDOut(rids=rids, offsets=offsets, ids=ids, completion_tokens=completion)
        workers = out.http_workers = [] if self.route_workers else None
        interval = self.stream_interval
        lp_news = None
        for req in reqs:
            output_ids = req.output_ids
            n, sent = len(output_ids), req.sent_len
            if req.finished_reason is not None:
                out.finished.append(len(rids))
                out.finished_reasons.append(req.finished_reason)
            elif not req.stream or (n - sent < interval and (sent > 0 or n == 0)):
                continue
            if sent == 0:
                out.first.append(len(rids))
                out.infos.append(_info(req))
            if req.logprobs is not None:
                lp_news = lp_news or LogprobNews(index=[], output=[], output_top=[], input=[], input_top=[])
                _add_logprobs(lp_news, len(rids), req)
            rids.append(req.rid)
            if workers is not None:
                workers.append(req.http_worker)
            ids += output_ids[sent:]
            offsets.append(len(ids))
            completion.append(n)
            req.sent_len = n
        out.logprobs = lp_news
        if rids and self.sink is not None:
            self.sink(out)

    def send_admission_failure(self, recv: "TokenizedGenerateReqInput", message: str) -> None:
        """A request that failed before it became a Req (an internal error while admitting it)."""
        if self.sink is not None:
            self.sink(BatchTokenIDOut(
                rids=[recv.rid], offsets=[0, 0], ids=[], completion_tokens=[0],
                first=[0], infos=[ReqInfo(prompt_tokens=len(recv.input_ids), cached_tokens=0)],
                finished=[0], finished_reasons=[finish_abort(message, status_code=500)],
                http_workers=[recv.http_worker] if self.route_workers else None,
            ))


def _info(req: "Req") -> ReqInfo:
    sp = req.sampling_params
    return ReqInfo(prompt_tokens=len(req.origin_input_ids), cached_tokens=req.cached_tokens,
                   skip_special_tokens=sp.skip_special_tokens,
                   spaces_between_special_tokens=sp.spaces_between_special_tokens,
                   no_stop_trim=sp.no_stop_trim, stop_strs=list(sp.stop_strs),
                   stop_regex=list(sp.stop_regex_strs))


def _add_logprobs(news: LogprobNews, pos: int, req: "Req") -> None:
    out, out_top, inp, inp_top, out_ids = logprobs.take_new(req)
    news.index.append(pos)
    news.output_ids.append(out_ids)
    news.output.append(out)
    news.output_top.append(out_top)
    news.input.append(inp)
    news.input_top.append(inp_top)
