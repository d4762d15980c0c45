"""Detokenizer process: token ids from the scheduler -> text increments for the HTTP process.

Incremental detokenization (as SGLang does it): per request keep all output ids and two
offsets. `surr_offset..read_offset` is a window of already-emitted ids decoded again as
context, so the new ids' text gets its spacing right (sentencepiece drops a leading space
when a piece is decoded alone). New text = decode(ids[surr:]) minus decode(ids[surr:read]).
Text ending in U+FFFD is an incomplete UTF-8 character: it is held back (offsets not
advanced) until the next token completes it, or the request finishes.

Per step, the windows of every request in the message go to the tokenizer in one call
(batch_decode.py); a context window is decoded only when its text is not known already.

Stop strings (docs/CONTRACTS.md): while unfinished, the last (stop_str_max_len - 1)
characters are held back so a stop string is never streamed; on a finish matched by a
string the text is cut at its first occurrence (unless no_stop_trim); on a finish matched
by a token id that token is dropped before decoding. stop_regex likewise: the text from the
earliest partial match on is held back, and the finished text is cut at the first match.
"""

from __future__ import annotations

import dataclasses
import faulthandler
import logging
import os
import sys
import traceback
from typing import Any, Dict, List, Optional

import zmq

from sglserve.detokenizer.batch_decode import Key, decode_grouped, is_concatenative, make_decoder
from sglserve.sampling import stop_regex
from sglserve.io_struct import BatchStrOut, BatchTokenIDOut, LogprobNews, ReadyMsg, ReqInfo, finish_abort
from sglserve.port_args import PortArgs
from sglserve.server_args import ServerArgs
from sglserve.utils.logging_utils import configure_logger
from sglserve.utils.process import freeze_startup_objects, resume_gc_after_imports, setup_child_process
from sglserve.utils.worker_routing import WorkerQueues, select
from sglserve.utils.zmq_queue import PullQueue

logger = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"
_NO_INFO = ReqInfo(prompt_tokens=0, cached_tokens=0)  # a request seen without its first message


@dataclasses.dataclass(slots=True)
class DecodeStatus:
    """One request's detokenization state; its flags come once, from the first message."""

    key: Key  # (skip_special_tokens, spaces_between_special_tokens)
    no_stop_trim: bool
    hold: int  # characters held back while unfinished (longest stop string - 1); -1: no stop strings nor regexes
    stop_regex: List[str]  # also held back: text that could still become a match (sampling/stop_regex.py)
    decode_ids: List[int] = dataclasses.field(default_factory=list)
    surr_offset: int = 0  # start of the context window (ids already emitted)
    read_offset: int = 0  # ids before this are committed into decoded_text
    decoded_text: str = ""  # committed text (complete characters only); kept only with stop strings
    surr_text: Optional[str] = ""  # decode(ids[surr_offset:read_offset]); None: not known yet
    sent_offset: int = 0  # characters of the (trimmed) text already sent

    @classmethod
    def create(cls, info: ReqInfo) -> "DecodeStatus":
        hold = max((len(x) for x in info.stop_strs), default=0) - 1
        if info.stop_regex:
            hold = max(hold, 0)  # keep the text: the patterns are searched in it
        return cls((info.skip_special_tokens, info.spaces_between_special_tokens), info.no_stop_trim, hold,
                   list(info.stop_regex))


