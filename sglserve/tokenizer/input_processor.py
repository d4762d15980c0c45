"""Turns one GenerateReqInput into a TokenizedGenerateReqInput for the scheduler: the one place a
request is validated (its shape, cheap bounds before tokenizing, vocabulary, context and KV
limits, sampling params, grammars), for the server and the Engine alike, so nothing the
scheduler receives can fail its admission for a reason the client could have been told up front.

Validation is split around tokenization so that the server can tokenize off its event loop
(BatchEncoder) between `check` and `finish`; `tokenize` does all three inline (the Engine)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from sglserve.constrained import validate_grammar
from sglserve.constrained.base import grammar_key
from sglserve.io_struct import GenerateReqInput, TokenizedGenerateReqInput
from sglserve.sampling.sampling_params import SamplingParams
from sglserve.tokenizer.logprob_output import checked_token_ids_logprob, validate_logprob_args
from sglserve.tokenizer.request_checks import MAX_N, check_shape, check_text_size, max_token_chars, out_of_vocab


@dataclass
class InputProcessor:
    tokenizer: Any  # None with --skip-tokenizer-init: input_ids only
    context_len: int
    max_req_input_len: int
    vocab_size: int
    max_total_num_tokens: int
    page_size: int
    grammar_backend: str
    max_prompt_chars: Optional[int]  # a text longer than this cannot fit the context whatever it tokenizes to

    @classmethod
    def create(cls, tokenizer: Any, scheduler_info: Dict[str, Any], page_size: int, grammar_backend: str
               ) -> "InputProcessor":
        """From the scheduler's ready info (Scheduler.ready_info), as the server and the Engine both build it."""
        context_len = scheduler_info["context_len"]
        token_chars = max_token_chars(tokenizer) if tokenizer is not None else None
        return cls(tokenizer, context_len, scheduler_info.get("max_req_input_len", context_len - 1),
                   scheduler_info["vocab_size"], scheduler_info["max_total_num_tokens"], page_size, grammar_backend,
                   None if token_chars is None else context_len * token_chars)

    def tokenize(self, obj: GenerateReqInput) -> TokenizedGenerateReqInput:
        """One request -> ids + parsed sampling params, or ValueError (a 400) naming what is wrong."""
        sp = self.check(obj)
        return self.finish(obj, sp, self.tokenizer.encode(obj.text) if obj.text is not None else obj.input_ids)

    def check_shape(self, obj: GenerateReqInput) -> None:
        """A native body's types, before anything counts or tokenizes it (single or batch)."""
        check_shape(obj)
        if not obj.is_single and obj.batch_size == 0:
            raise ValueError("The batch of prompts is empty.")

    def check(self, obj: GenerateReqInput) -> SamplingParams:
        """Everything one request's token ids are not needed for: a hopeless request is never tokenized."""
        if (obj.text is None) == (obj.input_ids is None):
            raise ValueError("Either text or input_ids should be provided (exactly one of them).")
        validate_logprob_args(obj.return_logprob, obj.top_logprobs_num, obj.logprob_start_len)
        checked_token_ids_logprob(obj.return_logprob, obj.token_ids_logprob, self.vocab_size)
        sp = SamplingParams.from_dict(obj.sampling_params, self.vocab_size)
        if sp.n > MAX_N:
            raise ValueError(f"n must be at most {MAX_N}, got {sp.n}.")
        self.check_room(None, sp.max_new_tokens)
        if obj.text is not None:
            if self.tokenizer is None:
                raise ValueError("text input needs a tokenizer; the server runs with --skip-tokenizer-init: send input_ids.")
            self.check_chars(len(obj.text))
        return sp

    def finish(self, obj: GenerateReqInput, sp: SamplingParams, input_ids: List[int]) -> TokenizedGenerateReqInput:
        """The checks of the token ids, then the message for the scheduler."""
        if obj.input_ids is not None:  # ids from our own tokenizer are in the vocabulary
            error = out_of_vocab(input_ids, self.vocab_size, "input_ids")
            if error:
                raise ValueError(error)
        n = len(input_ids)
        if n == 0:
            raise ValueError("The input is empty.")
        if n >= self.context_len:
            raise ValueError(f"The input ({n} tokens) is longer than the model's context length ({self.context_len} tokens).")
        if n > self.max_req_input_len:
            raise ValueError(f"The input ({n} tokens) is longer than the maximum allowed input length ({self.max_req_input_len} tokens).")
        if n > self.max_total_num_tokens - self.page_size:  # the scheduler could never hold it
            raise ValueError(f"The input ({n} tokens) is longer than the KV cache ({self.max_total_num_tokens} tokens).")
        key = grammar_key(sp)
        if key is not None:  # a bad grammar is a 400 here, never a problem for the scheduler
            if self.grammar_backend == "none" or self.tokenizer is None:
                raise ValueError("Constrained decoding (json_schema / regex / ebnf) needs a --grammar-backend "
                                 "(xgrammar or llguidance) and a tokenizer.")
            validate_grammar(self.grammar_backend, key)
        self.check_room(n, sp.max_new_tokens)
        rid = obj.rid or uuid.uuid4().hex
        return TokenizedGenerateReqInput(
            rid=rid, input_text=obj.text, input_ids=list(input_ids), sampling_params=sp, stream=obj.stream,
            return_logprob=obj.return_logprob,  # without it the other two are ignored (not refused), as in SGLang
            logprob_start_len=obj.logprob_start_len if obj.return_logprob else -1,
            top_logprobs_num=obj.top_logprobs_num if obj.return_logprob else 0,
            token_ids_logprob=checked_token_ids_logprob(obj.return_logprob, obj.token_ids_logprob, self.vocab_size),
            cache_salt=obj.cache_salt or None,
        )

    def check_room(self, n: Optional[int], max_new: Optional[int]) -> None:
        """The input and max_new_tokens fit the context together; before tokenizing (n None) the input
        has at least one token, so a max_new_tokens of the whole context is refused without tokenizing."""
        if max_new is None:
            return
        if n is None and max_new >= self.context_len:
            raise ValueError(f"Requested token count exceeds the model's maximum context length of "
                             f"{self.context_len} tokens: max_new_tokens={max_new} leaves no room for the input.")
        if n is not None and n + max_new > self.context_len:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of {self.context_len} tokens. "
                f"You requested a total of {n + max_new} tokens: {n} tokens from the input messages and "
                f"{max_new} tokens for the completion. Please reduce the number of tokens in the input "
                f"messages or the completion to fit within the limit."
            )

    def check_chars(self, num_chars: int) -> None:
        """400 for a text prompt too long for the context, before tokenizing it (also chat messages, /tokenize)."""
        check_text_size(num_chars, self.max_prompt_chars, self.context_len)
