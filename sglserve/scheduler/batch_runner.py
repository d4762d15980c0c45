"""Running a ScheduleBatch on the model: prepare, forward and sample (launch), then read the
sampled ids back (resolve). Nothing in launch waits for the device, except what the
scheduler's between_layers callback does (it may resolve the step launched before this one)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable, List, Optional, Set, Tuple

import numpy as np
import torch

from sglserve.layers.sampler import SamplingBatchInfo
from sglserve.mem_cache.memory_pool import to_device_async
from sglserve.sampling.penalties import build_logit_adjust
from sglserve.scheduler import logprobs
from sglserve.scheduler.overlap import LaunchedBatch

if TYPE_CHECKING:
    from sglserve.model_executor.model_runner import ModelRunner
    from sglserve.scheduler.grammar_manager import GrammarManager
    from sglserve.scheduler.schedule_batch import Req, ScheduleBatch


class BatchRunner:
    def __init__(self, model_runner: "ModelRunner", grammar_manager: "GrammarManager", eos_token_ids: Set[int],
                 vocab_size: int) -> None:
        self.model_runner = model_runner
        self.grammar_manager = grammar_manager
        self.eos_token_ids = eos_token_ids
        self.vocab_size = vocab_size

    def launch(self, batch: "ScheduleBatch", input_ids: Optional[torch.Tensor] = None,
               marks: Optional[dict] = None, between_layers: Optional[Callable[[bool], None]] = None) -> LaunchedBatch:
        """Prepare, forward and sample on the device. A request part-way through a chunked
        prefill computes KV only: it has no row to sample. input_ids: the decoding rows' ids
        (the last ones of the batch) when they are still on the device. marks (--step-trace-path):
        gets the time each part ended. between_layers: called after each layer is enqueued (True
        after the last)."""
        reqs = batch.reqs
        if batch.forward_mode.is_extend():
            batch.return_all_logits = logprobs.wants_input_logprobs(reqs)
            fb = batch.prepare_for_extend()
            batch.chunked_ids = {id(r) for r in reqs if r.is_chunked}
            sample_rows = [i for i, r in enumerate(reqs) if not r.is_chunked]
        else:
            fb = batch.prepare_for_decode()
            sample_rows = list(range(len(reqs)))
        if input_ids is not None:  # look-ahead: the decoding rows' last tokens, still on the device
            if batch.forward_mode.is_decode():
                fb.input_ids = input_ids
            else:
                fb.input_ids[fb.input_ids.shape[0] - batch.num_decoding:] = input_ids
        if marks is not None:
            marks["prepared"] = time.perf_counter()
        sample_reqs = reqs if len(sample_rows) == len(reqs) else [reqs[i] for i in sample_rows]
        # One pass decides whether any row needs per-row sampling state (the common case: none)
        simple = all(r.plain and r.greedy and r.min_new_tokens <= len(r.output_ids) for r in sample_reqs)
        if simple:
            sampling_info = SamplingBatchInfo.all_greedy(len(sample_reqs))
        else:
            sampling_info = self.model_runner.make_sampling_info(
                [r.sampling_params for r in sample_reqs], [len(r.output_ids) for r in sample_reqs]
            )
            self._add_sampling_extras(sample_reqs, sampling_info)
        fb.between_layers = between_layers
        out = self.model_runner.forward(fb)
        if marks is not None:
            marks["forwarded"] = time.perf_counter()
        logits = out.next_token_logits
        if len(sample_rows) != len(reqs):
            rows = torch.from_numpy(np.array(sample_rows, dtype=np.int64))
            logits = logits[to_device_async(rows, logits.device)]
        logprob_state = None
        if sample_rows and not simple:
            logprob_state = logprobs.output_logprobs_begin(sample_reqs, logits)
        next_ids = self.model_runner.sample(logits, sampling_info) if sample_rows else None
        return LaunchedBatch.start_copy(next_ids, batch=batch, sample_rows=sample_rows, sample_reqs=sample_reqs,
                                        logprob_state=logprob_state, out=out)

    def resolve(self, launched: LaunchedBatch) -> Tuple["ScheduleBatch", List[int], List[int]]:
        """Read the sampled ids (the one host sync per step); returns (batch, sample rows, ids)."""
        next_ids = launched.host_token_ids()
        batch, sample_rows, sample_reqs = launched.batch, launched.sample_rows, launched.sample_reqs
        logprobs.output_logprobs_end(sample_reqs, launched.logprob_state, next_ids)
        if batch.return_all_logits:
            logprobs.record_input_logprobs(batch.reqs, batch.prefix_lens, batch.seq_lens, launched.out.all_logits)
        if any(r.finished_reason is not None for r in batch.reqs):
            # Overlap ran these one step past their finish: drop that step for them
            keep = [i for i, r in enumerate(batch.reqs) if r.finished_reason is None]
            pos = {i: k for k, i in enumerate(sample_rows)}
            next_ids = [next_ids[pos[i]] for i in keep if i in pos]
            sample_rows = [j for j, i in enumerate(keep) if i in pos]
            n_prefill = len(batch.reqs) - batch.num_decoding
            batch.num_decoding = sum(1 for i in keep if i >= n_prefill)
            batch.reqs = [batch.reqs[i] for i in keep]
        return batch, sample_rows, next_ids

    def _add_sampling_extras(self, reqs: List["Req"], info) -> None:
        """Penalties / logit_bias / min_tokens and grammar masks for the rows that need them."""
        if not reqs:
            return
        device = self.model_runner.device
        info.adjust = build_logit_adjust(
            [r.sampling_params for r in reqs], [r.origin_input_ids for r in reqs], [r.output_ids for r in reqs],
            self.eos_token_ids, self.vocab_size, device,
        )
        info.vocab_mask = self.grammar_manager.vocab_mask(reqs, device)
