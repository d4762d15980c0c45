"""Qwen3: the Llama decoder with a per-head RMSNorm on q and k (q_norm, k_norm) before RoPE."""

from __future__ import annotations

from transformers import PretrainedConfig

from sglserve.models.llama import AttentionFlags, LlamaForCausalLM


class Qwen3ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def attention_flags(config: PretrainedConfig) -> AttentionFlags:
        bias = bool(getattr(config, "attention_bias", False))
        return AttentionFlags(qkv_bias=bias, o_bias=bias, qk_norm=True)


EntryClass = [Qwen3ForCausalLM]
