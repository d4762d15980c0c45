"""Llama (and Mistral): the decoder the Qwen models reuse with a few flags.

Parameter names match transformers (model.layers.N.self_attn.q_proj ...) except that
q/k/v live in one fused qkv_proj and gate/up in one gate_up_proj; load_weights routes
each checkpoint tensor into its slice through the parameter's weight_loader.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

import torch
from torch import nn
from transformers import PretrainedConfig

from sglserve.configs.model_config import get_head_dim, get_rope_config
from sglserve.layers.activation import SiluAndMul
from sglserve.layers.layernorm import RMSNorm
from sglserve.layers.linear import MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear, load_into
from sglserve.layers.logits_processor import LogitsProcessor, LogitsProcessorOutput
from sglserve.layers.radix_attention import RadixAttention
from sglserve.layers.rotary_embedding import RotaryEmbedding, get_rope
from sglserve.layers.vocab_parallel_embedding import ParallelLMHead, VocabParallelEmbedding
from sglserve.model_executor.forward_batch import ForwardBatch
from sglserve_kernels.numerics import SplitSums

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class AttentionFlags:
    """How the attention of a Llama-family model differs between architectures."""

    qkv_bias: bool = False  # bias on q/k/v projections (Qwen2: always)
    o_bias: bool = False  # bias on o_proj
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3)


class LlamaMLP(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor, hand_on_sums: bool = False) -> torch.Tensor:
        """hand_on_sums: the caller's next op is a fused residual-add RMSNorm (LinearBase.matmul)."""
        h = self.act_fn(self.gate_up_proj(x), fp8_input=self.down_proj.fp8_input())
        return self.down_proj(h, hand_on_sums=hand_on_sums)


