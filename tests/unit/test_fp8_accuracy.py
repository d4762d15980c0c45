"""FP8 accuracy on the CPU path, SmolLM2-135M-Instruct real weights (the default GGUF), teacher-forced
over a fixed text (chat conversations through the model's chat template):

- fp8 weights (`--quantization fp8`: per-channel weights, per-token activations) vs fp32:
  perplexity ratio and top-1 agreement;
- fp8 KV cache (`--kv-cache-dtype fp8_e4m3`, fp32 weights) vs fp32: perplexity ratio.

Measured on the CPU (2 cores, torch 2.13, 518 tokens, whole conversations scored): fp32 perplexity
21.36; fp8 weights + per-token fp8 activations (W8A8, what --quantization fp8 runs) 22.78
(+6.7 %), top-1 agreement 83.2 %; fp8 weights only (W8A16, for comparison) 21.76 (+1.9 %), 90.3 %;
fp8 KV 21.16 (-0.9 %), top-1 94.5 %. The GPU bars of issue 12 (5 % / 93 % / 2 %, over 50
ShareGPT conversations) are not met by this 135M model's W8A8 on this text; the CPU bars below
guard against regressions around the measured values. benchmarks/RESULTS.md has these rows.
"""

from __future__ import annotations

import math

import pytest
import torch

from sglserve.mem_cache.memory_pool import FP8_KV_DTYPE, MHATokenToKVPool
from sglserve.server_args import default_model_path
from tests.unit.model_driver import PagedModelRunner, load_model

CONVERSATIONS = [
    [("user", "What causes the seasons on Earth?"),
     ("assistant", "The seasons are caused by the tilt of Earth's axis, about 23.5 degrees. As Earth orbits the Sun, "
                   "each hemisphere leans toward the Sun for part of the year, getting more direct sunlight and longer "
                   "days, which makes summer. Half a year later the same hemisphere leans away, and it is winter.")],
    [("user", "Can you give me a simple recipe for pancakes?"),
     ("assistant", "Sure. Mix one cup of flour, one tablespoon of sugar, two teaspoons of baking powder and a pinch "
                   "of salt. In another bowl whisk one egg, one cup of milk and two tablespoons of melted butter. "
                   "Combine the two, stir until just mixed, and cook spoonfuls on a hot buttered pan until bubbles "
                   "form, then flip and cook until golden.")],
    [("user", "Explain what a list comprehension is in Python."),
     ("assistant", "A list comprehension builds a new list from an iterable in a single expression. For example, "
                   "squares = [x * x for x in range(10)] creates the squares of the numbers from zero to nine. You can "
                   "add a condition, as in [x for x in numbers if x % 2 == 0], to keep only the even numbers.")],
    [("user", "Why is the sky blue?"),
     ("assistant", "Sunlight contains all colors. When it passes through the atmosphere, the short blue wavelengths "
                   "are scattered by the gas molecules much more than the longer red ones. This is called Rayleigh "
                   "scattering, and the scattered blue light reaches our eyes from every direction of the sky.")],
    [("user", "Write a short note thanking a colleague for their help."),
     ("assistant", "Hi Sam, thank you so much for helping me prepare the quarterly report last week. Your advice on "
                   "the charts made the results much clearer, and I really appreciate the time you took. Let me know "
                   "if I can return the favor.")],
]

CPU_MAX_PPL_INCREASE_FP8_WEIGHTS = 0.09
CPU_MIN_TOP1_FP8_WEIGHTS = 0.80
CPU_MAX_PPL_INCREASE_FP8_KV = 0.02


@pytest.fixture(scope="module")
def token_ids():
    from sglserve.utils.hf_transformers_utils import get_tokenizer

    tok = get_tokenizer(default_model_path())
    texts = [tok.apply_chat_template([{"role": r, "content": c} for r, c in conv], tokenize=False) for conv in CONVERSATIONS]
    return [tok.encode(text, add_special_tokens=False) for text in texts]


def _all_logits(model, config, token_ids, kv_dtype=None):
    runner = PagedModelRunner(model, config, max_context_len=1024)
    if kv_dtype is not None:
        runner.kv_pool = MHATokenToKVPool(4096, 1, kv_dtype, config.num_key_value_heads, config.head_dim,
                                          config.num_hidden_layers, "cpu")
    reqs = [runner.new_req() for _ in token_ids]
    return [runner.extend([r], [ids], return_all_logits=True).all_logits for r, ids in zip(reqs, token_ids)]


def _perplexity(logits, token_ids):
    nll, n = 0.0, 0
    for lg, ids in zip(logits, token_ids):
        target = torch.tensor(ids[1:])
        nll -= float(torch.log_softmax(lg[:-1].float(), -1).gather(1, target[:, None]).sum())
        n += len(ids) - 1
    return math.exp(nll / n)


def _top1_agreement(a, b):
    same = sum(int((x[:-1].argmax(-1) == y[:-1].argmax(-1)).sum()) for x, y in zip(a, b))
    return same / sum(x.shape[0] - 1 for x in a)


@pytest.fixture(scope="module")
def fp32(token_ids):
    model, config = load_model(default_model_path(), dtype="float32")
    return model, config, _all_logits(model, config, token_ids)


def test_fp8_weights_perplexity_and_top1(fp32, token_ids):
    _, _, ref = fp32
    model, config = load_model(default_model_path(), dtype="float32", quantization="fp8")
    assert model.model.layers[0].mlp.down_proj.weight.dtype == torch.float8_e4m3fn
    got = _all_logits(model, config, token_ids)
    ppl_ref, ppl = _perplexity(ref, token_ids), _perplexity(got, token_ids)
    top1 = _top1_agreement(got, ref)
    print(f"fp32 ppl {ppl_ref:.4f}, fp8-weights ppl {ppl:.4f} ({ppl / ppl_ref - 1:+.2%}), top-1 {top1:.4f}")
    assert ppl / ppl_ref - 1 < CPU_MAX_PPL_INCREASE_FP8_WEIGHTS
    assert top1 >= CPU_MIN_TOP1_FP8_WEIGHTS
    assert ppl != ppl_ref  # the weights really were quantized


def test_fp8_kv_cache_perplexity(fp32, token_ids):
    model, config, ref = fp32
    got = _all_logits(model, config, token_ids, kv_dtype=FP8_KV_DTYPE)
    ppl_ref, ppl = _perplexity(ref, token_ids), _perplexity(got, token_ids)
    print(f"fp32 ppl {ppl_ref:.4f}, fp8-KV ppl {ppl:.4f} ({ppl / ppl_ref - 1:+.2%})")
    assert abs(ppl / ppl_ref - 1) < CPU_MAX_PPL_INCREASE_FP8_KV
    assert ppl != ppl_ref  # the pool really was FP8
