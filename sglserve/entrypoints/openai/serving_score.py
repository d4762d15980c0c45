"""/v1/score (SGLang's): the probabilities of label tokens as the next token after query + item.

Each item becomes one prompt (query + item, or item + query with item_first), all sent as one
batch through the scheduler with max_new_tokens=1, return_logprob and token_ids_logprob =
label_token_ids: the first output position's logprobs of the labels are log p(label | prompt),
the log-softmax of the model's raw logits (scheduler/logprobs.py). apply_softmax renormalizes
them over the labels (they sum to 1); otherwise each is its own probability over the vocabulary.
"""

from __future__ import annotations

import math
from typing import List, Union

from fastapi import Request, Response

from sglserve.entrypoints.openai.protocol import ScoringRequest, ScoringResponse
from sglserve.entrypoints.openai.serving_utils import OpenAIError, final_outputs, json_response, usage_of
from sglserve.io_struct import GenerateReqInput
from sglserve.tokenizer.tokenizer_manager import TokenizerManager

Prompt = Union[str, List[int]]


def _prompts(req: ScoringRequest) -> List[Prompt]:
    """query + item per item (item + query with item_first), text or token ids."""
    items = [req.items] if isinstance(req.items, str) else list(req.items)
    if not items:
        raise OpenAIError("items must not be empty.", param="items")
    is_text = isinstance(req.query, str)
    if any(isinstance(item, str) != is_text for item in items):
        raise OpenAIError("query and items must be of one kind: all text, or all token ids.", param="items")
    if not is_text and not req.query and not all(items):
        raise OpenAIError("A token-id query and item cannot both be empty.", param="items")
    return [item + req.query if req.item_first else req.query + item for item in items]


def _check_labels(labels: List[int], vocab_size: int) -> None:
    if not labels:
        raise OpenAIError("label_token_ids must not be empty.", param="label_token_ids")
    bad = [t for t in labels if not 0 <= t < vocab_size]
    if bad:
        raise OpenAIError(f"label_token_ids has ids outside the vocabulary [0, {vocab_size}): {bad[:8]}.",
                          param="label_token_ids")


def scores_of(logprobs: List[float], apply_softmax: bool) -> List[float]:
    """Label logprobs -> probabilities: each exp(logprob), or their softmax over the labels."""
    if not apply_softmax:
        return [math.exp(lp) for lp in logprobs]
    top = max(logprobs)
    weights = [math.exp(lp - top) for lp in logprobs]
    total = sum(weights)
    return [w / total for w in weights]


async def handle_score(tm: TokenizerManager, model_name: str, req: ScoringRequest, raw_request: Request) -> Response:
    _check_labels(req.label_token_ids, tm.input_processor.vocab_size)
    prompts = _prompts(req)
    is_text = isinstance(prompts[0], str)
    if is_text and tm.tokenizer is None:
        raise OpenAIError("Text query and items need a tokenizer; the server runs with --skip-tokenizer-init: "
                          "send token ids.", param="query")
    obj = GenerateReqInput(
        text=prompts if is_text else None,
        input_ids=None if is_text else prompts,
        sampling_params={"max_new_tokens": 1, "temperature": 0.0},
        return_logprob=True,
        token_ids_logprob=list(req.label_token_ids),
    )
    outs = await final_outputs(await tm.generate_request(obj, raw_request))
    scores = []
    for out in outs:
        positions = out["meta_info"].get("output_token_ids_logprobs") or []
        if not positions:  # the prompt filled the context: no next position was computed
            reason = (out["meta_info"].get("finish_reason") or {}).get("message", "no next-token logprobs")
            raise OpenAIError(f"Could not score an item: {reason}.", param="items")
        scores.append(scores_of([lp for lp, _, _ in positions[0]], req.apply_softmax))
    usage = usage_of([o["meta_info"] for o in outs])
    usage.update(completion_tokens=0, total_tokens=usage["prompt_tokens"])  # the one sampled token is not a result
    return json_response(ScoringResponse(model=model_name, scores=scores, usage=usage).model_dump())
