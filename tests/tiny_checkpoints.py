"""Tiny Llama checkpoints written the way the hub ships them, for the quantization and hub tests,
and `save_random_llama`: a plain random Llama folder (the tensor-parallel tests).

Every writer lays out config.json (with its quantization_config), model.safetensors with the
checkpoint's own tensor names (fp8 `weight` + `weight_scale` / `weight_scale_inv` /
`input_scale`), and the SmolLM2 tokenizer files, so a server can serve the folder.

The model is random but "peaky" (large tied embeddings): its top-1 margins are wide, so a
greedy continuation does not flip on FP8 rounding.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Optional

import torch

from sglserve.layers.quantization.fp8_utils import FP8_MAX, dequantize, quantize_per_block, quantize_per_channel, quantize_per_tensor

PROJS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VOCAB = 49152  # SmolLM2's tokenizer


def tiny_config(num_layers: int = 2) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": VOCAB, "hidden_size": 256,
        "intermediate_size": 512, "num_hidden_layers": num_layers, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 64, "max_position_embeddings": 2048, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "hidden_act": "silu",
        "bos_token_id": 1, "eos_token_id": 2,
    }


def tiny_state_dict(config: dict, seed: int = 0) -> Dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    h, i = config["hidden_size"], config["intermediate_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes = {"q_proj": (q, h), "k_proj": (kv, h), "v_proj": (kv, h), "o_proj": (h, q),
              "gate_proj": (i, h), "up_proj": (i, h), "down_proj": (h, i)}
    sd = {"model.embed_tokens.weight": torch.randn(config["vocab_size"], h, generator=g),
          "model.norm.weight": torch.ones(h)}
    for layer in range(config["num_hidden_layers"]):
        pre = f"model.layers.{layer}."
        sd[pre + "input_layernorm.weight"] = torch.ones(h)
        sd[pre + "post_attention_layernorm.weight"] = torch.ones(h)
        for name, shape in shapes.items():
            part = "self_attn" if name.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            sd[f"{pre}{part}.{name}.weight"] = torch.randn(*shape, generator=g) * shape[1] ** -0.5
    return sd


def is_linear(name: str) -> bool:
    return name.endswith(".weight") and name.split(".")[-2] in PROJS


def save_tokenizer(folder: str) -> None:
    from sglserve.server_args import default_model_path
    from sglserve.utils.hf_transformers_utils import get_tokenizer

    get_tokenizer(default_model_path()).save_pretrained(folder)


def _write(folder: str, config: dict, tensors: Dict[str, torch.Tensor], tokenizer: bool) -> str:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f, indent=2)
    with open(os.path.join(folder, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": 1, "eos_token_id": 2}, f)
    save_file({k: v.contiguous() for k, v in tensors.items()}, os.path.join(folder, "model.safetensors"),
              metadata={"format": "pt"})
    if tokenizer:
        save_tokenizer(folder)
    return folder


def write_unquantized(folder: str, sd: Dict[str, torch.Tensor], config: dict, dtype=torch.bfloat16,
                      tokenizer: bool = True) -> str:
    return _write(folder, config, {k: v.to(dtype) for k, v in sd.items()}, tokenizer)


def write_fp8_block(folder: str, sd: Dict[str, torch.Tensor], config: dict, block=(128, 128),
                    tokenizer: bool = True) -> Dict[str, torch.Tensor]:
    """Qwen3-FP8 / DeepSeek layout: `weight` F8_E4M3 + `weight_scale_inv` [out/128, in/128] F32.
    Returns the dequantized state dict (the reference)."""
    tensors, ref = {}, {}
    for name, w in sd.items():
        if is_linear(name):
            q, scale = quantize_per_block(w, block)
            tensors[name], tensors[name + "_scale_inv"] = q, scale
            ref[name] = dequantize(q, scale, block, torch.float32)
        else:
            tensors[name] = w.to(torch.bfloat16)
            ref[name] = tensors[name].float()
    qc = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8", "weight_block_size": list(block)}
    _write(folder, {**config, "quantization_config": qc}, tensors, tokenizer)
    return ref


def ct_quant_config(strategy: str, activations: Optional[str]) -> dict:
    """compressed-tensors' quantization_config as llm-compressor writes it for FP8 / FP8-dynamic."""
    weights = {"actorder": None, "block_structure": None, "dynamic": False, "group_size": None, "num_bits": 8,
               "observer": "minmax", "observer_kwargs": {}, "strategy": strategy, "symmetric": True, "type": "float"}
    acts = None
    if activations is not None:
        acts = {**weights, "dynamic": activations == "dynamic", "observer": None if activations == "dynamic" else "minmax",
                "strategy": "token" if activations == "dynamic" else "tensor"}
    return {
        "config_groups": {"group_0": {"input_activations": acts, "output_activations": None,
                                      "targets": ["Linear"], "weights": weights}},
        "format": "float-quantized", "global_compression_ratio": 1.5, "ignore": ["lm_head"],
        "kv_cache_scheme": None, "quant_method": "compressed-tensors", "quantization_status": "compressed",
    }


def write_compressed_tensors_fp8(folder: str, sd: Dict[str, torch.Tensor], config: dict, strategy: str = "channel",
                                 activations: Optional[str] = "dynamic",
                                 input_amax: Optional[Dict[str, float]] = None,
                                 tokenizer: bool = True) -> Dict[str, torch.Tensor]:
    """RedHatAI layout: `weight` F8_E4M3, `weight_scale` BF16 ([out, 1] per channel, [1] per tensor),
    `input_scale` [1] for static activations (from `input_amax`: module name -> calibration amax).
    Returns the dequantized state dict (the reference)."""
    tensors, ref = {}, {}
    for name, w in sd.items():
        if is_linear(name):
            q, scale = quantize_per_channel(w) if strategy == "channel" else quantize_per_tensor(w)
            scale = scale.to(torch.bfloat16)  # RedHatAI's checkpoints store bf16 scales
            tensors[name], tensors[name + "_scale"] = q, scale
            ref[name] = dequantize(q, scale.float(), None, torch.float32)
            if activations == "static":
                module = name[: -len(".weight")]
                tensors[module + ".input_scale"] = torch.tensor([input_amax[module] / FP8_MAX], dtype=torch.bfloat16)
        else:
            tensors[name] = w.to(torch.bfloat16)
            ref[name] = tensors[name].float()
    _write(folder, {**config, "quantization_config": ct_quant_config(strategy, activations)}, tensors, tokenizer)
    return ref


def save_random_llama(folder: str, hidden: int, intermediate: int, vocab: int, heads: int = 4, kv_heads: int = 2,
                      layers: int = 2, seed: int = 0) -> str:
    """A transformers Llama with weights N(0, 0.1) and norms U(0.5, 1.5) (no near-ties: greedy
    tokens are stable across tensor-parallel sizes in fp32), saved as safetensors, untied."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=kv_heads, vocab_size=vocab,
                         max_position_embeddings=max(256, vocab), tie_word_embeddings=False)
    hf = AutoModelForCausalLM.from_config(config).float().eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in name else p.normal_(0.0, 0.1)
    hf.save_pretrained(folder)
    return folder
