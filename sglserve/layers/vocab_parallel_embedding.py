"""Token embedding and LM head (one vocab matrix [vocab, hidden], shared when tied)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sglserve.layers.custom_op import CustomOp
from sglserve.layers.linear import default_weight_loader, set_weight_loader


class VocabParallelEmbedding(CustomOp):
    """input ids [n] -> embeddings [n, hidden]. (TP would split the vocab; tp size is 1.)"""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = set_weight_loader(nn.Parameter(torch.empty(num_embeddings, embedding_dim)), self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        default_weight_loader(param, loaded_weight)

    def forward_native(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}"


class ParallelLMHead(VocabParallelEmbedding):
    """Holds the output projection weight; the LogitsProcessor does the matmul (only on the rows it needs)."""

    def tie_weights(self, embed_tokens: VocabParallelEmbedding) -> None:
        """Share the embedding matrix (tie_word_embeddings): one Parameter, loaded once."""
        self.weight = embed_tokens.weight

    def forward_native(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden_states, self.weight)
