"""Token embedding and LM head (one vocab matrix [vocab, hidden], shared when tied), split over
tensor-parallel ranks by vocab rows.

The vocab is padded up to a multiple of tp; rank r holds rows [r * part, (r + 1) * part). The
embedding looks up the ids in its range, zeroes the others, and one all-reduce sums the ranks'
rows (each id is found on exactly one rank). The LM head computes its vocab slice of the logits;
the LogitsProcessor gathers the slices and drops the padding.
"""

from __future__ import annotations

from typing import Any, List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from sglserve.distributed.parallel_state import get_tp_rank, get_tp_size, tp_all_reduce
from sglserve.distributed.shard import padded_vocab
from sglserve.layers.custom_op import CustomOp, get_kernel
from sglserve.layers.linear import default_weight_loader, set_weight_loader


class VocabParallelEmbedding(CustomOp):
    """input ids [n] -> embeddings [n, hidden]."""

    def __init__(self, num_embeddings: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.tp_rank, self.tp_size = get_tp_rank(), get_tp_size()
        self.part = padded_vocab(num_embeddings, self.tp_size) // self.tp_size
        self.vocab_start = self.tp_rank * self.part
        self.weight = set_weight_loader(nn.Parameter(torch.empty(self.part, embedding_dim)), self.weight_loader)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id: Any = None) -> None:
        if loaded_weight.shape != (self.num_embeddings, self.embedding_dim):
            raise ValueError(f"checkpoint shape {tuple(loaded_weight.shape)} does not fit the vocab matrix "
                             f"[{self.num_embeddings}, {self.embedding_dim}]")
        if self.tp_size == 1:
            return default_weight_loader(param, loaded_weight)
        rows = max(0, min(self.part, self.num_embeddings - self.vocab_start))  # the last rank holds the padding
        param.data.narrow(0, 0, rows).copy_(loaded_weight.narrow(0, self.vocab_start, rows))
        param.data.narrow(0, rows, self.part - rows).zero_()

    def checkpoint_shards(self, is_bias: bool) -> List[Tuple[Any, Tuple[int, ...]]]:
        return [(None, (self.num_embeddings, self.embedding_dim))]

    def forward_native(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.tp_size == 1:
            return F.embedding(input_ids, self.weight)
        local = input_ids - self.vocab_start
        outside = (local < 0) | (local >= self.part)
        out = F.embedding(local.masked_fill(outside, 0), self.weight)
        out.masked_fill_(outside.unsqueeze(-1), 0)
        return tp_all_reduce(out)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, tp={self.tp_size}, rows {self.vocab_start}+{self.part}"


class ParallelLMHead(VocabParallelEmbedding):
    """Holds this rank's vocab slice of the output projection; the LogitsProcessor does the matmul
    (only on the rows it needs) and gathers the slices."""

    def tie_weights(self, embed_tokens: VocabParallelEmbedding) -> None:
        """Share the embedding matrix (tie_word_embeddings): one Parameter, loaded once."""
        self.weight = embed_tokens.weight

    def forward_native(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the logits: [n, vocab_padded / tp]. On CUDA a decode-sized batch asks
        the skinny GEMM's table first (`gemv_linear`, as LinearBase.matmul does: the LM head is the
        step's largest weight read, 1 GB on Llama-3.1-8B); None there: cuBLAS."""
        if hidden_states.is_cuda:
            kernel = get_kernel("gemv_linear")
            logits = None if kernel is None else kernel(hidden_states, self.weight, None)
            if logits is not None:
                return logits
        return F.linear(hidden_states, self.weight)
