"""A scheduler stand-in for HTTP-process tests: real sockets, real TokenizerManager and
DetokenizerManager, no model. Every request answers the same reply, one token per step,
with the real stop rules (stop strings, stop token ids / EOS, max_new_tokens)."""

from __future__ import annotations

import threading
from typing import Dict, List, Optional, Set

import zmq

from sglserve.detokenizer.detokenizer_manager import DetokenizerManager
from sglserve.io_struct import (
    AbortReq,
    FlushCacheReq,
    FlushCacheReqOutput,
    GetLoadReq,
    GetLoadReqOutput,
    TokenizedGenerateReqInput,
    finish_abort,
    finish_length,
    finish_stop,
)
from sglserve.port_args import PortArgs
from sglserve.utils.zmq_queue import PullQueue, PushQueue
from tests.unit.messages import token_ids_out

REPLY = "The capital of France is Paris. 你好 🎉 café!"
EOS = 2


class FakeScheduler:
    def __init__(self, tokenizer, port_args: PortArgs, step_s: float = 0.001) -> None:
        self.tokenizer = tokenizer
        self.reply_ids = tokenizer.encode(REPLY) + [EOS]
        self.detok = DetokenizerManager(tokenizer)
        self.port_args = port_args
        self.step_s = step_s
        self.silent = False  # True: never answer control requests
        self.running: Dict[str, TokenizedGenerateReqInput] = {}
        self.outputs: Dict[str, List[int]] = {}
        self.sent: Dict[str, int] = {}
        self.announced: Set[str] = set()  # rids whose first message went out
        self.received: List[object] = []
        self.aborted: List[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        ctx = zmq.Context()
        recv = PullQueue(ctx, self.port_args.scheduler_input_ipc_name, bind=True)
        send = PushQueue(ctx, self.port_args.tokenizer_ipc_name)
        try:
            while not self._stop.is_set():
                if recv.poll(timeout=self.step_s * 1000 if self.running else 20):
                    while True:
                        try:
                            self._handle(recv.get(block=False), send)
                        except zmq.Again:
                            break
                if self.running:
                    self._step(send)
        finally:
            recv.close()
            send.close()
            ctx.term()

    def _handle(self, msg, send) -> None:
        self.received.append(msg)
        if isinstance(msg, TokenizedGenerateReqInput):
            self.running[msg.rid] = msg
            self.outputs[msg.rid] = []
        elif isinstance(msg, AbortReq):
            self.aborted.append(msg.rid)
            if msg.rid in self.running:
                req = self.running.pop(msg.rid)
                out = self.outputs[msg.rid]
                self._emit(send, [(req, out[self.sent.get(msg.rid, 0):], finish_abort("Aborted by the client."))])
        elif isinstance(msg, FlushCacheReq) and not self.silent:
            send.put(FlushCacheReqOutput(success=not self.running))
        elif isinstance(msg, GetLoadReq) and not self.silent:
            send.put(GetLoadReqOutput(max_total_num_tokens=1000, available_tokens=900, evictable_tokens=100, used_tokens=0,
                                      num_running_reqs=len(self.running), num_waiting_reqs=0, cache_hit_rate=0.0))

    def _step(self, send) -> None:
        news = []
        for rid, req in list(self.running.items()):
            out = self.outputs[rid]
            sp = req.sampling_params
            long_run = sp.ignore_eos and sp.max_new_tokens is None  # runs until aborted (disconnect tests)
            out.append(self.reply_ids[0] if long_run else self.reply_ids[min(len(out), len(self.reply_ids) - 1)])
            finished = self._finish(out, sp)
            if finished is not None:
                del self.running[rid]
            if req.stream or finished is not None:  # as the real scheduler: non-stream only at the end
                sent = self.sent.get(rid, 0)
                self.sent[rid] = len(out)
                news.append((req, out[sent:], finished))
        self._emit(send, news)

    def _finish(self, out: List[int], sp) -> Optional[dict]:
        if not sp.ignore_eos and out[-1] == EOS:
            return finish_stop(EOS)
        if sp.stop_token_ids and out[-1] in sp.stop_token_ids:
            return finish_stop(out[-1])
        if sp.stop_strs:
            tail = self.tokenizer.decode(out[-(sp.stop_str_max_len + 1):], skip_special_tokens=sp.skip_special_tokens)
            for s in sp.stop_strs:
                if s in tail:
                    return finish_stop(s)
        if sp.max_new_tokens is not None and len(out) >= sp.max_new_tokens:
            return finish_length(sp.max_new_tokens)
        return None

    def _emit(self, send, news) -> None:
        if not news:
            return
        sps = [r.sampling_params for r, _, _ in news]
        first = [r.rid not in self.announced for r, _, _ in news]  # as the real scheduler: flags once
        self.announced.update(r.rid for r, _, _ in news)
        msg = token_ids_out(
            [r.rid for r, _, _ in news], [ids for _, ids, _ in news], [f for _, _, f in news],
            prompt_tokens=[len(r.input_ids) for r, _, _ in news],
            completion_tokens=[len(self.outputs[r.rid]) for r, _, _ in news],
            cached_tokens=[min(2, len(r.input_ids) - 1) for r, _, _ in news],
            stop_strs=[sp.stop_strs for sp in sps], skip=[sp.skip_special_tokens for sp in sps],
            no_stop_trim=[sp.no_stop_trim for sp in sps], first=first,
        )
        send.put(self.detok.handle_batch_token_id_out(msg))
