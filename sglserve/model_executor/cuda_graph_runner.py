"""CudaGraphRunner: capture the decode forward once per batch size, replay it every step.

A decode step of a small model is dominated by kernel launches; a graph replays all of
them with one launch. Inputs live in static buffers; a batch is padded up to the next
captured size with rows that read slot 0 and write to the reserved page 0.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import logging
import time
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional

import torch

from sglserve.layers.logits_processor import LogitsProcessorOutput
from sglserve.model_executor.forward_batch import ForwardBatch, ForwardMode

if TYPE_CHECKING:
    from sglserve.model_executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def gc_disabled() -> Iterator[None]:
    """No cyclic GC while capturing (as SGLang and vLLM capture): a collection in the middle of a
    capture walks the whole start-up heap between two kernels, and one that frees a dead graph or
    kernel module while another graph records breaks that capture (pytorch/pytorch#161037).
    Temporaries die by reference count; the scheduler freezes the heap once after start-up."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def capture_batch_sizes(max_bs: int) -> List[int]:
    sizes = [1, 2, 4, 8, 12, 16, 24] + list(range(32, 257, 16)) + list(range(288, 1025, 32)) + list(range(1088, 2049, 64))
    return [bs for bs in sizes if bs <= max_bs] or [1]


class CudaGraphRunner:
    def __init__(self, model_runner: "ModelRunner") -> None:
        self.mr = model_runner
        max_bs = min(model_runner.server_args.cuda_graph_max_bs, model_runner.max_running_requests)
        self.batch_sizes = capture_batch_sizes(max_bs)
        self.max_bs = self.batch_sizes[-1]
        dev = model_runner.device
        self.input_ids = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.positions = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.req_pool_indices = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.seq_lens = torch.ones(self.max_bs, dtype=torch.int32, device=dev)
        self.out_cache_loc = torch.zeros(self.max_bs, dtype=torch.int64, device=dev)
        self.graphs: Dict[int, torch.cuda.CUDAGraph] = {}
        # Every graph writes its logits into this one buffer. Keeping each graph's own output
        # alive instead pinned bs x vocab floats per size in the pool: 26 GB for graphs up to
        # bs 2048 of a 152k vocabulary (Qwen3-0.6B ran out of memory capturing them).
        self.logits: Optional[torch.Tensor] = None  # [max_bs, vocab], shaped by the first warm-up
        self.pool = None
        t0 = time.perf_counter()
        self.capture()
        logger.info("Captured CUDA graphs for %d batch sizes (max %d) in %.2f s",
                    len(self.batch_sizes), self.max_bs, time.perf_counter() - t0)

    def _static_batch(self, bs: int, seq_lens_cpu: Optional[List[int]] = None) -> ForwardBatch:
        """extra["cuda_graph"] tells the attention backend to plan into its graph-stable buffers."""
        return ForwardBatch(
            forward_mode=ForwardMode.DECODE, batch_size=bs, input_ids=self.input_ids[:bs],
            positions=self.positions[:bs], req_pool_indices=self.req_pool_indices[:bs],
            seq_lens=self.seq_lens[:bs], out_cache_loc=self.out_cache_loc[:bs],
            seq_lens_cpu=seq_lens_cpu if seq_lens_cpu is not None else [1] * bs,
            req_to_token_pool=self.mr.req_to_token_pool, token_to_kv_pool=self.mr.token_to_kv_pool,
            attn_backend=self.mr.attn_backend, extra={"cuda_graph": True},
        )

    def capture(self) -> None:
        model, backend = self.mr.model, self.mr.attn_backend
        stream = torch.cuda.Stream()
        with gc_disabled(), torch.inference_mode(), torch.cuda.stream(stream):
            # Largest first so smaller graphs reuse the shared memory pool
            for bs in reversed(self.batch_sizes):
                fb = self._static_batch(bs)
                backend.init_forward_metadata(fb)
                # One eager forward first: Triton compiles, cuBLAS handles and lazy buffers are made
                # outside the graph (everything they cache is keyed by shape, so a second one redid
                # nothing and cost a third of the capture's time)
                warm = model(fb.input_ids, fb.positions, fb).next_token_logits
                if self.logits is None:
                    self.logits = torch.empty((self.max_bs,) + tuple(warm.shape[1:]), dtype=warm.dtype, device=warm.device)
                del warm
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool=self.pool, stream=stream):
                    out = model(fb.input_ids, fb.positions, fb)
                    self.logits[:bs].copy_(out.next_token_logits)
                del out  # its memory goes back to the pool for the next (smaller) graph
                if self.pool is None:
                    self.pool = graph.pool()
                self.graphs[bs] = graph
        torch.cuda.synchronize()

    def can_run(self, forward_batch: ForwardBatch) -> bool:
        if not (forward_batch.forward_mode.is_decode() and forward_batch.batch_size <= self.max_bs
                and not forward_batch.return_all_logits):
            return False
        fits = getattr(self.mr.attn_backend, "can_replay_graph", None)  # backends with bounded graph buffers
        return fits is None or fits(forward_batch)

    def replay(self, forward_batch: ForwardBatch) -> LogitsProcessorOutput:
        raw_bs = forward_batch.batch_size
        bs = self.batch_sizes[bisect.bisect_left(self.batch_sizes, raw_bs)]
        if bs != raw_bs:  # padded rows: slot 0 of row 0, written to the reserved page 0
            self.seq_lens[raw_bs:bs].fill_(1)
            self.out_cache_loc[raw_bs:bs].zero_()
            self.req_pool_indices[raw_bs:bs].zero_()
            self.input_ids[raw_bs:bs].zero_()
            self.positions[raw_bs:bs].zero_()
        self.input_ids[:raw_bs].copy_(forward_batch.input_ids)
        self.positions[:raw_bs].copy_(forward_batch.positions)
        self.req_pool_indices[:raw_bs].copy_(forward_batch.req_pool_indices)
        self.seq_lens[:raw_bs].copy_(forward_batch.seq_lens)
        self.out_cache_loc[:raw_bs].copy_(forward_batch.out_cache_loc)
        seq_lens_cpu = list(forward_batch.seq_lens_cpu) + [1] * (bs - raw_bs)
        self.mr.attn_backend.init_forward_metadata(self._static_batch(bs, seq_lens_cpu))
        self.graphs[bs].replay()
        return LogitsProcessorOutput(next_token_logits=self.logits[:raw_bs])
