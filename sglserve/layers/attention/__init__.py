"""Attention backends: pick one by name (--attention-backend)."""

from __future__ import annotations

from typing import Any

from sglserve.layers.attention.base import AttentionBackend

ATTENTION_BACKENDS = ("torch_native", "triton", "flashinfer")


def create_attn_backend(name: str, model_runner: Any = None) -> AttentionBackend:
    """The backend `name`; GPU backends are imported only when asked for (they need CUDA/Triton)."""
    if name == "torch_native":
        from sglserve.layers.attention.torch_native_backend import TorchNativeAttnBackend

        return TorchNativeAttnBackend(model_runner)
    if name == "triton":
        from sglserve.layers.attention.triton_backend import TritonAttnBackend

        return TritonAttnBackend(model_runner)
    if name == "flashinfer":
        from sglserve.layers.attention.flashinfer_backend import FlashInferAttnBackend

        return FlashInferAttnBackend(model_runner)
    raise ValueError(f"attention backend {name!r} is unknown; allowed: {list(ATTENTION_BACKENDS)}")
