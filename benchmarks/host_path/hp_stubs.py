"""A model whose forward costs nothing, so only the host path is left to measure (issue 10, point 5).

Why stubs and not just a tiny model: even a 1-layer, hidden-16 Llama costs a [bs, 49152] lm_head
and an argmax over it per step on the CPU (~50 ms at 4096 rows), which would swamp the host
work we want to see. So `ModelRunner.forward` returns a zero-stride logits view of the right
shape (no memory touched) and `ModelRunner.sample` returns ids from a table of real English
SmolLM2 tokens (so the detokenizer decodes real text). Everything else is the real code:
admission, ScheduleBatch.prepare_for_*, KV allocation, sampling-info construction, result
processing, the outbox, the detokenizer. On a GPU the two stubbed calls are device work plus a
few kernel launches; the benchmark times them and subtracts them from the host figures.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, List, Sequence

import torch

VOCAB = 49152  # SmolLM2's vocabulary: every sampled id is a real token
TEXT = (
    "The quick brown fox jumps over the lazy dog. Serving a language model online means many users "
    "wait for their next words at once, so the server must batch their requests, keep each one's "
    "cache of keys and values, and send every new token back as soon as it exists. When the device "
    "is fast, the time spent in Python between two steps decides how many tokens reach the clients. "
    "Caf\u00e9, na\u00efve, \u00fcber, and 12,345.67 are here so that multi-byte characters and numbers are decoded too. "
)


class StubClock:
    """CPU seconds spent inside the stubs (subtracted from host time) and a step counter for the ids."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0


CLOCK = StubClock()


def write_tiny_config(path: str, context: int = 4096) -> str:
    """A 1-layer, hidden-16 Llama config.json with SmolLM2's vocabulary (dummy weights load it)."""
    os.makedirs(path, exist_ok=True)
    cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
        "vocab_size": VOCAB, "max_position_embeddings": context, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2,
    }
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(cfg, f)
    return path


def text_token_ids(tokenizer: Any, repeat: int = 4) -> List[int]:
    """Ids of real text (no special tokens): what the stub sampler emits, cycled."""
    ids = tokenizer.encode(TEXT * repeat, add_special_tokens=False)
    return [int(i) for i in ids]


# Width of the stub's logits. The vocabulary by default; engine_mode sets 1: a prefill step with a
# chunked request gathers its sampled rows (BatchRunner.launch: logits[rows]), which materializes
# [rows, width] floats, ~400 MB and ~80 ms per step on this CPU at 2000 rows of 49152, where on a
# GPU it is an asynchronous device gather. Nothing else reads the logits of plain greedy rows.
LOGITS_WIDTH = VOCAB


def _logits_output(bs: int):
    from sglserve.layers.logits_processor import LogitsProcessorOutput

    # expand(): [bs, vocab] with stride 0, so no memory is written or read
    return LogitsProcessorOutput(next_token_logits=torch.zeros(1, LOGITS_WIDTH).expand(bs, LOGITS_WIDTH))


def _rows_to_sample(forward_batch: Any) -> int:
    """One logits row per request: the last token of each prompt (extend) or each request (decode)."""
    return int(forward_batch.batch_size)


def make_forward():
    def forward(self, forward_batch):  # replaces ModelRunner.forward
        t0 = time.thread_time()
        out = _logits_output(_rows_to_sample(forward_batch))
        CLOCK.seconds += time.thread_time() - t0
        return out

    return forward


def make_sample(token_ids: Sequence[int]):
    table = torch.tensor(list(token_ids), dtype=torch.long)

    def sample(self, next_token_logits, sampling_info):  # replaces ModelRunner.sample
        t0 = time.thread_time()
        bs = next_token_logits.shape[0]
        CLOCK.calls += 1
        rows = torch.arange(bs, dtype=torch.long)
        ids = table[(rows * 7 + CLOCK.calls) % len(table)]  # each request reads the text from its own place
        CLOCK.seconds += time.thread_time() - t0
        return ids

    return sample


def install_on_instance(model_runner: Any, token_ids: Sequence[int]) -> None:
    """In-process benchmark: only this runner is stubbed."""
    model_runner.forward = make_forward().__get__(model_runner)
    model_runner.sample = make_sample(token_ids).__get__(model_runner)


def install_on_class(token_ids: Sequence[int]) -> None:
    """Server benchmark (sitecustomize): every ModelRunner of the process is stubbed."""
    from sglserve.model_executor.model_runner import ModelRunner

    ModelRunner.forward = make_forward()
    ModelRunner.sample = make_sample(token_ids)
