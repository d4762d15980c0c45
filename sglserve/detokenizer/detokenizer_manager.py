"""Detokenizer process: token ids from the scheduler -> text increments for the HTTP process.

Incremental detokenization (as SGLang does it): per request keep all output ids and two
offsets. `surr_offset..read_offset` is a window of already-emitted ids decoded again as
context, so the new ids' text gets its spacing right (sentencepiece drops a leading space
when a piece is decoded alone). New text = decode(ids[surr:]) minus decode(ids[surr:read]).
Text ending in U+FFFD is an incomplete UTF-8 character: it is held back (offsets not
advanced) until the next token completes it, or the request finishes.

Stop strings (docs/CONTRACTS.md): while unfinished, the last (stop_str_max_len - 1)
characters are held back so a stop string is never streamed; on a finish matched by a
string the text is cut at its first occurrence (unless no_stop_trim); on a finish matched
by a token id that token is dropped before decoding.
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

from sglserve.io_struct import BatchStrOut, BatchTokenIDOut, ReadyMsg, finish_abort
from sglserve.server_args import PortArgs, ServerArgs
from sglserve.utils.logging_utils import configure_logger
from sglserve.utils.process import setup_child_process

logger = logging.getLogger(__name__)

REPLACEMENT_CHAR = "\ufffd"


@dataclasses.dataclass
class DecodeStatus:
    """One request's detokenization state."""

    decode_ids: List[int] = dataclasses.field(default_factory=list)
    surr_offset: int = 0  # start of the context window (ids already emitted)
    read_offset: int = 0  # ids before this are committed into decoded_text
    decoded_text: str = ""  # committed text (complete characters only)
    sent_offset: int = 0  # characters of the (trimmed) text already sent


class DetokenizerManager:
    """Pure detokenization logic; `run_detokenizer_process` wires it to the sockets."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer  # None with --skip-tokenizer-init: ids pass through, text stays ""
        self.decode_status: Dict[str, DecodeStatus] = {}

    def _batch_decode(self, seqs: List[List[int]], skip: List[bool], spaces: List[bool]) -> List[str]:
        """Decode in as few tokenizer calls as possible (one per distinct flag pair)."""
        out: List[str] = [""] * len(seqs)
        groups: Dict[tuple, List[int]] = {}
        for i, key in enumerate(zip(skip, spaces)):
            groups.setdefault(key, []).append(i)
        for (skip_special, spaces_between), idx in groups.items():
            texts = self.tokenizer.batch_decode(
                [seqs[i] for i in idx],
                skip_special_tokens=skip_special,
                spaces_between_special_tokens=spaces_between,
            )
            for i, t in zip(idx, texts):
                out[i] = t
        return out

    def handle_batch_token_id_out(self, recv: BatchTokenIDOut) -> BatchStrOut:
        """One message in, one out. An error with one request fails that request only (finish
        abort, 500): the batch's states are restored and its requests retried one by one."""
        saved = {rid: self._save(rid) for rid in recv.rids}
        try:
            return self._handle(recv)
        except Exception as e:
            for rid, snap in saved.items():
                self._restore(rid, snap)
            if len(recv.rids) == 1:
                logger.exception("Error detokenizing request %s; failing it", recv.rids[0])
                return self._failed(recv, e)
        return _concat([self.handle_batch_token_id_out(_pick(recv, i)) for i in range(len(recv.rids))])

    def _save(self, rid: str) -> Optional[tuple]:
        s = self.decode_status.get(rid)
        return None if s is None else (s, len(s.decode_ids), s.surr_offset, s.read_offset, s.decoded_text, s.sent_offset)

    def _restore(self, rid: str, snap: Optional[tuple]) -> None:
        if snap is None:
            self.decode_status.pop(rid, None)
            return
        s, n, s.surr_offset, s.read_offset, s.decoded_text, s.sent_offset = snap
        del s.decode_ids[n:]
        self.decode_status[rid] = s

    def _failed(self, recv: BatchTokenIDOut, e: Exception) -> BatchStrOut:
        self.decode_status.pop(recv.rids[0], None)
        reason = finish_abort(f"Internal error while detokenizing: {type(e).__name__}: {e}", status_code=500)
        return BatchStrOut([recv.rids[0]], [reason], [""], [list(recv.decode_ids[0])], list(recv.prompt_tokens),
                           list(recv.completion_tokens), list(recv.cached_tokens))

    def _handle(self, recv: BatchTokenIDOut) -> BatchStrOut:
        bs = len(recv.rids)
        stop_strs = recv.stop_strs if len(recv.stop_strs) == bs else [[] for _ in range(bs)]
        if self.tokenizer is None:
            output_strs = [""] * bs
        else:
            output_strs = self._detokenize(recv, stop_strs)
        return BatchStrOut(
            rids=list(recv.rids),
            finished_reasons=list(recv.finished_reasons),
            output_strs=output_strs,
            output_ids=[list(ids) for ids in recv.decode_ids],
            prompt_tokens=list(recv.prompt_tokens),
            completion_tokens=list(recv.completion_tokens),
            cached_tokens=list(recv.cached_tokens),
            output_token_logprobs=list(recv.output_token_logprobs),
            output_top_logprobs=list(recv.output_top_logprobs),
            input_token_logprobs=list(recv.input_token_logprobs),
            input_top_logprobs=list(recv.input_top_logprobs),
        )

    def _detokenize(self, recv: BatchTokenIDOut, stop_strs: List[List[str]]) -> List[str]:
        bs = len(recv.rids)
        states: List[DecodeStatus] = []
        read_ids: List[List[int]] = []
        surr_ids: List[List[int]] = []
        for i in range(bs):
            s = self.decode_status.setdefault(recv.rids[i], DecodeStatus())
            s.decode_ids.extend(recv.decode_ids[i])
            states.append(s)
            window = s.decode_ids[s.surr_offset :]
            matched = _matched(recv.finished_reasons[i])
            # A finish by stop token id: drop that token (it may be a special token shown
            # when skip_special_tokens=False), as SGLang does.
            if (
                isinstance(matched, int)
                and not recv.no_stop_trim[i]
                and len(s.decode_ids) > s.read_offset
                and s.decode_ids[-1] == matched
            ):
                window = window[:-1]
            read_ids.append(window)
            surr_ids.append(s.decode_ids[s.surr_offset : s.read_offset])

        skip, spaces = recv.skip_special_tokens, recv.spaces_between_special_tokens
        surr_texts = self._batch_decode(surr_ids, skip, spaces)
        read_texts = self._batch_decode(read_ids, skip, spaces)

        output_strs: List[str] = []
        for i in range(bs):
            s = states[i]
            finished = recv.finished_reasons[i]
            new_text = read_texts[i][len(surr_texts[i]) :]
            if finished is None:
                if new_text and not new_text.endswith(REPLACEMENT_CHAR):
                    s.decoded_text += new_text
                    s.surr_offset = s.read_offset
                    s.read_offset = len(s.decode_ids)
                text = s.decoded_text  # an incomplete character stays held back
                hold = max((len(x) for x in stop_strs[i]), default=0) - 1
                visible_end = len(text) - hold if hold > 0 else len(text)
            else:
                text = s.decoded_text + new_text
                matched = _matched(finished)
                if isinstance(matched, str) and matched and not recv.no_stop_trim[i]:
                    pos = text.find(matched)
                    if pos != -1:
                        text = text[:pos]
                visible_end = len(text)
                del self.decode_status[recv.rids[i]]
            if visible_end > s.sent_offset:
                output_strs.append(text[s.sent_offset : visible_end])
                s.sent_offset = visible_end
            else:
                output_strs.append("")
        return output_strs


