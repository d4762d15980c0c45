"""sglserve.Engine: the scheduler, model runner and detokenizer in-process, no HTTP.

    import sglserve
    llm = sglserve.Engine(model_path=None)  # None: the shipped SmolLM2 default model
    out = llm.generate("The capital of France is", {"temperature": 0, "max_new_tokens": 16})
    for chunk in llm.generate("Count to five:", {"max_new_tokens": 16}, stream=True): ...
    llm.shutdown()

Results have the /generate shape: {"text", "output_ids", "meta_info": {...}}. The same
Scheduler class as the server runs here, driven step by step by `generate`.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Union

import msgspec

from sglserve.detokenizer.detokenizer_manager import DetokenizerManager
from sglserve.tokenizer.input_processor import InputProcessor
from sglserve.io_struct import BatchTokenIDOut, GenerateReqInput
from sglserve.tokenizer.logprob_output import LogprobAccumulator
from sglserve.tokenizer.req_state import Updates
from sglserve.scheduler.scheduler import Scheduler
from sglserve.server_args import ServerArgs
from sglserve.utils.model_source import prepare_model_source
from sglserve.utils.logging_utils import configure_logger

Prompt = Union[str, List[str], None]
Ids = Union[List[int], List[List[int]], None]
Params = Union[Dict[str, Any], List[Dict[str, Any]], None]


@dataclass
class _ReqResult:
    rid: str
    text: str = ""
    output_ids: List[int] = field(default_factory=list)
    finished_reason: Optional[Dict[str, Any]] = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    start: float = field(default_factory=time.perf_counter)
    latency: float = 0.0  # at the last update
    logprobs: Optional[LogprobAccumulator] = None  # when the request asked for logprobs
    tokenizer: Any = None

    @property
    def finished(self) -> bool:
        return self.finished_reason is not None

    def to_dict(self) -> Dict[str, Any]:
        meta = {"id": self.rid, "finish_reason": self.finished_reason, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "cached_tokens": self.cached_tokens,
                "e2e_latency": self.latency}
        if self.logprobs is not None:
            meta.update(self.logprobs.meta(self.tokenizer))
        return {"text": self.text, "output_ids": list(self.output_ids), "meta_info": meta}


OFFLINE_STEP_BUDGET = 32768  # tokens per step (the server's --chunked-prefill-size); W2 on an H200: 15,604 out tok/s vs 15,088 at 16384


class Engine:
    def __init__(self, model_path: Optional[str] = None, log_level: str = "error", **kwargs: Any) -> None:
        # Offline batches have no reader waiting between tokens: a larger step budget for throughput
        if kwargs.get("chunked_prefill_size") is None:
            kwargs["chunked_prefill_size"] = OFFLINE_STEP_BUDGET
        self.server_args = ServerArgs(model_path=model_path, log_level=log_level, **kwargs)
        if self.server_args.tp_size > 1:
            raise ValueError(f"sglserve.Engine runs the model in this one process; --tp-size={self.server_args.tp_size} "
                             "needs one process per rank: use the server (python -m sglserve.launch_server --tp-size N)")
        configure_logger(self.server_args)
        prepare_model_source(self.server_args)  # hub ids; ValueError for a quantization we cannot run
        self.scheduler = Scheduler(self.server_args, None)
        self.tokenizer = self.scheduler.tokenizer
        self.detokenizer = DetokenizerManager(self.tokenizer)  # no tokenizer: ids pass through, text ""
        # The server's request checks, so a request the server answers with 400 raises ValueError here
        self.input_processor = InputProcessor.create(self.tokenizer, self.scheduler.ready_info(),
                                                     self.server_args.page_size, self.server_args.grammar_backend)
        self.scheduler.output_sender.sink = self._on_token_ids
        self._results: Dict[str, _ReqResult] = {}
        self._updated: List[str] = []

    # ---- output path ---------------------------------------------------------------------

    def _on_token_ids(self, out: BatchTokenIDOut) -> None:
        strs = self.detokenizer.handle_batch_token_id_out(out)
        news = Updates(strs)
        now = time.perf_counter()
        for i, rid in enumerate(strs.rids):
            res = self._results.get(rid)
            if res is None:
                continue
            res.text += strs.texts[i]
            res.output_ids += strs.new_ids(i)
            res.completion_tokens = strs.completion_tokens[i]
            res.latency = now - res.start
            if news.rare:
                news.apply(res, i)
            self._updated.append(rid)

    # ---- requests ----------------------------------------------------------------------

    def _submit(self, obj: GenerateReqInput) -> str:
        tokenized = self.input_processor.tokenize(obj)  # ValueError: what the server answers with 400
        res = self._results[tokenized.rid] = _ReqResult(tokenized.rid, tokenizer=self.tokenizer)
        if obj.return_logprob:
            res.logprobs = LogprobAccumulator(return_text=obj.return_text_in_logprobs)
        self.scheduler.handle_generate_request(tokenized)
        return tokenized.rid

    def _step(self) -> bool:
        return self.scheduler.step()

    def generate(
        self, prompt: Prompt = None, sampling_params: Params = None, input_ids: Ids = None, stream: bool = False,
        return_logprob: bool = False, logprob_start_len: int = -1, top_logprobs_num: int = 0,
        return_text_in_logprobs: bool = False,
    ) -> Union[Dict[str, Any], List[Dict[str, Any]], Iterator[Dict[str, Any]]]:
        """One prompt -> one dict; a list -> a list (same order); stream=True -> an iterator of
        updates (each the request's cumulative text so far, plus "index" for batches).
        Logprob arguments and meta_info fields as in /generate (sglang.Engine's names)."""
        if (prompt is None) == (input_ids is None):
            raise ValueError("pass exactly one of prompt and input_ids")
        single = isinstance(prompt, str) or (input_ids is not None and input_ids and isinstance(input_ids[0], int))
        texts = [prompt] if isinstance(prompt, str) else (list(prompt) if prompt is not None else None)
        idss = ([input_ids] if single else list(input_ids)) if input_ids is not None else None
        n = len(texts) if texts is not None else len(idss)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or {}] * n
        if len(params) != n:
            raise ValueError(f"got {len(params)} sampling_params for {n} prompts")
        lp = dict(return_logprob=return_logprob, logprob_start_len=logprob_start_len,
                  top_logprobs_num=top_logprobs_num, return_text_in_logprobs=return_text_in_logprobs)
        objs = [GenerateReqInput(text=texts[i] if texts else None, input_ids=idss[i] if idss else None,
                                 sampling_params=dict(params[i] or {}), rid=uuid.uuid4().hex, stream=stream, **lp)
                for i in range(n)]
        rids = []
        try:
            for obj in objs:
                rids.append(self._submit(obj))
        except BaseException:  # a bad prompt in a batch: the ones already queued are withdrawn
            self._withdraw(rids)
            raise
        if stream:
            return self._stream(rids, single)
        self._run_until_done(rids)
        outs = [self._results.pop(r).to_dict() for r in rids]
        return outs[0] if single else outs

    def _run_until_done(self, rids: List[str]) -> None:
        while not all(self._results[r].finished for r in rids):
            if not self._step():
                raise RuntimeError("scheduler went idle with unfinished requests")

    def _stream(self, rids: List[str], single: bool) -> Iterator[Dict[str, Any]]:
        index = {r: i for i, r in enumerate(rids)}
        try:
            while True:
                for rid in self._updated:
                    if rid in index:
                        d = self._results[rid].to_dict()
                        if not single:
                            d["index"] = index[rid]
                        yield d
                self._updated = [r for r in self._updated if r not in index]
                if all(self._results[r].finished for r in rids):
                    return
                if not self._step():
                    raise RuntimeError("scheduler went idle with unfinished requests")
        finally:  # an abandoned iterator aborts what is left
            self._withdraw(rids)

    def _withdraw(self, rids: List[str]) -> None:
        """Abort the unfinished ones, step until the scheduler has let them go, forget all."""
        for rid in rids:
            if not self._results[rid].finished:
                self.scheduler.abort_request(rid)
        while any(not self._results[r].finished for r in rids) and self._step():
            pass
        for rid in rids:
            self._results.pop(rid, None)

    def get_server_info(self) -> Dict[str, Any]:
        load = self.scheduler.get_load()
        return {**self.server_args.public_dict(), **msgspec.structs.asdict(load)}

    def shutdown(self) -> None:
        """Frees the model and the KV pool (GPU memory returns to the process's allocator)."""
        import gc

        self.scheduler = None  # type: ignore[assignment]
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown()
