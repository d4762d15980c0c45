"""FP8 on the CPU path: every checkpoint layout loads into the right rows, and the loaded model
matches a dequantized reference.

Layouts (tiny checkpoints written by tests/tiny_checkpoints.py exactly as shipped):
- `quant_method: "fp8"` + `weight_block_size` [128, 128] (Qwen3-FP8 / DeepSeek): `weight_scale_inv`;
- compressed-tensors float8 (RedHatAI): per-channel or per-tensor `weight_scale`, dynamic
  activations, static `input_scale`, or none (weights only);
- `--quantization fp8` on an unquantized checkpoint (per-channel, quantized at load).
The reference is the same model unquantized, with the dequantized weights written as fp32.
"""

from __future__ import annotations

import pytest
import torch

from sglserve.layers.quantization import get_quant_scheme
from sglserve.layers.quantization.config import QuantizationError
from sglserve.layers.quantization.fp8_utils import FP8_DTYPE, dequantize, quantize_per_channel
from tests.tiny_checkpoints import (
    tiny_config,
    tiny_state_dict,
    write_compressed_tensors_fp8,
    write_fp8_block,
    write_unquantized,
)
from tests.unit.model_driver import PagedModelRunner, load_model

PROMPTS = [[1, 523, 9407, 314, 1789, 28, 9124, 17, 30, 44], [1, 4010, 2240, 22, 7, 1109, 3, 88]]


@pytest.fixture(scope="module")
def tiny():
    config = tiny_config()
    return config, tiny_state_dict(config)


def _logits(folder: str, device: str = "cpu", **kw) -> tuple:
    model, config = load_model(folder, device=device, **kw)
    runner = PagedModelRunner(model, config, device=device)
    reqs = [runner.new_req() for _ in PROMPTS]
    return model, runner.extend(reqs, PROMPTS, return_all_logits=True).all_logits.float().cpu()


def _calibration_amax(folder: str) -> dict:
    """Input amax of every linear module over the prompts: what a static FP8 calibration records."""
    model, _ = load_model(folder)
    amax = {}
    hooks = []
    for name, module in model.named_modules():
        if name.endswith(("qkv_proj", "o_proj", "gate_up_proj", "down_proj")):
            def hook(mod, args, _out, name=name):
                amax[name] = max(amax.get(name, 0.0), float(args[0].abs().max()))
            hooks.append(module.register_forward_hook(hook))
    runner = PagedModelRunner(model, _)
    runner.extend([runner.new_req() for _ in PROMPTS], PROMPTS)
    out = {}
    for name, value in amax.items():  # checkpoint names: q/k/v_proj share qkv_proj's input
        for ckpt in {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}.get(
                name.rsplit(".", 1)[1], (name.rsplit(".", 1)[1],)):
            out[name.rsplit(".", 1)[0] + "." + ckpt] = value
    return out


def _check_fused_rows(model, ref: dict) -> None:
    """Each fused layer dequantizes to its checkpoint shards, in order: scales landed in the right rows."""
    layer = model.model.layers[1]
    for fused, parts, prefix in ((layer.self_attn.qkv_proj, ("q_proj", "k_proj", "v_proj"), "self_attn"),
                                 (layer.mlp.gate_up_proj, ("gate_proj", "up_proj"), "mlp")):
        assert fused.weight.dtype == FP8_DTYPE
        got = dequantize(fused.weight, fused.weight_scale, fused.weight_block, torch.float32).cpu()
        want = torch.cat([ref[f"model.layers.1.{prefix}.{p}.weight"] for p in parts])
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def _close(got: torch.Tensor, want: torch.Tensor, max_rel: float, min_top1: float) -> None:
    rel = float((got - want).norm() / want.norm())
    top1 = float((got.argmax(-1) == want.argmax(-1)).float().mean())
    assert rel < max_rel and top1 >= min_top1, f"relative error {rel:.4f}, top-1 agreement {top1:.3f}"


DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU")])]  # on CUDA the linears go through fp8_linear's dispatch


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["fp8-block", "ct-channel-dynamic", "ct-tensor-static", "ct-channel-weight-only"])
def test_fp8_checkpoint_matches_dequantized_reference(tiny, tmp_path, layout, device):
    config, sd = tiny
    src = write_unquantized(str(tmp_path / "bf16"), sd, config, torch.float32, tokenizer=False)
    folder = str(tmp_path / layout)
    if layout == "fp8-block":
        ref = write_fp8_block(folder, sd, config, tokenizer=False)
    elif layout == "ct-tensor-static":
        ref = write_compressed_tensors_fp8(folder, sd, config, "tensor", "static", _calibration_amax(src), tokenizer=False)
    else:
        acts = "dynamic" if layout == "ct-channel-dynamic" else None
        ref = write_compressed_tensors_fp8(folder, sd, config, "channel", acts, tokenizer=False)
    ref_folder = write_unquantized(str(tmp_path / "ref"), ref, config, torch.float32, tokenizer=False)

    model, got = _logits(folder, device)
    _check_fused_rows(model, ref)
    _, want = _logits(ref_folder, device)
    if layout == "ct-channel-weight-only":  # W8A16: the same math as the dequantized model
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3)
    else:  # activations rounded through FP8 too (about 3 significant bits)
        _close(got, want, max_rel=0.1, min_top1=0.9)
    if layout == "ct-tensor-static":
        scale = model.model.layers[0].self_attn.qkv_proj.input_scale
        assert scale.shape == (1,) and float(scale) > 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("layout", ["ct-channel-dynamic", "ct-tensor-static", "quantize-at-load"])
def test_fused_fp8_input_changes_no_logit(tiny, tmp_path, layout, monkeypatch):
    """RMSNorm and SiLU-and-mul hand the W8A8 GEMMs x already in FP8 (fp8_input) on CUDA: the same
    bits as the GEMMs quantizing x themselves, through the skinny GEMM (8 rows) and row-wise
    _scaled_mm (18 rows), in bf16."""
    from sglserve.layers.quantization import fp8

    config, sd = tiny
    quantization = None
    if layout == "quantize-at-load":
        folder, quantization = write_unquantized(str(tmp_path / "bf16"), sd, config, torch.bfloat16, tokenizer=False), "fp8"
    elif layout == "ct-tensor-static":
        src = write_unquantized(str(tmp_path / "bf16"), sd, config, torch.float32, tokenizer=False)
        folder = str(tmp_path / layout)
        write_compressed_tensors_fp8(folder, sd, config, "tensor", "static", _calibration_amax(src), tokenizer=False)
    else:
        folder = str(tmp_path / layout)
        write_compressed_tensors_fp8(folder, sd, config, "channel", "dynamic", tokenizer=False)
    model, mc = load_model(folder, device="cuda", dtype="bfloat16", quantization=quantization)
    assert model.model.layers[0].mlp.down_proj.fp8_input() is not None
    logits = {}
    for fused in (True, False):
        monkeypatch.setattr(fp8, "FUSED_INPUT", fused)
        runner = PagedModelRunner(model, mc, device="cuda")
        one = runner.extend([runner.new_req()], [PROMPTS[1]], return_all_logits=True).all_logits
        two = runner.extend([runner.new_req() for _ in PROMPTS], PROMPTS, return_all_logits=True).all_logits
        logits[fused] = (one, two)
    for got, want in zip(logits[True], logits[False]):
        assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_decode_attention_hands_o_proj_fp8_rows_and_changes_no_logit(tiny, tmp_path, monkeypatch):
    """Decode through the Triton backend with --quantization fp8: the split merge hands o_proj its
    x in FP8 (Fp8Rows), and the logits are the bits of o_proj quantizing bf16 x itself, at 1 and
    2 rows (the skinny GEMM's FMA path) and at 18 (row-wise _scaled_mm, the merge per head)."""
    from types import SimpleNamespace

    from sglserve.layers.attention.triton_backend import TritonAttnBackend
    from sglserve.layers.quantization import fp8
    from sglserve_kernels.numerics import Fp8Rows

    config, sd = tiny
    folder = write_unquantized(str(tmp_path / "bf16"), sd, config, torch.bfloat16, tokenizer=False)
    model, mc = load_model(folder, device="cuda", dtype="bfloat16", quantization="fp8")
    o_proj = model.model.layers[0].self_attn.o_proj
    handed = []
    apply = o_proj.quant_method.apply
    monkeypatch.setattr(o_proj.quant_method, "apply", lambda layer, x, bias, *a: handed.append(type(x)) or apply(layer, x, bias, *a))
    fake = SimpleNamespace(model_config=mc, server_args=SimpleNamespace(cuda_graph_max_bs=32, tp_size=1),
                           device="cuda", max_running_requests=32)
    logits = {}
    for fused in (True, False):
        monkeypatch.setattr(fp8, "FUSED_INPUT", fused)
        runner = PagedModelRunner(model, mc, device="cuda", max_reqs=32)
        runner.backend = TritonAttnBackend(fake)
        out = []
        for n in (1, 2, 18):
            reqs = [runner.new_req() for _ in range(n)]
            prompts = [PROMPTS[i % 2][: 5 + i % 4] for i in range(n)]
            ids = runner.extend(reqs, prompts).next_token_logits.argmax(-1).tolist()
            handed.clear()
            for _ in range(2):
                step = runner.decode(reqs, ids).next_token_logits
                out.append(step)
                ids = step.argmax(-1).tolist()
            assert set(handed) == ({Fp8Rows} if fused and n <= 16 else {torch.Tensor})
        logits[fused] = out
    for got, want in zip(logits[True], logits[False]):
        assert torch.equal(got, want)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("quantization", [None, "fp8"])
