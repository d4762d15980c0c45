"""get_model: build a model from its ModelConfig and fill its weights (safetensors, GGUF, dummy)."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
from typing import Iterator, List, Tuple

import torch
from torch import nn
from tqdm import tqdm

from sglserve.configs.model_config import ModelConfig
from sglserve.layers.quantization import finish_quantization, quantize_model
from sglserve.models.registry import get_model_class

logger = logging.getLogger(__name__)

LOAD_FORMATS = ("auto", "safetensors", "gguf", "dummy")


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly in the target dtype (no fp32 copy of a bf16 model)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def safetensors_files(folder: str) -> List[str]:
    """The shards named by model.safetensors.index.json, else every *.safetensors in the folder.

    Without an index, Mistral's `consolidated*.safetensors` (a second copy in another
    naming scheme) is ignored when HF-named files exist.
    """
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
        return [os.path.join(folder, n) for n in names]
    files = sorted(glob.glob(os.path.join(folder, "*.safetensors")))
    hf_files = [f for f in files if not os.path.basename(f).startswith("consolidated")]
    if not (hf_files or files):
        raise FileNotFoundError(
            f"no *.safetensors in {folder!r}: only safetensors, GGUF (--load-format gguf) or dummy weights load"
        )
    return hf_files or files


def iter_safetensors_weights(folder: str) -> Iterator[Tuple[str, torch.Tensor]]:
    from safetensors import safe_open

    files = safetensors_files(folder)
    total = 0
    for path in files:  # headers only: the tensor count for the progress bar
        with safe_open(path, framework="pt", device="cpu") as f:
            total += len(f.keys())
    with tqdm(total=total, desc=f"Loading safetensors ({len(files)} files)", unit="tensor") as bar:
        for path in files:
            with safe_open(path, framework="pt", device="cpu") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name)
                    bar.update(1)


def init_dummy_weights(model: nn.Module, low: float = -1e-3, high: float = 1e-3, seed: int = 0) -> None:
    """Random weights for benchmarks without a checkpoint: small uniform values keep activations
    finite; norm weights stay 1 so hidden states keep a realistic scale."""
    for name, param in model.named_parameters():
        if name.endswith("norm.weight"):
            param.data.fill_(1.0)
            continue
        gen = torch.Generator(device=param.device).manual_seed(seed)
        param.data.uniform_(low, high, generator=gen)


def resolve_load_format(load_format: str, model_config: ModelConfig) -> str:
    if load_format not in LOAD_FORMATS:
        raise ValueError(f"--load-format={load_format!r} is invalid; allowed: {list(LOAD_FORMATS)}")
    if load_format == "auto":
        return "gguf" if model_config.gguf_file else "safetensors"
    if load_format == "gguf" and not model_config.gguf_file:
        raise ValueError(f"--load-format gguf needs a .gguf --model-path; got {model_config.model_path!r}")
    if load_format == "safetensors" and model_config.gguf_file:
        raise ValueError(f"--load-format safetensors needs a folder; {model_config.model_path!r} is a GGUF file")
    return load_format


def get_model(model_config: ModelConfig, load_format: str = "auto", device: str = "cpu") -> nn.Module:
    """The model on `device` in model_config.dtype, weights loaded, in eval mode."""
    fmt = resolve_load_format(load_format, model_config)
    cls = get_model_class(model_config.architecture)
    with _default_dtype(model_config.dtype), torch.device(device):
        model = cls(model_config.hf_config)
        quantized = quantize_model(model, model_config.quant_scheme)  # fp8 parameters, before any weight
    if fmt == "dummy":
        init_dummy_weights(model)
    elif fmt == "gguf":
        from sglserve.model_loader.gguf_loader import iter_gguf_weights

        model.load_weights(iter_gguf_weights(model_config.model_path))
    else:
        model.load_weights(iter_safetensors_weights(model_config.model_path))
    finish_quantization(model)
    if quantized:
        logger.info("%d linear layers in %s", quantized, model_config.quant_scheme.describe())
    logger.info(
        "loaded %s (%s weights, %.1fM params, %s) on %s",
        model_config.architecture, fmt, sum(p.numel() for p in model.parameters()) / 1e6, model_config.dtype, device,
    )  # fmt: skip
    return model.eval()
