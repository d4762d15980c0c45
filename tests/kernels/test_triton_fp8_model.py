"""The model-runner path of --attention-backend triton --kv-cache-dtype fp8_e4m3, on the CPU
(Triton interpreter): a real ModelRunner (a one-layer Llama config, dummy weights, fp32) sizes and
allocates the FP8 pool, create_attn_backend builds the Triton backend on it, and the model runs
chunked prefill + decode through the Triton store/extend/decode kernels with per-layer scales.
The torch_native backend on its own FP8 pool with the same scales is the reference.

One layer, because the comparison is exact only there: both backends store the same bytes and
read them alike, but deeper layers see attention outputs that differ in the last fp32 bits, and
a value near an E4M3 rounding boundary then lands one step (6 %) apart; over SmolLM2's 30 layers
these flips cascade to logit differences of ~1 (measured), the FP8 noise itself. Real-weights
accuracy is the GPU test's job (tests/gpu/test_fp8_kv_gpu.py).

ServerArgs refuses triton on --device cpu (no CUDA), so the runner is built with torch_native and
the backend swapped, as the GPU server would create it.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from sglserve.configs.model_config import ModelConfig
from sglserve.layers.attention import create_attn_backend
from sglserve.layers.attention.torch_native_backend import TorchNativeAttnBackend
from sglserve.mem_cache.memory_pool import FP8_KV_DTYPE, MHATokenToKVPool
from sglserve.model_executor.model_runner import ModelRunner
from sglserve.server_args import ServerArgs
from tests.unit.model_driver import PagedModelRunner

if os.environ.get("TRITON_INTERPRET") != "1":  # a CPU ModelRunner driving Triton works on the interpreter only
    pytest.skip("the interpreter's test; on the GPU: tests/gpu/test_fp8_kv_gpu.py", allow_module_level=True)

HEADS, KV_HEADS, HEAD_DIM, VOCAB = 4, 2, 32, 512
SCALES = (2e-4, 1.5e-4)  # dummy weights give |k|, |v| ~ 1e-2: stored values then span E4M3, not its low end


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_llama")
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HEADS * HEAD_DIM,
           "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": HEADS,
           "num_key_value_heads": KV_HEADS, "vocab_size": VOCAB, "max_position_embeddings": 512,
           "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "float32"}
    (folder / "config.json").write_text(json.dumps(cfg))
    sa = ServerArgs(model_path=str(folder), load_format="dummy", device="cpu", dtype="float32",
                    kv_cache_dtype="fp8_e4m3", max_total_tokens=512, max_running_requests=4, context_length=256,
                    skip_tokenizer_init=True)
    return ModelRunner(ModelConfig.from_server_args(sa), sa)


def test_fp8_pool_is_sized_and_allocated_in_fp8(runner):
    mc = runner.model_config
    pool = runner.token_to_kv_pool
    assert runner.kv_dtype == FP8_KV_DTYPE and pool.k_buffer[0].dtype == FP8_KV_DTYPE
    fp8 = 2 * KV_HEADS * HEAD_DIM * mc.num_hidden_layers  # one byte per K and V value
    assert runner.kv_bytes_per_token == fp8
    assert MHATokenToKVPool.bytes_per_token(KV_HEADS, HEAD_DIM, mc.num_hidden_layers, torch.bfloat16) == 2 * fp8
    assert pool.kv_scales(0) == (1.0, 1.0)  # no calibrated scales given: SGLang's default


def test_triton_backend_on_fp8_pool_matches_torch_native(runner):
    mc = runner.model_config
    runner.token_to_kv_pool.set_kv_scales(0, *SCALES)
    triton_backend = create_attn_backend("triton", runner)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (37, 5)]
    outs = {}
    for name in ("triton", "native"):
        d = PagedModelRunner(runner.model, mc, page_size=1, num_slots=512, max_reqs=4, max_context_len=256)
        if name == "triton":  # the ModelRunner's own pools
            d.req_to_token_pool, d.kv_pool, d.backend = runner.req_to_token_pool, runner.token_to_kv_pool, triton_backend
        else:
            d.kv_pool = MHATokenToKVPool(512, 1, FP8_KV_DTYPE, KV_HEADS, HEAD_DIM, 1, "cpu", *SCALES)
            d.backend = TorchNativeAttnBackend(None)
        reqs = [d.new_req(), d.new_req()]
        first = d.extend(reqs, [p[:20] for p in prompts], return_all_logits=True).all_logits
        rest = d.extend(reqs[:1], [prompts[0][20:]], return_all_logits=True)  # prefix from the FP8 pool
        logits = [first, rest.all_logits]
        next_ids = [int(rest.next_token_logits[0].argmax()), int(first[-1].argmax())]
        for _ in range(3):  # decode steps of both requests
            out = d.decode(reqs, next_ids).next_token_logits
            logits.append(out)
            next_ids = out.argmax(-1).tolist()
        outs[name] = (torch.cat(logits), d.kv_pool)
    (tri, tri_pool), (nat, nat_pool) = outs["triton"], outs["native"]
    assert tri_pool.k_buffer[0].dtype == FP8_KV_DTYPE
    torch.testing.assert_close(tri, nat, atol=1e-4, rtol=1e-4)
    # The stores wrote the same bytes (the allocators handed out the same slots)
    used = slice(1, 1 + 37 + 5 + 3 * 2)
    assert torch.equal(tri_pool.k_buffer[0][used].view(torch.uint8), nat_pool.k_buffer[0][used].view(torch.uint8))
    assert torch.equal(tri_pool.v_buffer[0][used].view(torch.uint8), nat_pool.v_buffer[0][used].view(torch.uint8))
    # The scales were used: the stored K spans E4M3 well beyond the 1.0-scale magnitudes
    assert tri_pool.k_buffer[0][used].float().abs().max() > 8


def test_w8a8_decode_through_the_triton_backend_hands_o_proj_fp8_rows(runner, tmp_path, monkeypatch):
    """--quantization fp8 with the Triton backend: decode attention hands o_proj its x in FP8
    (Fp8Rows from the split merge), and the logits are those of o_proj quantizing x itself."""
    from sglserve.layers.quantization import fp8
    from sglserve_kernels.numerics import Fp8Rows

    cfg = json.loads(open(os.path.join(runner.model_config.model_path, "config.json")).read())
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    sa = ServerArgs(model_path=str(tmp_path), load_format="dummy", device="cpu", dtype="float32", quantization="fp8",
                    max_total_tokens=512, max_running_requests=4, context_length=256, skip_tokenizer_init=True)
    w8a8 = ModelRunner(ModelConfig.from_server_args(sa), sa)
    backend = create_attn_backend("triton", w8a8)
    o_proj = w8a8.model.model.layers[0].self_attn.o_proj
    handed = []
    apply = o_proj.quant_method.apply
    monkeypatch.setattr(o_proj.quant_method, "apply", lambda layer, x, bias, *a: handed.append(type(x)) or apply(layer, x, bias, *a))
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (9, 4)]
    logits = {}
    for fused in (True, False):
        monkeypatch.setattr(fp8, "FUSED_INPUT", fused)
        d = PagedModelRunner(w8a8.model, w8a8.model_config, page_size=1, num_slots=512, max_reqs=4, max_context_len=256)
        d.backend = backend
        reqs = [d.new_req(), d.new_req()]
        first = d.extend(reqs, prompts).next_token_logits
        handed.clear()
        steps = [d.decode(reqs, first.argmax(-1).tolist()).next_token_logits]
        steps.append(d.decode(reqs, steps[-1].argmax(-1).tolist()).next_token_logits)
        assert set(handed) == ({Fp8Rows} if fused else {torch.Tensor})
        logits[fused] = torch.cat([first, *steps])
    # The same x values reach o_proj's GEMM (test_fp8_fused_input.py checks the rows bit for bit); on
    # the CPU the GEMM from Fp8Rows is the interpreted skinny GEMM, from bf16 x torch's matmul, which
    # sum in different orders (on the GPU both are the skinny GEMM: test_fp8_loading.py's logits test)
    torch.testing.assert_close(logits[True], logits[False], atol=1e-6, rtol=1e-5)