def test_split_sums_handed_on_change_no_logit(tiny, tmp_path, monkeypatch, quantization):
    """Decode with every skinny GEMM split in 2 (bf16, and W8A8 on the FP8 dot): o_proj and
    down_proj hand their partials to the fused residual-add norm, qkv_proj to RoPE
    (numerics.SplitSums), instead of running the reduce kernel, and the logits are the same bits,
    at 1, 2 and 5 rows."""
    from sglserve_kernels import gemv_dispatch
    from sglserve_kernels.gemv import GemvConfig
    from sglserve_kernels.numerics import SplitSums

    config, sd = tiny
    folder = write_unquantized(str(tmp_path / "bf16"), sd, config, torch.bfloat16, tokenizer=False)
    model, mc = load_model(folder, device="cuda", dtype="bfloat16", quantization=quantization)
    split = GemvConfig(block_n=16, block_k=64, split_k=2, num_stages=1, fp8_dot=quantization == "fp8")
    monkeypatch.setattr(gemv_dispatch, "_select", lambda *a: split)
    handed = []
    for name in ("skinny_gemm", "skinny_gemm_fp8"):
        real = getattr(gemv_dispatch, name)
        monkeypatch.setattr(gemv_dispatch, name, lambda *a, _real=real: handed.append(type(y := _real(*a))) or y)
    logits = {}
    for on in (True, False):
        monkeypatch.setattr(gemv_dispatch, "HAND_ON_SUMS", on)
        runner = PagedModelRunner(model, mc, device="cuda")
        out = []
        for n in (1, 2, 5):
            reqs = [runner.new_req() for _ in range(n)]
            ids = runner.extend(reqs, [PROMPTS[i % 2][: 5 + i] for i in range(n)]).next_token_logits.argmax(-1).tolist()
            handed.clear()
            for _ in range(2):
                step = runner.decode(reqs, ids).next_token_logits
                out.append(step)
                ids = step.argmax(-1).tolist()
            # per layer gate_up reduces itself, qkv_proj, o_proj and down_proj hand on (when on)
            assert handed.count(SplitSums) == (2 * 3 * config["num_hidden_layers"] if on else 0)
        logits[on] = out
    for got, want in zip(logits[True], logits[False]):
        assert torch.equal(got, want)


def test_quantize_at_load_per_channel(tiny, tmp_path):
    """--quantization fp8 on an unquantized checkpoint: per-channel fp8 weights, close to fp32."""
    config, sd = tiny
    folder = write_unquantized(str(tmp_path / "fp32"), sd, config, torch.float32, tokenizer=False)
    model, got = _logits(folder, quantization="fp8")
    qkv = model.model.layers[0].self_attn.qkv_proj
    assert qkv.weight.dtype == FP8_DTYPE and qkv.weight_scale.shape == (qkv.output_size, 1)
    w = torch.cat([sd[f"model.layers.0.self_attn.{p}.weight"] for p in ("q_proj", "k_proj", "v_proj")])
    q, scale = quantize_per_channel(w)
    torch.testing.assert_close(qkv.weight.float(), q.float(), rtol=0, atol=0)
    assert model.model.embed_tokens.weight.dtype == torch.float32  # the embedding / LM head stay unquantized
    _, want = _logits(folder)
    _close(got, want, max_rel=0.1, min_top1=0.9)