def _pick(recv: BatchTokenIDOut, i: int) -> BatchTokenIDOut:
    """Request i of a message as a message of its own (per-request lists sliced, empty ones kept)."""
    bs = len(recv.rids)
    return BatchTokenIDOut(**{f.name: (v[i : i + 1] if len(v) == bs else v)
                              for f in dataclasses.fields(recv) for v in [getattr(recv, f.name)]})


def _concat(parts: List[BatchStrOut]) -> BatchStrOut:
    """Messages -> one; a list some parts leave empty (logprobs) is padded with None."""
    out = {}
    for f in dataclasses.fields(BatchStrOut):
        lists = [getattr(p, f.name) for p in parts]
        if any(lists) and not all(len(v) == len(p.rids) for v, p in zip(lists, parts)):
            lists = [v if len(v) == len(p.rids) else [None] * len(p.rids) for v, p in zip(lists, parts)]
        out[f.name] = [x for v in lists for x in v]
    return BatchStrOut(**out)


def _matched(finished_reason: Optional[Dict[str, Any]]) -> Any:
    if not finished_reason or finished_reason.get("type") != "stop":
        return None
    return finished_reason.get("matched")


def run_detokenizer_process(server_args: ServerArgs, port_args: PortArgs, ready_writer) -> None:
    """Child-process entry point: bind, report ready, then loop until the parent dies."""
    configure_logger(server_args, prefix=" Detokenizer")
    faulthandler.enable()
    setup_child_process()  # the launcher decides when we stop; no orphan if it dies
    try:
        tokenizer = None
        if not server_args.skip_tokenizer_init:
            from sglserve.utils.hf_transformers_utils import get_tokenizer

            tokenizer = get_tokenizer(server_args.tokenizer_path, server_args.trust_remote_code)
        manager = DetokenizerManager(tokenizer)
        context = zmq.Context(2)
        recv_sock = context.socket(zmq.PULL)
        recv_sock.bind(port_args.detokenizer_ipc_name)
        send_sock = context.socket(zmq.PUSH)
        send_sock.connect(port_args.tokenizer_ipc_name)
    except Exception as e:
        logger.error("Detokenizer failed to start:\n%s", traceback.format_exc())
        ready_writer.send(ReadyMsg("detokenizer", error=f"{type(e).__name__}: {e}"))
        sys.exit(1)
    ready_writer.send(ReadyMsg("detokenizer"))
    try:
        event_loop(manager, recv_sock, send_sock)
    except Exception:
        logger.error("Detokenizer hit an exception:\n%s", traceback.format_exc())
        sys.exit(1)


def event_loop(manager: DetokenizerManager, recv_sock: zmq.Socket, send_sock: zmq.Socket) -> None:
    parent = os.getppid()
    while True:
        if not recv_sock.poll(timeout=1000):
            if os.getppid() != parent:
                logger.error("Parent process died; detokenizer exits.")
                sys.exit(1)
            continue
        recv = recv_sock.recv_pyobj()
        if isinstance(recv, BatchTokenIDOut):
            send_sock.send_pyobj(manager.handle_batch_token_id_out(recv))
        else:
            logger.error("Unknown message type %s", type(recv).__name__)
