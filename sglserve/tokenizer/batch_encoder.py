"""Tokenization off the HTTP process's event loop, batched across requests.

Texts whose requests arrive while a batch is being encoded wait for the next batch, and each
batch is one `tokenizer(texts)` call in one worker thread: a fast (Rust) tokenizer encodes a
batch in parallel and without the GIL, so the loop keeps streaming other requests' tokens
meanwhile, and a burst of N requests costs a few batch calls instead of N inline encodes
(SGLang's batch tokenization, without its extra process). A batch holds at most MAX_BATCH
texts, so the first requests of a burst go on to the scheduler while the rest are encoded.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, List, Tuple

MAX_BATCH = 64

Batch = List[Tuple[bool, List[str], List[asyncio.Future]]]  # (add_special_tokens, texts, their futures)


class BatchEncoder:
    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="sglserve-tokenize")
        self._pending: List[Tuple[bool, str, asyncio.Future]] = []
        self._busy = False  # a batch is in the worker (or about to be): new texts wait for the next one
        self._loop: Any = None  # the event loop the pending futures and the batch in flight belong to

    async def encode(self, texts: List[str], add_special_tokens: bool = True) -> List[List[int]]:
        """The token ids of each text, as tokenizer.encode(text, add_special_tokens=...) gives them."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new loop (the old one closed with a batch in flight): start afresh
            self._loop, self._pending, self._busy = loop, [], False
        futures = [loop.create_future() for _ in texts]
        self._pending.extend((add_special_tokens, t, f) for t, f in zip(texts, futures))
        if not self._busy:
            self._busy = True
            loop.call_soon(self._flush)  # after the callbacks of this loop tick: their texts join the batch
        return [await f for f in futures]

    def _flush(self) -> None:
        items, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
        if not items:
            self._busy = False
            return
        batch: Batch = []
        for flag in (True, False):
            group = [(t, f) for g, t, f in items if g == flag]
            if group:
                batch.append((flag, [t for t, _ in group], [f for _, f in group]))
        work = asyncio.get_running_loop().run_in_executor(self._executor, self._encode, batch)
        work.add_done_callback(lambda done: self._deliver(batch, done))

    def _encode(self, batch: Batch) -> List[List[List[int]]]:
        return [list(self.tokenizer(texts, add_special_tokens=flag)["input_ids"]) for flag, texts, _ in batch]

    def _deliver(self, batch: Batch, done: asyncio.Future) -> None:
        self._flush()  # the next texts go to the worker before this batch's requests take the loop
        error = done.exception()
        for k, (_, _, futures) in enumerate(batch):
            for i, f in enumerate(futures):
                if f.done():  # its request was cancelled meanwhile
                    continue
                if error is not None:
                    f.set_exception(error)
                else:
                    f.set_result(list(done.result()[k][i]))