class DetokenizerManager:
    """Pure detokenization logic; `run_detokenizer_process` wires it to the sockets."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer  # None with --skip-tokenizer-init: ids pass through, text stays ""
        self.decode = make_decoder(tokenizer) if tokenizer is not None else None
        # Decoding concatenates at character boundaries: a committed window's text is the next context's
        self.concatenative = tokenizer is not None and is_concatenative(tokenizer)
        self.decode_status: Dict[str, DecodeStatus] = {}

    def handle_batch_token_id_out(self, recv: BatchTokenIDOut) -> BatchStrOut:
        """One message in, one out. An error with one request fails that request only (finish
        abort, 500): the batch's states are restored and its requests retried one by one."""
        saved = [self._save(rid) for rid in recv.rids]
        try:
            return self._handle(recv)
        except Exception as e:
            for rid, snap in zip(recv.rids, saved):
                self._restore(rid, snap)
            if len(recv.rids) == 1:
                logger.exception("Error detokenizing request %s; failing it", recv.rids[0])
                return self._failed(recv, e)
        return _concat([self.handle_batch_token_id_out(select(recv, [i])) for i in range(len(recv.rids))])

    def _save(self, rid: str) -> Optional[tuple]:
        s = self.decode_status.get(rid)
        return None if s is None else (s, len(s.decode_ids), s.surr_offset, s.read_offset, s.decoded_text,
                                       s.surr_text, s.sent_offset)

    def _restore(self, rid: str, snap: Optional[tuple]) -> None:
        if snap is None:
            self.decode_status.pop(rid, None)
            return
        s, n, s.surr_offset, s.read_offset, s.decoded_text, s.surr_text, s.sent_offset = snap
        del s.decode_ids[n:]
        self.decode_status[rid] = s

    def _failed(self, recv: BatchTokenIDOut, e: Exception) -> BatchStrOut:
        self.decode_status.pop(recv.rids[0], None)
        reason = finish_abort(f"Internal error while detokenizing: {type(e).__name__}: {e}", status_code=500)
        return _str_out(recv, [""], finished=[0], finished_reasons=[reason])

    def _handle(self, recv: BatchTokenIDOut) -> BatchStrOut:
        texts = [""] * len(recv.rids) if self.tokenizer is None else self._detokenize(recv)
        return _str_out(recv, texts)

    def _detokenize(self, recv: BatchTokenIDOut) -> List[str]:
        rids, offsets, ids = recv.rids, recv.offsets, recv.ids
        bs = len(rids)
        infos = dict(zip(recv.first, recv.infos)) if recv.first else {}
        reasons: List[Optional[Dict[str, Any]]] = [None] * bs
        for i, reason in zip(recv.finished, recv.finished_reasons):
            reasons[i] = reason
        status = self.decode_status
        states: List[DecodeStatus] = [None] * bs  # type: ignore[list-item]
        reads: List[List[int]] = [None] * bs  # type: ignore[list-item]
        keys: List[Key] = [None] * bs  # type: ignore[list-item]
        surrs: List[List[int]] = []  # the context windows whose text is not known yet
        surr_of: List[int] = []  # ... and their requests
        uniform = True
        for i in range(bs):
            s = status.get(rids[i])
            if s is None:
                s = status[rids[i]] = DecodeStatus.create(infos.get(i, _NO_INFO))
            states[i] = s
            dids = s.decode_ids
            dids += ids[offsets[i] : offsets[i + 1]]
            surr, read = s.surr_offset, s.read_offset
            window = dids[surr:]
            if reasons[i] is not None:
                matched = _matched(reasons[i])
                # A finish by stop token id: drop that token (it may be a special token shown
                # when skip_special_tokens=False), as SGLang does.
                if isinstance(matched, int) and not s.no_stop_trim and len(dids) > read and dids[-1] == matched:
                    window = window[:-1]
            reads[i] = window
            keys[i] = s.key
            uniform = uniform and s.key == keys[0]
            if s.surr_text is None:
                surrs.append(dids[surr:read])
                surr_of.append(i)

        texts = decode_grouped(self.decode, reads + surrs, keys + [keys[i] for i in surr_of], uniform)
        for k, i in enumerate(surr_of):
            states[i].surr_text = texts[bs + k]

        output_strs: List[str] = [""] * bs
        for i in range(bs):
            s = states[i]
            new_text = texts[i][len(s.surr_text) :]
            finished = reasons[i]
            if finished is None:
                if new_text and new_text[-1] != REPLACEMENT_CHAR:
                    s.surr_offset = s.read_offset
                    s.read_offset = len(s.decode_ids)
                    s.surr_text = new_text if self.concatenative else None
                    if s.hold < 0:  # no stop strings: nothing held back, no text kept
                        output_strs[i] = new_text
                        continue
                    s.decoded_text += new_text
                elif s.hold < 0:  # an incomplete character stays held back
                    continue
                text = s.decoded_text
                visible_end = len(text) - s.hold if s.hold > 0 else len(text)
                if s.stop_regex:
                    visible_end = min(visible_end, stop_regex.hold_start(text, s.stop_regex))
            else:
                text = s.decoded_text + new_text
                matched = _matched(finished)
                if isinstance(matched, str) and matched and not s.no_stop_trim:
                    pos = text.find(matched)
                    m = stop_regex.first_match(text, s.stop_regex) if s.stop_regex else None
                    if m is not None and (pos == -1 or m.start() < pos):
                        pos = m.start()
                    if pos != -1:
                        text = text[:pos]
                visible_end = len(text)
                del status[rids[i]]
            if visible_end > s.sent_offset:
                output_strs[i] = text[s.sent_offset : visible_end]
                s.sent_offset = visible_end
        return output_strs