class LlamaAttention(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_id: int, rotary_emb: RotaryEmbedding, flags: AttentionFlags) -> None:
        super().__init__()
        total_heads = config.num_attention_heads
        total_kv_heads = getattr(config, "num_key_value_heads", None) or total_heads
        self.head_dim = get_head_dim(config)
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, total_heads, total_kv_heads, bias=flags.qkv_bias)
        # This rank's heads (tensor parallelism splits them; shard.py)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.q_size, self.kv_size = self.qkv_proj.q_size, self.qkv_proj.kv_size
        self.o_proj = RowParallelLinear(total_heads * self.head_dim, config.hidden_size, bias=flags.o_bias)
        if flags.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.qk_norm = flags.qk_norm
        self.rotary_emb = rotary_emb  # one table shared by all layers
        self.attn = RadixAttention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_kv_heads, layer_id)

    def _norm_heads(self, norm: RMSNorm, x: torch.Tensor) -> torch.Tensor:
        return norm(x.reshape(-1, self.head_dim)).view(x.shape)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, forward_batch: ForwardBatch,
                hand_on_sums: bool = False) -> torch.Tensor:
        """hand_on_sums: the caller's next op is a fused residual-add RMSNorm (LinearBase.matmul)."""
        # RoPE may add a split-K qkv_proj's partials itself (numerics.SplitSums; not under q/k norms)
        qkv = self.qkv_proj(hidden_states, hand_on_sums=not self.qk_norm)
        sums = qkv if isinstance(qkv, SplitSums) else None
        if sums is not None:  # the buffer RoPE fills
            qkv = torch.empty(sums.shape, dtype=sums.dtype, device=sums.device)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        if self.qk_norm:
            q, k = self._norm_heads(self.q_norm, q), self._norm_heads(self.k_norm, k)
        kv_store = self.attn.fused_kv_store(v, forward_batch)  # the RoPE kernel stores K/V (Triton backend)
        q, k = self.rotary_emb(positions, q, k, kv_store=kv_store, sums=sums, value=v)
        o = self.attn(q, k, v, forward_batch, save_kv_cache=kv_store is None, fp8_output=self.o_proj.fp8_input())
        return self.o_proj(o, hand_on_sums=hand_on_sums)


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: PretrainedConfig, layer_id: int, rotary_emb: RotaryEmbedding, flags: AttentionFlags) -> None:
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_id, rotary_emb, flags)
        self.mlp = LlamaMLP(config.hidden_size, config.intermediate_size, bias=getattr(config, "mlp_bias", False))
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        positions: torch.Tensor,
        hidden_states: torch.Tensor,
        forward_batch: ForwardBatch,
        residual: Optional[torch.Tensor],
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Pre-norm block; the residual stream is carried separately so each norm fuses the add. A
        norm before a W8A8 projection hands it x already in FP8 (fp8_input; CUDA only)."""
        qkv_input = self.self_attn.qkv_proj.fp8_input()
        if residual is None:
            residual = hidden_states
            hidden_states = self.input_layernorm(hidden_states, fp8_input=qkv_input)
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual, fp8_input=qkv_input)
        # o_proj and down_proj each feed a fused residual-add norm (the next layer's, or the model's
        # last): a split-K GEMM leaves its partials for the norm to add (numerics.SplitSums)
        hidden_states = self.self_attn(positions, hidden_states, forward_batch, hand_on_sums=True)
        hidden_states, residual = self.post_attention_layernorm(
            hidden_states, residual, fp8_input=self.mlp.gate_up_proj.fp8_input())
        return self.mlp(hidden_states, hand_on_sums=True), residual


class LlamaModel(nn.Module):
    def __init__(self, config: PretrainedConfig, flags: AttentionFlags) -> None:
        super().__init__()
        self.config = config
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        rope_theta, rope_scaling = get_rope_config(config)
        self.rotary_emb = get_rope(get_head_dim(config), config.max_position_embeddings, rope_theta, rope_scaling)
        self.layers = nn.ModuleList(
            LlamaDecoderLayer(config, i, self.rotary_emb, flags) for i in range(config.num_hidden_layers)
        )
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch) -> torch.Tensor:
        hidden_states = self.embed_tokens(input_ids)
        residual = None
        between_layers = forward_batch.between_layers
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            hidden_states, residual = layer(positions, hidden_states, forward_batch, residual)
            if between_layers is not None:
                between_layers(i == last)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaForCausalLM(nn.Module):
    # (fused parameter, checkpoint name, shard id)
    stacked_params_mapping: List[Tuple[str, str, object]] = [
        (".qkv_proj", ".q_proj", "q"),
        (".qkv_proj", ".k_proj", "k"),
        (".qkv_proj", ".v_proj", "v"),
        (".gate_up_proj", ".gate_proj", 0),
        (".gate_up_proj", ".up_proj", 1),
    ]

    @staticmethod
    def attention_flags(config: PretrainedConfig) -> AttentionFlags:
        bias = bool(getattr(config, "attention_bias", False))
        return AttentionFlags(qkv_bias=bias, o_bias=bias)

    def __init__(self, config: PretrainedConfig) -> None:
        super().__init__()
        self.config = config
        self.model = LlamaModel(config, self.attention_flags(config))
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        self.tie_word_embeddings = bool(getattr(config, "tie_word_embeddings", False))
        if self.tie_word_embeddings:
            self.lm_head.tie_weights(self.model.embed_tokens)
        self.logits_processor = LogitsProcessor()

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, forward_batch: ForwardBatch) -> LogitsProcessorOutput:
        hidden_states = self.model(input_ids, positions, forward_batch)
        return self.logits_processor(hidden_states, self.lm_head, forward_batch)

    def load_weights(self, weights: Iterable[Tuple[str, torch.Tensor]]) -> None:
        """Load (transformers name, tensor) pairs; every parameter must be filled exactly once."""
        params = dict(self.named_parameters())  # a tied lm_head.weight is listed once, as embed_tokens
        # One load per checkpoint tensor: 3 shards for qkv_proj, 2 for gate_up_proj, else 1.
        expected_loads = {n: sum(f + "." in n for f, _, _ in self.stacked_params_mapping) or 1 for n in params}
        loads = dict.fromkeys(params, 0)
        for name, tensor in weights:
            if "rotary_emb.inv_freq" in name or (self.tie_word_embeddings and name == "lm_head.weight"):
                continue
            for fused, ckpt, shard_id in self.stacked_params_mapping:
                if ckpt + "." in name:
                    target = name.replace(ckpt + ".", fused + ".")
                    break
            else:
                target, shard_id = name, None
            if target not in params:
                logger.warning("checkpoint tensor %s has no parameter in %s; skipped", name, type(self).__name__)
                continue
            load_into(params[target], tensor, shard_id)
            loads[target] += 1
        bad = [f"{n} ({loads[n]}/{expected_loads[n]})" for n in params if loads[n] != expected_loads[n]]
        if bad:
            raise ValueError(f"{type(self).__name__}: parameters not loaded exactly once (loads/expected): {bad}")


class MistralForCausalLM(LlamaForCausalLM):
    """Mistral is Llama's architecture (its sliding window is not implemented; see ModelConfig)."""


EntryClass = [LlamaForCausalLM, MistralForCausalLM]
