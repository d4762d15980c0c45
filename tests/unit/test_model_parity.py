"""Our models vs transformers on tiny random configs, through the real paged KV path.

Each architecture is built in transformers with a fixed seed, saved as safetensors and
loaded by get_model; then prefill (whole, chunked, batched, after a prefix hit) and
greedy decode must match transformers: logits within 1e-4, identical tokens.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Dict, List, Tuple

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, PretrainedConfig, Qwen2Config, Qwen3Config

from model_driver import PagedModelRunner, load_model
from sglserve.configs.model_config import ModelConfig, get_rope_config, resolve_dtype
from sglserve.layers.attention import create_attn_backend
from sglserve.models.registry import get_model_class

ATOL = 1e-4
DECODE_STEPS = 32
PAGE_SIZES = [1, 4, 16]
TINY = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    vocab_size=256, max_position_embeddings=256, rms_norm_eps=1e-6, tie_word_embeddings=False,
)  # fmt: skip
LLAMA3_ROPE = dict(
    rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
    original_max_position_embeddings=64,
)  # fmt: skip
CONFIGS: Dict[str, PretrainedConfig] = {
    "llama": LlamaConfig(**TINY),
    "llama3_rope": LlamaConfig(**TINY, rope_parameters=LLAMA3_ROPE),
    "llama_tied": LlamaConfig(**{**TINY, "tie_word_embeddings": True}),
    "mistral": MistralConfig(**TINY),
    "qwen2": Qwen2Config(**TINY),
    "qwen3": Qwen3Config(**TINY, head_dim=32),  # head_dim != hidden/heads
}

# Worst |ours - transformers| logit diff per (arch, check), printed at the end with -s.
MAX_DIFFS: Dict[Tuple[str, str], float] = {}


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def models(request, tmp_path_factory):
    """(name, transformers model, our model, our ModelConfig) for one architecture."""
    name = request.param
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(CONFIGS[name], attn_implementation="eager").float().eval()
    with torch.no_grad():  # random biases and norm weights too, so their loading is checked
        for pname, p in hf.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in pname else p.normal_(0.0, 0.1)
    hf.generation_config.eos_token_id = None  # decode the full DECODE_STEPS
    hf.generation_config.pad_token_id = 0
    folder = Path(tmp_path_factory.mktemp(name))
    hf.save_pretrained(folder)
    ours, config = load_model(str(folder))
    return name, hf, ours, config


@pytest.fixture(scope="module", autouse=True)
def single_thread_and_report():
    """Tiny matmuls run ~10x faster on one thread than with intra-op threads fighting over cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for (name, check), diff in sorted(MAX_DIFFS.items()):
        print(f"max |logit diff| {name:12s} {check:18s} {diff:.2e}")


def prompt(n: int, seed: int) -> List[int]:
    return torch.randint(0, TINY["vocab_size"], (n,), generator=torch.Generator().manual_seed(seed)).tolist()


# transformers' answers do not depend on page_size: compute each once (generate is the slow part).
def _hf_cached(hf, kind: str, ids: List[int], fn):
    cache = hf.__dict__.setdefault("_parity_cache", {})  # lives and dies with the model
    key = (kind, tuple(ids))
    if key not in cache:
        with torch.no_grad():
            cache[key] = fn()
    return cache[key]


def hf_logits(hf, ids: List[int]) -> torch.Tensor:
    return _hf_cached(hf, "logits", ids, lambda: hf(torch.tensor([ids])).logits[0].float())


def hf_greedy(hf, ids: List[int]) -> List[int]:
    def run() -> List[int]:
        mask = torch.ones(1, len(ids), dtype=torch.long)
        out = hf.generate(torch.tensor([ids]), attention_mask=mask, max_new_tokens=DECODE_STEPS, do_sample=False)
        return out[0, len(ids) :].tolist()

    return _hf_cached(hf, "greedy", ids, run)


