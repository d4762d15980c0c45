"""FP8 accuracy on the CPU path, SmolLM2-135M-Instruct real weights (the default GGUF), teacher-forced
over a fixed text (chat conversations through the model's chat template):

- fp8 weights (`--quantization fp8`: per-channel weights, per-token activations) vs fp32:
  perplexity ratio and top-1 agreement;
- fp8 KV cache (`--kv-cache-dtype fp8_e4m3`, fp32 weights) vs fp32: perplexity ratio.

Scored with sglserve.benchmark.teacher_forced through a real ModelRunner per variant (as
benchmarks/fp8_accuracy.py, which measures the issue's text: 50 ShareGPT conversations). On these
5 conversations (518 tokens, whole conversations scored, torch 2.13 CPU): fp32 perplexity 21.36;
W8A8 (what --quantization fp8 runs) 22.27 (+4.25 %), top-1 agreement 85.8 %; fp8 KV 21.25
(-0.52 %). The CPU bars below guard against regressions around those values; the W8A8 itself is
checked bit for bit against a float8 reference (test_w8a8_is_the_float8_reference).
"""

from __future__ import annotations

import pytest
import torch

from sglserve.benchmark import teacher_forced as tf
from sglserve.layers.linear import LinearBase
from sglserve.mem_cache.memory_pool import FP8_KV_DTYPE
from sglserve.server_args import default_model_path

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
MAX_TOKENS = 1024


def conversations():
    return [[{"role": r, "content": c} for r, c in conv] for conv in CONVERSATIONS]


@pytest.fixture(scope="module")
def token_ids():
    from sglserve.utils.hf_transformers_utils import get_tokenizer

    return tf.chat_token_ids(get_tokenizer(default_model_path()), conversations(), MAX_TOKENS)


def _score(token_ids, **flags):
    runner = tf.build_runner(default_model_path(), "cpu", "float32", MAX_TOKENS, **flags)
    return runner, tf.score(runner, token_ids)


@pytest.fixture(scope="module")
def fp32(token_ids):
    return _score(token_ids)


@pytest.fixture(scope="module")
def fp8(token_ids):
    return _score(token_ids, quantization="fp8")


def test_fp8_weights_perplexity_and_top1(fp32, fp8):
    (_, ref), (_, got) = fp32, fp8
    ppl_ref, ppl = tf.perplexity(ref), tf.perplexity(got)
    top1 = tf.top1_agreement(got, ref)
    print(f"fp32 ppl {ppl_ref:.4f}, fp8-weights ppl {ppl:.4f} ({ppl / ppl_ref - 1:+.2%}), top-1 {top1:.4f}")
    assert ppl / ppl_ref - 1 < CPU_MAX_PPL_INCREASE_FP8_WEIGHTS
    assert top1 >= CPU_MIN_TOP1_FP8_WEIGHTS
    assert ppl != ppl_ref  # the weights really were quantized


def _reference_w8a8(w, x):
    """W8A8 written out with torch's float8 cast (round to nearest even): one scale per weight row
    and per activation row, amax / 448."""
    sw = w.abs().amax(1, keepdim=True) / 448
    sx = x.abs().amax(-1, keepdim=True) / 448
    wq, xq = (w / sw).to(torch.float8_e4m3fn), (x / sx).to(torch.float8_e4m3fn)
    return wq, sw, torch.nn.functional.linear(xq.float() * sx, wq.float() * sw)


def test_w8a8_is_the_float8_reference(fp32, fp8):
    """Every linear layer is quantized once, from the model-dtype weight, as the reference would;
    the embedding and the tied LM head stay in fp32 (they are not linear layers)."""
    (m32, _), (m8, _) = fp32, fp8
    model = m8.model
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert model.lm_head.weight.dtype == torch.float32
    linears = {n: m for n, m in model.named_modules() if isinstance(m, LinearBase)}
    assert len(linears) == 4 * len(model.model.layers)  # qkv, o, gate_up, down
    ref_layers = dict(m32.model.named_modules())
    for name, layer in linears.items():
        assert layer.weight.dtype == torch.float8_e4m3fn, name
        w = ref_layers[name].weight.data
        x = torch.randn(5, w.shape[1], generator=torch.Generator().manual_seed(0)) * torch.linspace(0.01, 20, w.shape[1])
        wq, sw, y = _reference_w8a8(w, x)
        assert torch.equal(layer.weight.view(torch.uint8), wq.view(torch.uint8)), name
        assert torch.equal(layer.weight_scale, sw), name
        torch.testing.assert_close(layer.quant_method.apply(layer, x, None), y, rtol=0, atol=0)


def test_fp8_kv_cache_perplexity(fp32, token_ids):
    runner, got = _score(token_ids, kv_cache_dtype="fp8_e4m3")
    assert runner.token_to_kv_pool.k_buffer[0].dtype == FP8_KV_DTYPE
    ppl_ref, ppl = tf.perplexity(fp32[1]), tf.perplexity(got)
    print(f"fp32 ppl {ppl_ref:.4f}, fp8-KV ppl {ppl:.4f} ({ppl / ppl_ref - 1:+.2%})")
    assert abs(ppl / ppl_ref - 1) < CPU_MAX_PPL_INCREASE_FP8_KV
    assert ppl != ppl_ref  # the pool really was FP8
