"""ModelRunner: loads the model, sizes the KV pool, runs one forward pass and samples."""

from __future__ import annotations

import logging
import os
import time
from typing import List, Optional

import psutil
import torch

from sglserve.configs.model_config import ModelConfig
from sglserve.distributed.parallel_state import all_reduce_min, broadcast_objects, init_tp_group
from sglserve.distributed.shard import check_tp_shapes, kv_heads_per_rank
from sglserve.layers.attention import create_attn_backend
from sglserve.layers.radix_attention import RadixAttention
from sglserve.layers.sampler import Sampler, SamplingBatchInfo
from sglserve.mem_cache.memory_pool import FP8_KV_DTYPE, MHATokenToKVPool, PagedTokenToKVPoolAllocator, ReqToTokenPool
from sglserve.model_executor.forward_batch import ForwardBatch
from sglserve.model_executor.warmup import warm_up_extend
from sglserve.model_loader import get_model
from sglserve.server_args import ServerArgs, local_gpu_id, ranks_per_node
from sglserve.utils.cuda_context import wait_context_creation

logger = logging.getLogger(__name__)

GiB = 1 << 30


class ModelRunner:
    def __init__(self, model_config: ModelConfig, server_args: ServerArgs, tp_rank: int = 0,
                 dist_init_addr: Optional[str] = None) -> None:
        """tp_rank / dist_init_addr: this process's tensor-parallel rank and where the ranks meet
        (host:port), with --tp-size > 1 (one ModelRunner per rank process)."""
        self.model_config = model_config
        self.server_args = server_args
        self.tp_rank, self.tp_size = tp_rank, server_args.tp_size
        server_args.resolve_model_defaults(model_config.params_per_token() // self.tp_size)
        self.device = torch.device(server_args.device)
        if self.device.type == "cuda":
            self.device = torch.device("cuda", local_gpu_id(server_args, tp_rank))
            t0, waited = time.perf_counter(), wait_context_creation()
            torch.cuda.set_device(self.device)
            logger.info("CUDA device %s ready in %.2f s (%.2f s of it waiting for its context, made while importing)",
                        self.device, time.perf_counter() - t0, waited)
        self.dtype = model_config.dtype
        self.page_size = server_args.page_size
        if self.tp_size > 1:
            check_tp_shapes(model_config.num_attention_heads, model_config.num_key_value_heads,
                            getattr(model_config.hf_config, "intermediate_size", None), self.tp_size)
            if dist_init_addr is None:
                raise ValueError("--tp-size > 1 needs the address where the ranks meet (dist_init_addr)")
            init_tp_group(tp_rank, self.tp_size, dist_init_addr, self.device,
                          custom_all_reduce=not server_args.disable_custom_all_reduce and server_args.nnodes == 1)
            # Nodes parse their flags apart: rank 0's seed is everyone's, so all ranks sample alike
            server_args.random_seed = broadcast_objects([server_args.random_seed])[0]
            if self.device.type == "cpu":  # the host's ranks share its cores; more threads would fight
                torch.set_num_threads(max(1, (os.cpu_count() or 1) // ranks_per_node(server_args)))
        torch.manual_seed(server_args.random_seed)  # the same on every rank: they sample alike (sampler.py)

        t0 = time.perf_counter()
        self.model = get_model(model_config, server_args.load_format, self.device)
        logger.info(
            "Load weight end. elapsed=%.2f s, type=%s, dtype=%s, avail mem=%.2f GB",
            time.perf_counter() - t0, type(self.model).__name__, self.dtype, self._available_memory() / GiB,
        )
        self.sampler = Sampler()
        self.init_memory_pool()
        # One softmax scale for every attention layer lets backends that plan per pass (FlashInfer) use it
        scalings = {m.scaling for m in self.model.modules() if isinstance(m, RadixAttention)}
        self.attn_scaling = scalings.pop() if len(scalings) == 1 else None
        self.attn_backend = create_attn_backend(server_args.attention_backend, self)
        self.cuda_graph_runner = None
        if self.device.type == "cuda" and not server_args.disable_cuda_graph:
            from sglserve.model_executor.cuda_graph_runner import CudaGraphRunner

            self.cuda_graph_runner = CudaGraphRunner(self)
        if self.device.type == "cuda" and server_args.attention_backend == "triton":
            # Extend and mixed-step kernel variants compile now, not in the first requests' steps
            warm_up_extend(self)

    # ---- memory ------------------------------------------------------------------------

    def _available_memory(self) -> int:
        if self.device.type == "cuda":
            return torch.cuda.mem_get_info(self.device)[0]
        return psutil.virtual_memory().available

    def _budget_bytes(self) -> int:
        """Bytes the KV pool may take: what is left of mem_fraction_static after weights."""
        frac = self.server_args.mem_fraction_static
        if self.device.type == "cuda":
            free, total = torch.cuda.mem_get_info(self.device)
            return int(free - total * (1 - frac))
        # The ranks of one host share its memory
        return int(psutil.virtual_memory().available * frac / ranks_per_node(self.server_args))

    def init_memory_pool(self) -> None:
        mc, sa = self.model_config, self.server_args
        kv_heads = kv_heads_per_rank(mc.num_key_value_heads, self.tp_size)
        # --kv-cache-dtype: auto keeps the model dtype; fp8_e4m3 stores one byte per value
        self.kv_dtype = FP8_KV_DTYPE if sa.kv_cache_dtype == "fp8_e4m3" else self.dtype
        cell = MHATokenToKVPool.bytes_per_token(kv_heads, mc.head_dim, mc.num_hidden_layers, self.kv_dtype)
        budget = self._budget_bytes()
        tokens = max(budget, 0) // cell
        if sa.max_total_tokens is not None:
            tokens = min(tokens, sa.max_total_tokens) if tokens > 0 else sa.max_total_tokens
        # Every rank must have the same pool: the ranks' schedulers decide alike from its size
        tokens = all_reduce_min(tokens // self.page_size * self.page_size)
        if tokens < max(self.page_size * 2, 16):
            raise RuntimeError(
                f"Not enough memory for the KV cache: {budget / GiB:.2f} GB left for it ({cell} bytes per token). "
                "Raise --mem-fraction-static or lower --context-length."
            )
        self.max_total_num_tokens = tokens
        self.context_len = mc.context_len
        max_reqs = sa.max_running_requests
        if max_reqs is None:
            max_reqs = min(max(int(tokens / self.context_len * 512), 2048), 4096)
        self.max_running_requests = max_reqs
        self.req_to_token_pool = ReqToTokenPool(max_reqs + 1, self.context_len + 4, self.device)
        self.token_to_kv_pool = MHATokenToKVPool(
            tokens, self.page_size, self.kv_dtype, kv_heads, mc.head_dim, mc.num_hidden_layers, self.device
        )
        # Allocator state lives on the host: scheduling decisions never wait for the device
        self.allocator = PagedTokenToKVPoolAllocator(tokens, self.page_size, "cpu")
        self.kv_bytes_per_token = cell
        logger.info(
            "KV Cache is allocated. #tokens: %d, dtype: %s, %d bytes per token, K size: %.2f GB, V size: %.2f GB",
            tokens, self.kv_dtype, cell, tokens * cell / 2 / GiB, tokens * cell / 2 / GiB,
        )

    # ---- forward -----------------------------------------------------------------------

    def forward(self, forward_batch: ForwardBatch):
        forward_batch.req_to_token_pool = self.req_to_token_pool
        forward_batch.token_to_kv_pool = self.token_to_kv_pool
        forward_batch.attn_backend = self.attn_backend
        with torch.inference_mode():
            if self.cuda_graph_runner is not None and self.cuda_graph_runner.can_run(forward_batch):
                return self.cuda_graph_runner.replay(forward_batch)
            self.attn_backend.init_forward_metadata(forward_batch)
            return self.model(forward_batch.input_ids, forward_batch.positions, forward_batch)

    def sample(self, next_token_logits: torch.Tensor, sampling_info: SamplingBatchInfo) -> torch.Tensor:
        with torch.inference_mode():
            return self.sampler(next_token_logits, sampling_info)

    def make_sampling_info(self, params: List, output_lens: List[int]) -> SamplingBatchInfo:
        return SamplingBatchInfo.from_params(params, output_lens, self.model_config.vocab_size, self.device)

    def forward_and_sample(self, forward_batch: ForwardBatch, sampling_info: Optional[SamplingBatchInfo]):
        out = self.forward(forward_batch)
        ids = None if sampling_info is None else self.sample(out.next_token_logits, sampling_info)
        return out, ids
