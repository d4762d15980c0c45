"""ModelConfig: what the engine needs to know about a model, read from config.json or a GGUF file."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

import torch
from transformers import AutoConfig, PretrainedConfig

from sglserve.layers.quantization.config import Fp8Scheme, check_model_quantization
from sglserve.utils.gguf_cache import split_model_path
from sglserve.utils.hf_transformers_utils import get_gguf_config

logger = logging.getLogger(__name__)

# GGUF files and bare configs often carry no `architectures`; derive it from model_type.
MODEL_TYPE_TO_ARCHITECTURE = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}

DTYPES = {
    "half": torch.float16,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float": torch.float32,
    "float32": torch.float32,
}


def get_rope_config(config: PretrainedConfig) -> Tuple[float, Optional[Dict[str, Any]]]:
    """(rope_theta, rope scaling dict or None) from either config style.

    transformers 5 keeps everything in `rope_parameters` (rope_theta, rope_type and e.g. the
    llama3 factors); transformers 4 has `rope_theta` plus an optional `rope_scaling` dict.
    The scaling dict is returned only when rope_type is not "default".
    """
    params = getattr(config, "rope_parameters", None)
    if params and "rope_theta" not in params and all(isinstance(v, dict) for v in params.values()):
        raise ValueError(f"per-layer-type rope_parameters are not supported: {sorted(params)}")
    if params:
        theta = params.get("rope_theta", getattr(config, "rope_theta", None))
        scaling = dict(params)
    else:
        theta = getattr(config, "rope_theta", None)
        scaling = dict(getattr(config, "rope_scaling", None) or {})
    theta = 10000.0 if theta is None else float(theta)
    scaling.pop("rope_theta", None)
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type == "default":
        return theta, None
    scaling["rope_type"] = rope_type
    return theta, scaling


def get_head_dim(config: PretrainedConfig) -> int:
    head_dim = getattr(config, "head_dim", None)
    return int(head_dim) if head_dim else config.hidden_size // config.num_attention_heads


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """'auto' is bf16 on CUDA and fp32 on CPU (CPU bf16 matmuls are slow and inexact)."""
    if dtype == "auto":
        return torch.bfloat16 if str(device).startswith("cuda") else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"--dtype={dtype!r} is invalid; allowed: {['auto', *DTYPES]}")
    return DTYPES[dtype]


@dataclass
class ModelConfig:
    hf_config: PretrainedConfig
    model_path: str
    gguf_file: Optional[str]
    dtype: torch.dtype
    context_len: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    architecture: str
    quant_scheme: Optional[Fp8Scheme] = None  # FP8 linear layers (--quantization, the checkpoint's config)

    def params_per_token(self) -> int:
        """Weights every token multiplies through (attention and MLP projections; dense models):
        a step's compute is about twice this times its tokens, so it sizes the step budget."""
        hf, hidden = self.hf_config, self.hidden_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        inter = getattr(hf, "intermediate_size", None) or 4 * hidden
        return self.num_hidden_layers * (hidden * (2 * q + 2 * kv) + 3 * hidden * inter)

    @classmethod
    def from_server_args(cls, server_args: Any) -> "ModelConfig":
        return cls.from_pretrained(
            server_args.model_path,
            load_format=server_args.load_format,
            dtype=server_args.dtype,
            context_length=server_args.context_length,
            device=server_args.device,
            trust_remote_code=getattr(server_args, "trust_remote_code", False),
            quantization=getattr(server_args, "quantization", None),
        )

    @classmethod
    def from_pretrained(
        cls,
        model_path: str,
        load_format: str = "auto",
        dtype: str = "auto",
        context_length: Optional[int] = None,
        device: str = "cpu",
        trust_remote_code: bool = False,
        quantization: Optional[str] = None,
    ) -> "ModelConfig":
        """model_path: an HF folder, a .gguf file, or (dummy weights) a config.json path.
        quantization: --quantization (None: the checkpoint's own quantization_config, if any)."""
        folder, gguf_file = split_model_path(model_path, load_format)
        if gguf_file is not None:  # GGUF weights are dequantized at load; --quantization may re-quantize them
            hf_config = get_gguf_config(os.path.join(folder, gguf_file), trust_remote_code)
            model_path = os.path.join(folder, gguf_file)
            scheme = check_model_quantization(model_path, quantization, load_format)
        else:
            scheme = check_model_quantization(folder, quantization, load_format)
            hf_config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code)
        config = cls.from_hf_config(hf_config, model_path, gguf_file, resolve_dtype(dtype, device), context_length)
        config.quant_scheme = scheme
        return config

    @classmethod
    def from_hf_config(
        cls,
        hf_config: PretrainedConfig,
        model_path: str,
        gguf_file: Optional[str] = None,
        dtype: torch.dtype = torch.float32,
        context_length: Optional[int] = None,
    ) -> "ModelConfig":
        max_pos = getattr(hf_config, "max_position_embeddings", None)
        if context_length is not None and max_pos is not None and context_length > max_pos:
            raise ValueError(
                f"--context-length={context_length} is larger than the model's max_position_embeddings={max_pos}; "
                f"pass --context-length <= {max_pos}"
            )
        context_len = context_length or max_pos
        if context_len is None:
            raise ValueError("the model config has no max_position_embeddings; pass --context-length")
        sliding = getattr(hf_config, "sliding_window", None)
        if sliding and getattr(hf_config, "use_sliding_window", True) and sliding < context_len:
            logger.warning("sliding_window=%d is not implemented: attention sees the whole context", sliding)
        architectures = getattr(hf_config, "architectures", None) or []
        architecture = architectures[0] if architectures else MODEL_TYPE_TO_ARCHITECTURE.get(hf_config.model_type)
        if architecture is None:
            raise ValueError(f"cannot tell the architecture of model_type={hf_config.model_type!r}")
        heads = hf_config.num_attention_heads
        return cls(
            hf_config=hf_config,
            model_path=model_path,
            gguf_file=gguf_file,
            dtype=dtype,
            context_len=int(context_len),
            num_hidden_layers=hf_config.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=getattr(hf_config, "num_key_value_heads", None) or heads,
            head_dim=get_head_dim(hf_config),
            hidden_size=hf_config.hidden_size,
            vocab_size=hf_config.vocab_size,
            architecture=architecture,
        )
