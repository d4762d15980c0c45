"""get_model: build a model from its ModelConfig and fill its weights (safetensors, GGUF, dummy)."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import mmap
import os
import struct
import zlib
from typing import Iterator, List, Tuple

import torch
from torch import nn
from tqdm import tqdm

from sglserve.configs.model_config import ModelConfig
from sglserve.layers.linear import load_into
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


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}  # fmt: skip


def mmap_safetensors(path: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """Each tensor of one .safetensors file as a view of the file's memory map, nothing read yet.

    A tensor-parallel rank's weight loaders narrow these views to their slice before copying, so
    each rank reads only its own shard's pages from disk (the format: an 8-byte header length,
    a JSON header of dtype/shape/offsets, then the data)."""
    with open(path, "rb") as f:
        header_len = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(header_len))
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)  # private: writable views, no disk writes
    base = 8 + header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {name} has dtype {info['dtype']}, not one of {sorted(SAFETENSORS_DTYPES)}")
        start, end = info["data_offsets"]
        raw = torch.frombuffer(mm, dtype=torch.uint8, offset=base + start, count=end - start) if end > start \
            else torch.empty(0, dtype=torch.uint8)
        yield name, raw.view(SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])


def iter_safetensors_weights(folder: str) -> Iterator[Tuple[str, torch.Tensor]]:
    files = safetensors_files(folder)
    tensors = [t for path in files for t in mmap_safetensors(path)]  # views: headers only are read here
    for name, tensor in tqdm(tensors, desc=f"Loading safetensors ({len(files)} files)", unit="tensor"):
        yield name, tensor


def init_dummy_weights(model: nn.Module, low: float = -1e-3, high: float = 1e-3, seed: int = 0) -> None:
    """Random weights for benchmarks without a checkpoint: small uniform values keep activations
    finite; norm weights stay 1 so hidden states keep a realistic scale.

    Each checkpoint tensor (q_proj, gate_proj, ... as a checkpoint would hold it) is drawn whole
    from a generator seeded by its name and goes through the layer's weight_loader, so every
    tensor-parallel size holds slices of the same model (TP=2 vs TP=1 comparisons on dummy weights)."""
    seen = set()
    for mod_name, module in model.named_modules():
        for pname, param in module.named_parameters(recurse=False):
            if id(param) in seen:  # a tied lm_head
                continue
            seen.add(id(param))
            if pname == "weight" and "norm" in mod_name.rsplit(".", 1)[-1]:
                param.data.fill_(1.0)
                continue
            shards = module.checkpoint_shards(pname == "bias") if hasattr(module, "checkpoint_shards") \
                else [(None, tuple(param.shape))]
            for shard_id, shape in shards:
                key = f"{mod_name}.{pname}:{shard_id}"
                gen = torch.Generator(device=param.device).manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
                full = torch.empty(shape, dtype=param.dtype, device=param.device).uniform_(low, high, generator=gen)
                load_into(param, full, shard_id)


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
