"""sglserve_kernels: Triton kernels of the GPU fast path, each next to a torch reference.

Installed under the import name `sglserve_kernels` (never `kernels`). No module is named
like a function it exports (importing a submodule sets the package attribute of that
name, which would shadow the function). Attributes load
lazily, so `import sglserve_kernels` does not import Triton; sglserve.layers.custom_op
looks kernels up here by name (`getattr(sglserve_kernels, name, None)`):

  rmsnorm(x, weight, eps, residual=None)                  -> out | (out, residual)
  fused_add_rmsnorm(x, residual, weight, eps)             -> (x, residual), in place
  silu_and_mul(x [T, 2I])                                 -> [T, I]
  rmsnorm_fp8(x, weight, eps, residual=None, input_scale=None) -> Fp8Rows | (Fp8Rows, residual) | None
  silu_and_mul_fp8(x [T, 2I], input_scale=None)           -> Fp8Rows | None
    (numerics.Fp8Rows: the output quantized for the W8A8 GEMM after it, which fp8_linear takes as x)
  rotary_embedding(positions, q, k, head_size, cos_sin_cache, is_neox=True, kv_store=None, sums=None, value=None)
                                                         -> (q, k), in place (sums: qkv_proj's SplitSums, summed into q, k, value)
    (kv_store, a rope.KVStore: also writes the rotated k and its v into the KV pool)
  store_kv_cache(k_buffer, v_buffer, loc, k, v, k_scale=1.0, v_scale=1.0)  (scales: FP8 pools)
  decode_attention(...), decode_attention_fwd(..., k_scale, v_scale), decode_kv_splits(...)
  extend_attention(...), extend_attention_fwd(..., k_scale, v_scale)
  skinny_gemm(x, w, bias, config), skinny_gemm_fp8(x, w, w_scale, w_block, in_scale, act, bias, config)
  gemv_linear(x, weight, bias)                            -> y | None (M <= 16 where the table picks it)
  fp8_linear(x, weight, weight_scale, weight_block, input_scale, activation_strategy, bias) -> y | None
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys
from typing import Any


def _defer_to_hub_kernels() -> bool:
    """When a checkout's root is on sys.path (`python -m` from the root, pytest's `pythonpath`),
    this folder is also importable as `kernels`, the name of Hugging Face's kernels package, which
    transformers >= 5.25 requires and imports. Imported under that name, hand the import over to
    the real package wherever else sys.path finds it; with none installed, stay as we are (older
    transformers probe `kernels` and read no version from us)."""
    if __name__ != "kernels":
        return False
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("kernels", path)
    if spec is None or spec.loader is None:
        return False
    module = importlib.util.module_from_spec(spec)
    sys.modules["kernels"] = module  # the import statement returns what sys.modules holds
    spec.loader.exec_module(module)
    return True


_defer_to_hub_kernels()

_EXPORTS = {
    "rmsnorm": "layernorm",
    "fused_add_rmsnorm": "layernorm",
    "rmsnorm_ref": "layernorm",
    "silu_and_mul": "activation",
    "silu_and_mul_ref": "activation",
    "rmsnorm_fp8": "layernorm",
    "silu_and_mul_fp8": "activation",
    "rotary_embedding": "rope",
    "rotary_embedding_ref": "rope",
    "store_kv_cache": "kv_store",
    "store_kv_cache_ref": "kv_store",
    "decode_attention": "attn_decode",
    "decode_attention_fwd": "attn_decode",
    "decode_attention_ref": "attn_decode",
    "decode_kv_splits": "attn_decode",
    "extend_attention": "attn_extend",
    "extend_attention_fwd": "attn_extend",
    "extend_attention_ref": "attn_extend",
    "skinny_gemm": "gemv",
    "skinny_gemm_fp8": "gemv",
    "skinny_gemm_ref": "gemv",
    "skinny_gemm_fp8_ref": "gemv",
    "gemv_linear": "gemv_dispatch",
    "fp8_linear": "gemv_dispatch",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'sglserve_kernels' has no attribute {name!r}")
    try:
        value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    except ImportError as e:  # e.g. no Triton: callers probing with getattr(..., None) fall back
        logging.getLogger(__name__).warning("sglserve_kernels.%s unavailable: %s", name, e)
        raise AttributeError(f"sglserve_kernels.{name} is unavailable: {e}") from e
    globals()[name] = value
    return value
