"""Final hidden states -> fp32 logits of the positions the sampler needs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

from sglserve.distributed.parallel_state import tp_all_gather
from sglserve.layers.vocab_parallel_embedding import ParallelLMHead

if TYPE_CHECKING:
    from sglserve.model_executor.forward_batch import ForwardBatch


@dataclass
class LogitsProcessorOutput:
    next_token_logits: torch.Tensor  # [bs, vocab] fp32: logits of each request's last token
    all_logits: Optional[torch.Tensor] = None  # [num_tokens, vocab] fp32, only with return_all_logits


class LogitsProcessor(nn.Module):
    """Projects only the rows that are sampled from: the last token of each request in
    EXTEND (found through extend_start_loc + extend_seq_lens - 1), every row in DECODE.
    Projecting a whole prompt would cost num_tokens x vocab for nothing. Under tensor
    parallelism each rank projects onto its vocab slice; the slices are gathered, so every
    rank holds the whole logits and samples the same token (sampler.py).
    """

    @staticmethod
    def _logits(hidden_states: torch.Tensor, lm_head: ParallelLMHead) -> torch.Tensor:
        logits = lm_head(hidden_states)
        if lm_head.tp_size > 1:
            logits = tp_all_gather(logits)[:, : lm_head.num_embeddings]  # drop the vocab padding
        return logits.float()

    def forward(
        self, hidden_states: torch.Tensor, lm_head: ParallelLMHead, forward_batch: "ForwardBatch"
    ) -> LogitsProcessorOutput:
        last_index: Optional[torch.Tensor] = None
        if forward_batch.forward_mode.is_extend():
            last_index = (forward_batch.extend_start_loc + forward_batch.extend_seq_lens - 1).long()
        if forward_batch.return_all_logits:
            all_logits = self._logits(hidden_states, lm_head)
            next_logits = all_logits if last_index is None else all_logits[last_index]
            return LogitsProcessorOutput(next_token_logits=next_logits, all_logits=all_logits)
        if last_index is not None:
            hidden_states = hidden_states[last_index]
        return LogitsProcessorOutput(next_token_logits=self._logits(hidden_states, lm_head))