def _str_out(recv: BatchTokenIDOut, texts: List[str], **override: Any) -> BatchStrOut:
    """The answer to `recv`: its columns, unchanged unless overridden, plus the texts."""
    cols = {f: getattr(recv, f) for f in BatchTokenIDOut.__struct_fields__}
    cols.update(override)
    return BatchStrOut(texts=texts, **cols)


def _concat(parts: List[BatchStrOut]) -> BatchStrOut:
    """Messages -> one; each part's positions shifted by the requests before it."""
    out = BatchStrOut(rids=[], offsets=[0], ids=[], completion_tokens=[],
                      http_workers=None if parts[0].http_workers is None else [])
    lp = LogprobNews(index=[], output=[], output_top=[], input=[], input_top=[])
    for p in parts:
        base = len(out.rids)
        out.rids += p.rids
        out.offsets += [len(out.ids) + o for o in p.offsets[1:]]
        out.ids += p.ids
        out.completion_tokens += p.completion_tokens
        out.texts += p.texts
        out.first += [base + j for j in p.first]
        out.infos += p.infos
        out.finished += [base + j for j in p.finished]
        out.finished_reasons += p.finished_reasons
        if out.http_workers is not None:
            out.http_workers += p.http_workers
        if p.logprobs is not None:
            lp.index += [base + j for j in p.logprobs.index]
            for f in LogprobNews.FIELDS:
                getattr(lp, f).extend(getattr(p.logprobs, f))
    out.logprobs = lp if lp.index else None
    return out


def _matched(finished_reason: Optional[Dict[str, Any]]) -> Any:
    if not finished_reason or finished_reason.get("type") != "stop":
        return None
    return finished_reason.get("matched")


def run_detokenizer_process(server_args: ServerArgs, port_args: PortArgs, ready_writer) -> None:
    """Child-process entry point: bind, report ready, then loop until the parent dies."""
    configure_logger(server_args, prefix=" Detokenizer")
    resume_gc_after_imports()
    faulthandler.enable()
    setup_child_process()  # the launcher decides when we stop; no orphan if it dies
    # One process, one core's job: rayon threads in decode_batch would only contend with the
    # scheduler and the HTTP process for cores (measured slower on a loaded host)
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        tokenizer = None
        if not server_args.skip_tokenizer_init:
            from sglserve.utils.hf_transformers_utils import get_tokenizer

            tokenizer = get_tokenizer(server_args.tokenizer_path, server_args.trust_remote_code)
        manager = DetokenizerManager(tokenizer)
        context = zmq.Context(2)
        recv_queue = PullQueue(context, port_args.detokenizer_ipc_name, bind=True)
        send_queue = WorkerQueues(context, port_args.tokenizer_ipc_names)
    except Exception as e:
        logger.error("Detokenizer failed to start:\n%s", traceback.format_exc())
        ready_writer.send(ReadyMsg(who="detokenizer", error=f"{type(e).__name__}: {e}"))
        sys.exit(1)
    freeze_startup_objects()
    ready_writer.send(ReadyMsg(who="detokenizer"))
    try:
        event_loop(manager, recv_queue, send_queue)
    except Exception:
        logger.error("Detokenizer hit an exception:\n%s", traceback.format_exc())
        sys.exit(1)


def event_loop(manager: DetokenizerManager, recv_queue: PullQueue, send_queue: WorkerQueues) -> None:
    parent = os.getppid()
    while True:
        if not recv_queue.poll(1000):
            if os.getppid() != parent:
                logger.error("Parent process died; detokenizer exits.")
                sys.exit(1)
            continue
        recv = recv_queue.get()
        if isinstance(recv, BatchTokenIDOut):
            send_queue.put_columns(manager.handle_batch_token_id_out(recv))  # each HTTP worker its own requests
        else:
            logger.error("Unknown message type %s", type(recv).__name__)
