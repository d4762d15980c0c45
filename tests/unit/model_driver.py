"""Drive a model through the real paged-KV path the way the scheduler does, without a scheduler.

PagedModelRunner owns a ReqToTokenPool, an MHATokenToKVPool, a page allocator and the
torch-native attention backend; extend()/decode() allocate slots, write them into
req_to_token, build the ForwardBatch and run the model. Reused by other unit tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import torch
from torch import nn

from sglserve.configs.model_config import ModelConfig
from sglserve.distributed.parallel_state import get_tp_size
from sglserve.distributed.shard import kv_heads_per_rank
from sglserve.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglserve.layers.logits_processor import LogitsProcessorOutput
from sglserve.mem_cache.memory_pool import MHATokenToKVPool, PagedTokenToKVPoolAllocator, ReqToTokenPool
from sglserve.model_executor.forward_batch import ForwardBatch, ForwardMode
from sglserve.model_loader.loader import get_model


def load_model(model_path: str, load_format: str = "auto", device: str = "cpu", dtype: str = "float32",
               quantization: Optional[str] = None) -> Tuple[nn.Module, ModelConfig]:
    config = ModelConfig.from_pretrained(model_path, load_format=load_format, dtype=dtype, device=device,
                                         quantization=quantization)
    return get_model(config, load_format, device), config


@dataclass
class Req:
    row: int  # row in req_to_token
    kv_len: int = 0  # tokens whose K/V are already in the pool
    output_ids: List[int] = field(default_factory=list)


class PagedModelRunner:
    def __init__(
        self,
        model: nn.Module,
        model_config: ModelConfig,
        page_size: int = 1,
        num_slots: int = 4096,
        max_reqs: int = 16,
        max_context_len: int = 512,
        device: str = "cpu",
    ) -> None:
        self.model = model
        self.page_size = page_size
        self.device = device
        self.req_to_token_pool = ReqToTokenPool(max_reqs, max_context_len, device)
        self.kv_pool = MHATokenToKVPool(
            num_slots, page_size, model_config.dtype, kv_heads_per_rank(model_config.num_key_value_heads, get_tp_size()),
            model_config.head_dim, model_config.num_hidden_layers, device,
        )  # fmt: skip
        self.allocator = PagedTokenToKVPoolAllocator(num_slots, page_size, device)
        self.backend = TorchNativeAttnBackend(None)

    def new_req(self) -> Req:
        rows = self.req_to_token_pool.alloc(1)
        assert rows is not None, "no free req_to_token row"
        return Req(row=rows[0])

    def share_prefix(self, src: Req, dst: Req, n: int) -> None:
        """A radix-cache hit: dst reuses src's KV slots for its first n tokens (n page-aligned,
        so dst's own tokens start on a fresh page and never write into src's pages)."""
        assert n % self.page_size == 0 and n <= src.kv_len
        rtt = self.req_to_token_pool.req_to_token
        rtt[dst.row, :n] = rtt[src.row, :n]
        dst.kv_len = n

    def _run(self, mode: ForwardMode, reqs: Sequence[Req], tokens: Sequence[Sequence[int]], return_all_logits: bool) -> LogitsProcessorOutput:
        rtt = self.req_to_token_pool.req_to_token
        prefix_lens = [r.kv_len for r in reqs]
        seq_lens = [p + len(t) for p, t in zip(prefix_lens, tokens)]
        last_locs = [int(rtt[r.row, p - 1]) if p > 0 else -1 for r, p in zip(reqs, prefix_lens)]
        out_cache_loc = self.allocator.alloc_extend(prefix_lens, seq_lens, last_locs)
        assert out_cache_loc is not None, "KV pool out of memory"
        offset = 0
        for r, p, s in zip(reqs, prefix_lens, seq_lens):
            rtt[r.row, p:s] = out_cache_loc[offset : offset + s - p].to(rtt.dtype)
            offset += s - p
        flat = [t for toks in tokens for t in toks]
        fb = ForwardBatch.build(
            mode, flat, [r.row for r in reqs], prefix_lens, seq_lens, out_cache_loc, self.device, return_all_logits
        )
        fb.req_to_token_pool, fb.token_to_kv_pool, fb.attn_backend = self.req_to_token_pool, self.kv_pool, self.backend
        self.backend.init_forward_metadata(fb)
        with torch.inference_mode():
            out = self.model(fb.input_ids, fb.positions, fb)
        for r, s in zip(reqs, seq_lens):
            r.kv_len = s
        return out

    def extend(self, reqs: Sequence[Req], tokens: Sequence[Sequence[int]], return_all_logits: bool = False) -> LogitsProcessorOutput:
        """Prefill (or continue a chunked prefill of) each request with its new tokens."""
        return self._run(ForwardMode.EXTEND, reqs, tokens, return_all_logits)

    def decode(self, reqs: Sequence[Req], next_ids: Sequence[int]) -> LogitsProcessorOutput:
        """One token per request."""
        return self._run(ForwardMode.DECODE, reqs, [[t] for t in next_ids], False)

    def greedy(self, reqs: Sequence[Req], first_logits: torch.Tensor, steps: int) -> List[List[int]]:
        """Greedy-decode `steps` tokens for every request, starting from the logits of its prompt."""
        next_ids: Optional[List[int]] = first_logits.argmax(-1).tolist()
        for step in range(steps):
            for r, t in zip(reqs, next_ids):
                r.output_ids.append(t)
            if step + 1 < steps:
                next_ids = self.decode(reqs, next_ids).next_token_logits.argmax(-1).tolist()
        return [r.output_ids for r in reqs]
