"""Start-up forwards through the extend path, prefill and mixed (decoding rows riding along),
so that the Triton kernels an extend step uses are compiled before the first request instead
of mid-serving: Triton JIT-compiles one variant per specialization it meets (an int argument
equal to 1 or a multiple of 16, a pointer 16-byte aligned or not, each constexpr set), seconds
each, and every running stream stalls behind a compile (RESULTS.md R8: ~4 s at the first mixed
steps, max ITL 0.8-0.9 s).

The batches vary what can change the specializations of a mixed step:
  - prefill token counts 1, 2, 4, 8, 16: the decoding rows' q/o start at that row of the
    step's tensors, and these five cover every 16-byte alignment such an offset can have
    (with head_dim a multiple of 8, as in every real model, all of them are aligned);
  - decoding-row counts: one per split count of the decode kernel (the backend's
    warmup_decoding_counts), whose scratch strides follow it.
Every request reads row 0 of req_to_token and writes its K/V to slot 0, in page 0, which is
reserved (the CUDA graphs' padding rows write there too): no request's state is touched.

Last, one forward of the largest step the scheduler can build (the step budget's prefill
tokens beside max_running_requests decoding rows), so that torch's caching allocator holds
blocks as large as any step needs. Without it, while the running set grows each mixed step
needs a larger logits block than any cached one: one or two cudaMallocs a step while W3's
requests are admitted (V10), none after (V12). A server whose memory beside the KV pool
cannot run that step hears so at start-up, not from an out-of-memory error mid-serving.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, List, Sequence, Tuple

import torch

from sglserve.layers.sampler import SamplingBatchInfo
from sglserve.model_executor.forward_batch import ForwardBatch, ForwardMode

if TYPE_CHECKING:
    from sglserve.model_executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)

WARMUP_PREFILL_TOKENS = (1, 2, 4, 8, 16)
WARMUP_DECODE_LEN = 8  # tokens each decoding row has in KV (all read from slot 0)


def warmup_shapes(decoding_counts: Sequence[int]) -> List[Tuple[int, int]]:
    """(prefill tokens, decoding rows) of each warm-up forward: a plain prefill, then a mixed
    step per count of decoding rows, the prefill token counts cycling through
    WARMUP_PREFILL_TOKENS (each at least once)."""
    counts = list(decoding_counts) or [1]
    counts += [counts[0]] * (len(WARMUP_PREFILL_TOKENS) - len(counts))
    tokens = WARMUP_PREFILL_TOKENS
    return [(tokens[0], 0)] + [(tokens[i % len(tokens)], k) for i, k in enumerate(counts)]


def synthetic_extend_batch(n_prefill: int, num_decoding: int, device: torch.device | str,
                           max_request_len: int | None = None) -> ForwardBatch:
    """Requests prefilling n_prefill tokens in all (no prefix; one request, or as many as keep each
    within max_request_len, the context length), then num_decoding requests decoding their
    WARMUP_DECODE_LEN-th token: a mixed step's layout (ScheduleBatch.prepare_for_extend)."""
    chunk = max_request_len or n_prefill
    prefill = [min(chunk, n_prefill - i) for i in range(0, n_prefill, chunk)] or [0]
    bs = len(prefill) + num_decoding
    prefix = [0] * len(prefill) + [WARMUP_DECODE_LEN - 1] * num_decoding
    seq = prefill + [WARMUP_DECODE_LEN] * num_decoding
    num_tokens = n_prefill + num_decoding
    return ForwardBatch.build(
        ForwardMode.EXTEND, [0] * num_tokens, [0] * bs, prefix, seq, torch.zeros(num_tokens, dtype=torch.int64),
        device, num_decoding=num_decoding,
    )


def warm_up_extend(runner: "ModelRunner") -> int:
    """Runs the warm-up forwards on runner (after its CUDA graphs are captured); returns how many."""
    t0 = time.perf_counter()
    counts = runner.attn_backend.warmup_decoding_counts(runner.max_running_requests)  # the Triton backend's
    shapes = warmup_shapes(counts)
    for n_prefill, num_decoding in shapes:
        runner.forward(synthetic_extend_batch(n_prefill, num_decoding, runner.device))
    reserved = _reserve_largest_step(runner)
    if runner.device.type == "cuda":
        torch.cuda.synchronize(runner.device)
    logger.info("Warmed up %d extend/mixed forwards in %.2f s%s", len(shapes) + bool(reserved),
                time.perf_counter() - t0, f" (the largest step: {reserved[0]} prefill tokens beside {reserved[1]} "
                "decoding rows)" if reserved else "")
    return len(shapes) + bool(reserved)


def largest_step(runner: "ModelRunner") -> Tuple[int, int]:
    """(prefill tokens, decoding rows) of the largest step the scheduler may run."""
    sa = runner.server_args
    return sa.step_budget() or sa.max_prefill_tokens, runner.max_running_requests


def _reserve_largest_step(runner: "ModelRunner") -> Tuple[int, int] | None:
    """Runs the largest step once (module docstring); None where the memory left after the KV
    pool cannot hold it: serving then allocates as it goes, as before."""
    shape = largest_step(runner)
    try:
        batch = synthetic_extend_batch(*shape, runner.device, max_request_len=runner.model_config.context_len)
        logits = runner.forward(batch).next_token_logits
        # A step that holds a chunk copies out the sampled rows (BatchRunner.launch): a second block
        rows = logits[torch.arange(logits.shape[0], device=logits.device)]
        runner.sample(rows, SamplingBatchInfo.all_greedy(rows.shape[0]))
        return shape
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        logger.warning("Not enough memory beside the KV pool to run the largest step (%d prefill tokens beside %d "
                       "decoding rows) at start-up: steps that large may run out of memory; lower "
                       "--max-running-requests or --mem-fraction-static", *shape)
        return None
