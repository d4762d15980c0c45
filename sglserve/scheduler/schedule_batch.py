"""Req (one request's state in the scheduler) and ScheduleBatch (the requests of one step).

ScheduleBatch turns host-side request state into a ForwardBatch: it allocates request
rows and KV slots, writes them into req_to_token, and lists the tokens to compute.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

import numpy as np
import torch

from sglserve.io_struct import finish_abort, finish_length, finish_stop
from sglserve.mem_cache.memory_pool import aligned_len, to_device_async
from sglserve.scheduler.logprobs import LogprobState
from sglserve.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.sampling import stop_regex

if TYPE_CHECKING:
    from sglserve.mem_cache.memory_pool import PagedTokenToKVPoolAllocator, ReqToTokenPool


class Req:
    """All scheduler-side state of one request; output ids survive retraction."""

    def __init__(
        self,
        rid: str,
        origin_input_ids: List[int],
        sampling_params: SamplingParams,
        max_new_tokens: int,
        eos_token_ids: Set[int],
        stream: bool = False,
        origin_input_text: Optional[str] = None,
    ) -> None:
        self.rid = rid
        self.origin_input_ids = list(origin_input_ids)
        self.origin_input_text = origin_input_text
        self.sampling_params = sampling_params
        self.max_new_tokens = max_new_tokens
        self.eos_token_ids = eos_token_ids
        # A token outside these, before max_new_tokens, cannot finish a request without stop
        # strings, a grammar or an abort: Scheduler.process_batch_result skips check_finished for it
        sp = sampling_params
        self.finish_token_ids = frozenset(sp.stop_token_ids or ()) | frozenset(() if sp.ignore_eos else eos_token_ids)
        self.has_stop_strs = bool(sp.stop_strs or sp.stop_regex_strs)
        # Per-step host work is skipped for plain requests: greedy argmax with no penalties,
        # bias, seeded draws, grammar or logprobs (RequestIntake clears it for logprobs), once
        # min_new_tokens are out. Read by BatchRunner.launch and all_overlap_safe.
        self.greedy = sp.is_greedy
        self.min_new_tokens = sp.min_new_tokens
        self.plain = not (sp.frequency_penalty or sp.presence_penalty or sp.repetition_penalty != 1.0 or sp.logit_bias
                          or (sp.seed is not None and not self.greedy)
                          or sp.json_schema is not None or sp.regex is not None or sp.ebnf is not None)
        self.stream = stream
        self.output_ids: List[int] = []
        # Tokens whose KV must exist after the next extend (input + output, maybe cut by chunking)
        self.fill_ids: List[int] = []
        self.prefix_indices: torch.Tensor = torch.empty(0, dtype=torch.int64)
        self.last_node: Any = None
        self.req_pool_idx: Optional[int] = None
        self.extend_input_len = 0
        self.is_chunked = False
        self.cached_tokens = 0  # prefix hit reported to the client (first admission)
        self._first_admission = True
        self.finished_reason: Optional[Dict[str, Any]] = None
        self.to_abort: Optional[str] = None
        self.sent_len = 0  # output ids already sent to the detokenizer
        self.http_worker = 0  # the HTTP process its outputs go back to (--api-server-count)
        self.last_loc = -1  # KV slot of the last token in KV (page filling without a device read)
        self.kv_len = 0  # tokens whose KV is allocated for this request
        self.arrival_time = time.perf_counter()
        self.num_retractions = 0
        # Constrained decoding (scheduler/grammar_manager.py): the xgrammar matcher once compiled
        self.grammar: Any = None
        self.grammar_key: Any = None
        self.grammar_future: Any = None
        self.logprobs: Optional[LogprobState] = None  # set when the request asked for logprobs
        # n > 1 copies of one prompt share a group: one prefills first, the others hit its KV
        self.prefix_group: Optional[str] = None
        self.cache_salt: Optional[str] = None  # prefixes are shared only between requests of the same salt

    @property
    def seqlen(self) -> int:
        return len(self.origin_input_ids) + len(self.output_ids)

    def finished(self) -> bool:
        return self.finished_reason is not None

    def init_next_round_input(self, tree_cache) -> None:
        """Match the longest cached prefix of input+output; the rest must be computed."""
        self.fill_ids = self.origin_input_ids + self.output_ids
        # The last token's KV is computed now so its logits give the next token
        key = self.fill_ids[:-1]
        limit = None if self.logprobs is None else self.logprobs.match_limit()
        if limit is not None:  # input logprobs need the logits of these positions: compute them
            key = key[:limit]
        match = tree_cache.match_prefix(key, self.cache_salt)
        self.prefix_indices, self.last_node = match.device_indices, match.last_node
        self.extend_input_len = len(self.fill_ids) - len(self.prefix_indices)

    def check_finished(self, tokenizer, context_len: int) -> None:
        if self.finished_reason is not None:
            return
        if self.to_abort is not None:
            self.finished_reason = finish_abort(self.to_abort)
            return
        if not self.output_ids:
            return
        sp = self.sampling_params
        last = self.output_ids[-1]
        if len(self.output_ids) >= sp.min_new_tokens:
            if sp.stop_token_ids and last in sp.stop_token_ids:
                self.finished_reason = finish_stop(last)
                return
            if not sp.ignore_eos and last in self.eos_token_ids:
                self.finished_reason = finish_stop(last)
                return
            if sp.stop_strs and tokenizer is not None:
                tail = tokenizer.decode(self.output_ids[-(sp.stop_str_max_len + 1):], skip_special_tokens=sp.skip_special_tokens)
                for stop in sp.stop_strs:
                    if stop in tail:
                        self.finished_reason = finish_stop(stop)
                        return
            if sp.stop_regex_strs and tokenizer is not None:
                tail = tokenizer.decode(self.output_ids[-stop_regex.TAIL_TOKENS:], skip_special_tokens=sp.skip_special_tokens)
                match = stop_regex.first_match(tail, sp.stop_regex_strs)
                if match is not None:
                    self.finished_reason = finish_stop(match.group())
                    return
        if len(self.output_ids) >= self.max_new_tokens:
            self.finished_reason = finish_length(self.max_new_tokens)
        elif self.seqlen >= context_len:
            self.finished_reason = finish_length(len(self.output_ids))

    def reset_for_retract(self) -> None:
        self.prefix_indices = torch.empty(0, dtype=torch.int64)
        self.last_node = None
        self.req_pool_idx = None
        self.extend_input_len = 0
        self.kv_len = 0
        self.last_loc = -1
        self.num_retractions += 1

    def __repr__(self) -> str:
        return f"Req(rid={self.rid}, input_len={len(self.origin_input_ids)}, output_len={len(self.output_ids)})"


@dataclass
class ScheduleBatch:
    """The requests of one forward pass and the pools they draw on."""

    reqs: List[Req]
    forward_mode: ForwardMode
    req_to_token_pool: "ReqToTokenPool"
    allocator: "PagedTokenToKVPoolAllocator"
    tree_cache: Any
    device: str
    prefix_lens: List[int] = field(default_factory=list)
    seq_lens: List[int] = field(default_factory=list)
    return_all_logits: bool = False
    num_decoding: int = 0  # mixed step: the last reqs decode one token each
    # ids of the requests this step computes a non-final prompt chunk for (set at launch: a
    # request's is_chunked may already describe its next chunk when this step is resolved)
    chunked_ids: Set[int] = field(default_factory=set)

    def batch_size(self) -> int:
        return len(self.reqs)

    def _alloc(self, prefix_lens: List[int], seq_lens: List[int], last_locs: List[int]) -> torch.Tensor:
        page = self.allocator.page_size
        need = sum(-(-s // page) - -(-p // page) for p, s in zip(prefix_lens, seq_lens)) * page
        if self.allocator.available_size() < need:
            self.tree_cache.evict(need - self.allocator.available_size())
        out = self.allocator.alloc_extend(prefix_lens, seq_lens, last_locs)
        if out is None:
            raise RuntimeError(f"KV pool out of memory: need {need} tokens, {self.allocator.available_size()} free")
        return out

    def _write_req_to_token(self, rows: List[int], starts: List[int], ends: List[int], slots: torch.Tensor) -> None:
        lens = np.array(ends, dtype=np.int64) - np.array(starts, dtype=np.int64)
        row_idx = np.repeat(np.array(rows, dtype=np.int64), lens)
        # Column of each slot: its start plus its offset within the request's run
        col_idx = np.arange(int(lens.sum()), dtype=np.int64) - np.repeat(np.cumsum(lens) - lens - np.array(starts), lens)
        self.req_to_token_pool.write(torch.from_numpy(row_idx), torch.from_numpy(col_idx), slots.to(torch.int64))

    def prepare_for_extend(self) -> ForwardBatch:
        """Rows and KV slots for each request's extend_input_len new tokens after its prefix.

        In a mixed step the last `num_decoding` requests are running ones that ride along with
        one token each (their last sampled id after their kv_len tokens): one forward serves
        prefill and decode, so decoding requests never wait for a prefill batch."""
        n_prefill = len(self.reqs) - self.num_decoding
        prefills, decodes = self.reqs[:n_prefill], self.reqs[n_prefill:]
        need_rows = [r for r in prefills if r.req_pool_idx is None]
        rows = self.req_to_token_pool.alloc(len(need_rows))
        if rows is None:
            raise RuntimeError("req_to_token pool is full")
        for r, row in zip(need_rows, rows):
            r.req_pool_idx = row
        # Put each request's cached prefix (radix hit) into its row
        with_prefix = [r for r in need_rows if len(r.prefix_indices)]
        if with_prefix:
            self._write_req_to_token(
                [r.req_pool_idx for r in with_prefix], [0] * len(with_prefix),
                [len(r.prefix_indices) for r in with_prefix], torch.cat([r.prefix_indices for r in with_prefix]),
            )
        self.prefix_lens = [len(r.prefix_indices) for r in prefills] + [r.kv_len for r in decodes]
        self.seq_lens = [p + r.extend_input_len for p, r in zip(self.prefix_lens, prefills)]
        self.seq_lens += [p + 1 for p in self.prefix_lens[n_prefill:]]
        last_locs = [int(r.prefix_indices[-1]) if len(r.prefix_indices) else -1 for r in prefills]
        last_locs += [r.last_loc for r in decodes]
        out_cache_loc = self._alloc(self.prefix_lens, self.seq_lens, last_locs)
        self._write_req_to_token([r.req_pool_idx for r in self.reqs], self.prefix_lens, self.seq_lens, out_cache_loc)
        input_ids: List[int] = []
        for r, p, s in zip(prefills, self.prefix_lens, self.seq_lens):
            input_ids.extend(r.fill_ids[p:s])
        # (a request whose last token is still in flight gets it from the device: BatchRunner)
        input_ids.extend(r.output_ids[-1] if r.output_ids else 0 for r in decodes)
        ends = np.cumsum(np.asarray(self.seq_lens, dtype=np.int64) - np.asarray(self.prefix_lens, dtype=np.int64))
        last_locs = out_cache_loc.cpu().numpy()[ends - 1].tolist()  # a host tensor: no device sync
        for r, s, loc in zip(self.reqs, self.seq_lens, last_locs):
            r.kv_len = s
            r.last_loc = loc
        return ForwardBatch.build(
            ForwardMode.EXTEND, input_ids, [r.req_pool_idx for r in self.reqs], self.prefix_lens,
            self.seq_lens, out_cache_loc, self.device, self.return_all_logits, self.num_decoding,
        )

    def prepare_for_decode(self) -> ForwardBatch:
        """One new token per request: the last sampled one goes through the model.

        The hot path of the server: a handful of list comprehensions, one host->device copy
        for all per-request ints, one scatter into req_to_token.
        """
        reqs = self.reqs
        self.prefix_lens = [r.kv_len for r in reqs]
        self.seq_lens = [n + 1 for n in self.prefix_lens]
        if self.allocator.page_size == 1:
            if self.allocator.available_size() < len(reqs):
                self.tree_cache.evict(len(reqs) - self.allocator.available_size())
            out_cache_loc = self.allocator.alloc(len(reqs))
            if out_cache_loc is None:
                raise RuntimeError(f"KV pool out of memory: need {len(reqs)} tokens, {self.allocator.available_size()} free")
        else:
            out_cache_loc = self._alloc(self.prefix_lens, self.seq_lens, [r.last_loc for r in reqs])
        locs = out_cache_loc.tolist()  # host tensor: no device sync
        for r, loc in zip(reqs, locs):
            r.kv_len += 1
            r.last_loc = loc
        # numpy converts the int lists about 3x faster than torch.tensor (0.34 vs 1.1 ms at 4096 rows).
        # Rows padded to aligned_len: every row starts aligned on the device whatever the batch size
        bs = len(reqs)
        packed = torch.from_numpy(np.zeros((5, aligned_len(bs)), dtype=np.int64))
        host = packed[:, :bs]
        host.numpy()[:] = [[r.output_ids[-1] if r.output_ids else 0 for r in reqs], self.prefix_lens,
                           [r.req_pool_idx for r in reqs], self.seq_lens, locs]
        pool = self.req_to_token_pool
        if pool.host is not pool.req_to_token:
            pool.host[host[2], host[1]] = host[4].to(torch.int32)
        dev = to_device_async(packed, pool.req_to_token.device)[:, :bs]
        input_ids, positions, rows, seq_lens, loc = dev[0], dev[1], dev[2], dev[3], dev[4]
        pool.req_to_token[rows, positions] = loc.to(torch.int32)
        return ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=len(reqs), input_ids=input_ids, positions=positions,
            req_pool_indices=rows, seq_lens=seq_lens.to(torch.int32), out_cache_loc=loc, seq_lens_cpu=self.seq_lens,
        )
