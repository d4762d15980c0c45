"""The scheduler's outbox: one message per step with the news of every request that advanced
or finished, to the detokenizer (server) or an in-process sink (Engine)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, List, Optional

from sglserve.io_struct import BatchTokenIDOut, finish_abort
from sglserve.scheduler import logprobs

if TYPE_CHECKING:
    from sglserve.io_struct import TokenizedGenerateReqInput
    from sglserve.scheduler.schedule_batch import Req

Sink = Callable[[BatchTokenIDOut], None]


class OutputSender:
    def __init__(self, sink: Optional[Sink] = None) -> None:
        self.sink = sink  # None: nobody listens (bench_one_batch)

    def send(self, reqs: List["Req"]) -> None:
        """Streamed requests' new tokens, and every finished request's end."""
        out = BatchTokenIDOut([], [], [], [], [], [], [], [], [])
        news = []  # per request: new logprob entries (output, output_top, input, input_top)
        for req in reqs:
            if not req.finished() and not req.stream:
                continue
            sp = req.sampling_params
            out.rids.append(req.rid)
            out.finished_reasons.append(req.finished_reason)
            out.decode_ids.append(req.output_ids[req.sent_len:])
            req.sent_len = len(req.output_ids)
            out.skip_special_tokens.append(sp.skip_special_tokens)
            out.spaces_between_special_tokens.append(sp.spaces_between_special_tokens)
            out.no_stop_trim.append(sp.no_stop_trim)
            out.prompt_tokens.append(len(req.origin_input_ids))
            out.completion_tokens.append(len(req.output_ids))
            out.cached_tokens.append(req.cached_tokens)
            out.stop_strs.append(list(sp.stop_strs))
            news.append(logprobs.take_new(req))
        if any(n[0] is not None for n in news):
            out.output_token_logprobs, out.output_top_logprobs, out.input_token_logprobs, out.input_top_logprobs = (
                [list(col) for col in zip(*news)]
            )
        if out.rids and self.sink is not None:
            self.sink(out)

    def send_admission_failure(self, recv: "TokenizedGenerateReqInput", message: str) -> None:
        """A request that failed before it became a Req (an internal error while admitting it)."""
        if self.sink is not None:
            reason = finish_abort(message, status_code=500)
            self.sink(BatchTokenIDOut([recv.rid], [reason], [[]], [True], [True], [False],
                                      [len(recv.input_ids)], [0], [0], stop_strs=[[]]))