def check_close(name: str, check: str, ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert ours.shape == ref.shape and ours.dtype == torch.float32
    diff = (ours - ref).abs().max().item()
    MAX_DIFFS[(name, check)] = max(diff, MAX_DIFFS.get((name, check), 0.0))
    assert diff <= ATOL, f"{name} {check}: max |logit diff| {diff:.3e} > {ATOL}"


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_chunked_prefill_then_greedy_decode(models, page_size):
    name, hf, ours, config = models
    ids = prompt(40, seed=1)
    runner = PagedModelRunner(ours, config, page_size)
    req = runner.new_req()
    chunks = [ids[:13], ids[13:27], ids[27:]]  # chunk borders off page borders
    outs = [runner.extend([req], [c], return_all_logits=True) for c in chunks]
    all_logits = torch.cat([o.all_logits for o in outs])
    check_close(name, "prefill (3 chunks)", all_logits, hf_logits(hf, ids))
    assert torch.equal(outs[-1].next_token_logits[0], all_logits[-1])
    assert runner.greedy([req], outs[-1].next_token_logits, DECODE_STEPS)[0] == hf_greedy(hf, ids)


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_batched_extend_and_decode(models, page_size):
    name, hf, ours, config = models
    prompts = [prompt(n, seed=10 + n) for n in (5, 17, 30, 1)]
    runner = PagedModelRunner(ours, config, page_size)
    reqs = [runner.new_req() for _ in prompts]
    out = runner.extend(reqs, prompts, return_all_logits=True)
    ref_all = [hf_logits(hf, p) for p in prompts]
    check_close(name, "batched extend", out.all_logits, torch.cat(ref_all))
    check_close(name, "batched next-token", out.next_token_logits, torch.stack([r[-1] for r in ref_all]))
    got = runner.greedy(reqs, out.next_token_logits, DECODE_STEPS)
    assert got == [hf_greedy(hf, p) for p in prompts]


@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_prefix_cache_hit(models, page_size):
    """B reuses A's KV slots for their shared (page-aligned) prefix and computes only the rest."""
    name, hf, ours, config = models
    shared = prompt(37, seed=2)
    a_ids, b_ids = shared + prompt(6, seed=3), shared + prompt(9, seed=4)
    runner = PagedModelRunner(ours, config, page_size)
    a, b = runner.new_req(), runner.new_req()
    a_out = runner.extend([a], [a_ids])
    hit = len(shared) // page_size * page_size
    runner.share_prefix(a, b, hit)
    free_before = runner.allocator.available_size()
    b_out = runner.extend([b], [b_ids[hit:]], return_all_logits=True)
    assert free_before - runner.allocator.available_size() == -(-(len(b_ids) - hit) // page_size) * page_size
    check_close(name, "extend after hit", b_out.all_logits, hf_logits(hf, b_ids)[hit:])
    first = torch.cat([a_out.next_token_logits, b_out.next_token_logits])
    assert runner.greedy([a, b], first, DECODE_STEPS) == [hf_greedy(hf, a_ids), hf_greedy(hf, b_ids)]


def test_model_config_fields(models):
    name, hf, _, config = models
    assert config.architecture == type(hf).__name__  # save_pretrained wrote architectures
    assert config.head_dim == (32 if name == "qwen3" else 16)
    assert (config.num_attention_heads, config.num_key_value_heads, config.vocab_size) == (4, 2, 256)
    assert config.dtype == torch.float32 and config.context_len == 256


def test_rope_config_both_styles():
    """transformers 5 rope_parameters and transformers 4 rope_theta/rope_scaling give the same answer."""
    theta, scaling = get_rope_config(CONFIGS["llama3_rope"])
    assert theta == 10000.0 and scaling["rope_type"] == "llama3" and scaling["factor"] == 8.0
    assert get_rope_config(CONFIGS["llama"]) == (10000.0, None)
    # transformers 5 folds rope_scaling into rope_parameters on assignment, so mimic a v4 config.
    legacy = SimpleNamespace(rope_theta=5e5, rope_scaling={"type": "llama3", "factor": 8.0})
    assert get_rope_config(legacy) == (5e5, {"type": "llama3", "factor": 8.0, "rope_type": "llama3"})
    assert get_rope_config(SimpleNamespace(rope_theta=5e5, rope_scaling=None)) == (5e5, None)
    assert get_rope_config(SimpleNamespace(rope_theta=5e5, rope_scaling={"rope_type": "default"})) == (5e5, None)


def test_context_length_too_long_is_rejected(models, tmp_path):
    _, hf, _, _ = models
    hf.config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="--context-length"):
        ModelConfig.from_pretrained(str(tmp_path), load_format="dummy", context_length=257)
    assert ModelConfig.from_pretrained(str(tmp_path / "config.json"), load_format="dummy", context_length=100).context_len == 100


def test_dummy_weights_run_finite(models, tmp_path):
    """--load-format dummy needs only a config (folder or config.json) and gives finite logits."""
    name, hf, _, _ = models
    hf.config.save_pretrained(tmp_path)
    ours, config = load_model(str(tmp_path / "config.json"), load_format="dummy")
    runner = PagedModelRunner(ours, config, page_size=4)
    reqs = [runner.new_req(), runner.new_req()]
    out = runner.extend(reqs, [prompt(9, seed=5), prompt(3, seed=6)])
    out = runner.decode(reqs, out.next_token_logits.argmax(-1).tolist())
    assert out.next_token_logits.shape == (2, 256) and torch.isfinite(out.next_token_logits).all()


def test_config_errors_and_dtypes(tmp_path):
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype("half", "cpu") == torch.float16 and resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="--dtype"):
        resolve_dtype("fp8", "cpu")
    with pytest.raises(ValueError, match="not supported; supported: .*LlamaForCausalLM"):
        get_model_class("GPT2LMHeadModel")
    with pytest.raises(ValueError, match="allowed: .*torch_native"):
        create_attn_backend("nope", None)
    CONFIGS["llama"].save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_model(str(tmp_path))
