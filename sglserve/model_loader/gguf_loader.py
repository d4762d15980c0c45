"""Read a llama.cpp GGUF file as (transformers parameter name, fp32 tensor) pairs.

Quantized tensors are dequantized with gguf-py. GGUF lists dims fastest-first, so the
numpy arrays gguf-py returns are already in torch's [out, in] order. For Llama, llama.cpp's
converter reorders the rows of q/k within each head (HF's rotate_half pairs i with i + d/2,
llama.cpp pairs 2i with 2i + 1); we undo that so the weights match HF's RoPE layout.
"""

from __future__ import annotations

import logging
import re
import struct
from dataclasses import dataclass
from typing import Dict, Iterator, List, Tuple

import numpy as np
import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)

GLOBAL_NAMES: Dict[str, str] = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
BLOCK_NAMES: Dict[str, str] = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# llama.cpp permutes q/k rows only in its Llama converter (Mistral files are arch "llama" too).
ROPE_PERMUTED_ARCHS = {"llama"}
# rope_freqs: Llama 3.1's RoPE factors, which the HF config already carries.
SKIPPED_TENSORS = {"rope_freqs.weight"}

_NAME_RE = re.compile(r"^(?:blk\.(\d+)\.)?(\w+)\.(weight|bias)$")


def gguf_to_hf_name(name: str) -> str:
    """'blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj.weight'."""
    m = _NAME_RE.match(name)
    table = BLOCK_NAMES if m and m.group(1) is not None else GLOBAL_NAMES
    if m is None or m.group(2) not in table:
        raise KeyError(f"GGUF tensor {name!r} has no known transformers name")
    block, base, suffix = m.groups()
    prefix = f"model.layers.{block}." if block is not None else ""
    return f"{prefix}{table[base]}.{suffix}"


def reverse_rope_permute(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Inverse of llama.cpp's permute: per head, rows [0,2,4,..,1,3,5,..] -> HF's [first half | second half].

    llama.cpp did w.reshape(n_head, 2, d/2, ...).swapaxes(1, 2); we reshape as (n_head, d/2, 2, ...)
    and swap back. Works for weights [n_head*d, in] and biases [n_head*d].
    """
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


@dataclass
class GGUFTensorInfo:
    name: str
    shape: Tuple[int, ...]  # numpy order (GGUF stores the dims fastest-first)
    ggml_type: int
    offset: int  # absolute, in bytes from the start of the file


_SCALAR_FORMATS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9


def read_gguf_layout(path: str) -> Tuple[Dict[str, object], List[GGUFTensorInfo]]:
    """Scalar and string metadata, and where each tensor lies: the GGUF header read directly.

    gguf.GGUFReader also builds numpy views of every metadata array (a tokenizer's ~100k
    vocabulary and merge strings: 4.4 s of SmolLM2's 6 s load); the weights need none of them,
    so arrays are skipped here without being decoded (values: GGUF spec v2/v3, little-endian).
    """
    with open(path, "rb") as f:
        buf = f.read(1 << 20)
        pos = 0

        def need(n: int) -> None:
            nonlocal buf
            while pos + n > len(buf):
                more = f.read(max(n, 1 << 20))
                if not more:
                    raise ValueError(f"{path}: truncated GGUF header")
                buf += more

        def unpack(fmt: str):
            nonlocal pos
            size = struct.calcsize("<" + fmt)
            need(size)
            value = struct.unpack_from("<" + fmt, buf, pos)
            pos += size
            return value[0] if len(value) == 1 else value

        def string() -> str:
            nonlocal pos
            n = unpack("Q")
            need(n)
            value = buf[pos:pos + n].decode("utf-8", errors="replace")
            pos += n
            return value

        def skip_value(vtype: int) -> None:
            nonlocal pos
            if vtype == _STRING:
                n = unpack("Q")
                need(n)
                pos += n
            elif vtype == _ARRAY:
                etype, count = unpack("I"), unpack("Q")
                if etype in _SCALAR_FORMATS:
                    size = struct.calcsize("<" + _SCALAR_FORMATS[etype]) * count
                    need(size)
                    pos += size
                else:
                    for _ in range(count):
                        skip_value(etype)
            else:
                unpack(_SCALAR_FORMATS[vtype])

        magic, version = unpack("4s"), unpack("I")
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError(f"{path}: not a GGUF v2/v3 file (magic {magic!r}, version {version})")
        n_tensors, n_kv = unpack("Q"), unpack("Q")
        meta: Dict[str, object] = {}
        for _ in range(n_kv):
            key, vtype = string(), unpack("I")
            if vtype == _STRING:
                meta[key] = string()
            elif vtype in _SCALAR_FORMATS:
                meta[key] = unpack(_SCALAR_FORMATS[vtype])
            else:
                skip_value(vtype)
        raw = []
        for _ in range(n_tensors):
            name, n_dims = string(), unpack("I")
            dims = [unpack("Q") for _ in range(n_dims)]
            raw.append((name, tuple(reversed(dims)), unpack("I"), unpack("Q")))
    alignment = int(meta.get("general.alignment", 32))
    data_start = (pos + alignment - 1) // alignment * alignment
    return meta, [GGUFTensorInfo(name, shape, t, data_start + off) for name, shape, t, off in raw]


def _tensor_bytes(data: np.memmap, info: GGUFTensorInfo) -> np.ndarray:
    """The tensor's raw bytes shaped as gguf.quants.dequantize takes them: rows of blocks."""
    import gguf

    block_size, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(info.ggml_type)]
    row_bytes = info.shape[-1] // block_size * type_size
    n_bytes = int(np.prod(info.shape[:-1], dtype=np.int64)) * row_bytes
    return data[info.offset:info.offset + n_bytes].reshape(*info.shape[:-1], row_bytes)


def iter_gguf_weights(path: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield each tensor of the file under its transformers name, dequantized, in HF layout."""
    import gguf

    meta, tensors = read_gguf_layout(path)
    data = np.memmap(path, dtype=np.uint8, mode="r")
    arch = meta["general.architecture"]
    n_head = int(meta[f"{arch}.attention.head_count"])
    n_kv_head = int(meta.get(f"{arch}.attention.head_count_kv", n_head))
    permute = arch in ROPE_PERMUTED_ARCHS
    for tensor in tqdm(tensors, desc="Loading GGUF tensors", unit="tensor"):
        if tensor.name in SKIPPED_TENSORS:
            continue
        name = gguf_to_hf_name(tensor.name)
        array = gguf.quants.dequantize(_tensor_bytes(data, tensor), gguf.GGMLQuantizationType(tensor.ggml_type))
        if not array.flags.writeable:  # F32/F16 come back as read-only views of the mmap
            array = array.copy()
        weight = torch.from_numpy(np.ascontiguousarray(array))
        if permute and ".self_attn.q_proj." in name:
            weight = reverse_rope_permute(weight, n_head)
        elif permute and ".self_attn.k_proj." in name:
            weight = reverse_rope_permute(weight, n_kv_head)
        yield name, weight
