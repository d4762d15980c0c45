"""Read a llama.cpp GGUF file as (transformers parameter name, fp32 tensor) pairs.

Quantized tensors are dequantized with gguf-py. GGUF lists dims fastest-first, so the
numpy arrays gguf-py returns are already in torch's [out, in] order. For Llama, llama.cpp's
converter reorders the rows of q/k within each head (HF's rotate_half pairs i with i + d/2,
llama.cpp pairs 2i with 2i + 1); we undo that so the weights match HF's RoPE layout.
"""

from __future__ import annotations

import logging
import re
from typing import Dict, Iterator, Tuple

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


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    if field is None:
        return default
    value = field.contents()
    return value[0] if isinstance(value, list) and value else value


def iter_gguf_weights(path: str) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yield each tensor of the file under its transformers name, dequantized, in HF layout."""
    import gguf

    reader = gguf.GGUFReader(path)
    arch = _field(reader, "general.architecture")
    n_head = int(_field(reader, f"{arch}.attention.head_count"))
    n_kv_head = int(_field(reader, f"{arch}.attention.head_count_kv", n_head))
    permute = arch in ROPE_PERMUTED_ARCHS
    for tensor in tqdm(reader.tensors, desc="Loading GGUF tensors", unit="tensor"):
        if tensor.name in SKIPPED_TENSORS:
            continue
        name = gguf_to_hf_name(tensor.name)
        array = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if not array.flags.writeable:  # F32/F16 come back as read-only views of the mmap
            array = array.copy()
        weight = torch.from_numpy(np.ascontiguousarray(array))
        if permute and ".self_attn.q_proj." in name:
            weight = reverse_rope_permute(weight, n_head)
        elif permute and ".self_attn.k_proj." in name:
            weight = reverse_rope_permute(weight, n_kv_head)
        yield name, weight
