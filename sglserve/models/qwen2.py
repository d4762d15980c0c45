"""Qwen2: the Llama decoder with a bias on the q/k/v projections (none on o_proj)."""

from __future__ import annotations

from transformers import PretrainedConfig

from sglserve.models.llama import AttentionFlags, LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    @staticmethod
    def attention_flags(config: PretrainedConfig) -> AttentionFlags:
        return AttentionFlags(qkv_bias=True, o_bias=False)


EntryClass = [Qwen2ForCausalLM]