def test_ignore_list_keeps_layers_unquantized(tiny, tmp_path):
    config, sd = tiny
    folder = str(tmp_path / "ct")
    write_compressed_tensors_fp8(folder, sd, config, "channel", "dynamic", tokenizer=False)
    import json
    import os

    path = os.path.join(folder, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    cfg["quantization_config"]["ignore"] = ["lm_head", "re:.*layers\\.1\\.mlp\\.down_proj$"]
    with open(path, "w") as f:
        json.dump(cfg, f)
    # the checkpoint then holds that layer unquantized: rewrite it in bf16 without a scale
    from safetensors.torch import load_file, save_file

    tensors = load_file(os.path.join(folder, "model.safetensors"))
    tensors["model.layers.1.mlp.down_proj.weight"] = sd["model.layers.1.mlp.down_proj.weight"].to(torch.bfloat16)
    del tensors["model.layers.1.mlp.down_proj.weight_scale"]
    save_file(tensors, os.path.join(folder, "model.safetensors"))
    model, _ = load_model(folder)
    assert model.model.layers[1].mlp.down_proj.quant_method is None
    assert model.model.layers[0].mlp.down_proj.weight.dtype == FP8_DTYPE


@pytest.mark.parametrize("qc,flag,message", [
    ({"quant_method": "awq", "bits": 4, "group_size": 128, "zero_point": True, "version": "gemm"}, None, "'awq'"),
    ({"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False, "sym": True}, None, "'gptq'"),
    ({"quant_method": "bitsandbytes", "load_in_4bit": True}, None, "'bitsandbytes'"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic", "fmt": "e5m2"}, None, "e5m2"),
    (None, "compressed-tensors", "needs a compressed-tensors checkpoint"),
    ({"quant_method": "fp8", "activation_scheme": "dynamic"}, "compressed-tensors", "does not match"),
    (None, "gptq", "not implemented"),
    (None, "foo", "not a known quantization method"),
])
def test_refusals_name_the_method(qc, flag, message):
    with pytest.raises(QuantizationError, match=message) as e:
        get_quant_scheme(qc, flag)
    assert "supported" in str(e.value) or "match" in str(e.value) or "needs" in str(e.value)
    assert "\n" not in str(e.value)


def test_compressed_tensors_int8_refused():
    from tests.tiny_checkpoints import ct_quant_config

    qc = ct_quant_config("channel", "dynamic")
    qc["config_groups"]["group_0"]["weights"]["type"] = "int"
    qc["format"] = "int-quantized"
    with pytest.raises(QuantizationError, match="int-quantized"):
        get_quant_scheme(qc, None)


def test_fp8_kv_cache_close_to_model_dtype(tiny, tmp_path):
    """--kv-cache-dtype fp8_e4m3: the pool stores one byte per value and attention reads it back."""
    from sglserve.mem_cache.memory_pool import FP8_KV_DTYPE, MHATokenToKVPool

    config, sd = tiny
    folder = write_unquantized(str(tmp_path / "fp32"), sd, config, torch.float32, tokenizer=False)
    model, mc = load_model(folder)
    runner = PagedModelRunner(model, mc)
    want = runner.extend([runner.new_req() for _ in PROMPTS], PROMPTS, return_all_logits=True).all_logits
    fp8 = PagedModelRunner(model, mc)
    fp8.kv_pool = MHATokenToKVPool(4096, 1, FP8_KV_DTYPE, mc.num_key_value_heads, mc.head_dim, mc.num_hidden_layers, "cpu")
    reqs = [fp8.new_req() for _ in PROMPTS]
    got = fp8.extend(reqs, PROMPTS, return_all_logits=True).all_logits
    assert fp8.kv_pool.k_buffer[0].dtype == FP8_KV_DTYPE
    assert MHATokenToKVPool.bytes_per_token(2, 64, 2, FP8_KV_DTYPE) * 4 == MHATokenToKVPool.bytes_per_token(2, 64, 2, torch.float32)
    _close(got, want, max_rel=0.1, min_top1=0.9)
    assert not torch.equal(got, want)  # the FP8 pool really was read
    # decode reads the cached prefix back from FP8 too
    steps = fp8.greedy(reqs, got[[len(PROMPTS[0]) - 1, -1]], 4)
    assert all(len(s) == 4 for s in steps)
