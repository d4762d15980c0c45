"""Turns one GenerateReqInput into a TokenizedGenerateReqInput for the scheduler: the checks
that make a bad request a 400 in the HTTP process (cheap bounds before tokenizing, vocabulary,
context and KV limits, sampling params, grammars), so nothing the scheduler receives can fail
its admission for a reason the client could have been told up front."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any, Dict, Optional

from sglserve.constrained.xgrammar_backend import grammar_key, validate_grammar
from sglserve.io_struct import GenerateReqInput, TokenizedGenerateReqInput
from sglserve.tokenizer.logprob_output import validate_logprob_args
from sglserve.tokenizer.request_checks import check_implemented, check_text_size, max_token_chars, out_of_vocab
from sglserve.sampling.sampling_params import SamplingParams


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
        if (obj.text is None) == (obj.input_ids is None):
            raise ValueError("Either text or input_ids should be provided (exactly one of them).")
        validate_logprob_args(obj.return_logprob, obj.top_logprobs_num, obj.logprob_start_len)
        if isinstance(obj.sampling_params, dict):  # cheap bounds first: no tokenizing a hopeless request
            max_new = obj.sampling_params.get("max_new_tokens")
            if isinstance(max_new, int) and max_new >= self.context_len:
                raise ValueError(f"Requested token count exceeds the model's maximum context length of "
                                 f"{self.context_len} tokens: max_new_tokens={max_new} leaves no room for the input.")
        if obj.text is not None:
            if self.tokenizer is None:
                raise ValueError("text input needs a tokenizer; the server runs with --skip-tokenizer-init: send input_ids.")
            check_text_size(len(obj.text), self.max_prompt_chars, self.context_len)
            input_ids = self.tokenizer.encode(obj.text)
        else:
            input_ids = obj.input_ids
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
        if n > self.max_total_num_tokens - self.page_size:  # as the scheduler checks it, but before a stream starts
            raise ValueError(f"The input ({n} tokens) is longer than the KV cache ({self.max_total_num_tokens} tokens).")

        sp = SamplingParams.from_dict(obj.sampling_params)
        sp.verify(self.vocab_size)
        check_implemented(sp)
        key = grammar_key(sp)
        if key is not None:  # a bad grammar is a 400 here, never a problem for the scheduler
            if self.grammar_backend == "none" or self.tokenizer is None:
                raise ValueError("Constrained decoding (json_schema / regex / ebnf) needs --grammar-backend xgrammar and a tokenizer.")
            validate_grammar(key)
        if sp.max_new_tokens is not None and n + sp.max_new_tokens > self.context_len:
            raise ValueError(
                f"Requested token count exceeds the model's maximum context length of {self.context_len} tokens. "
                f"You requested a total of {n + sp.max_new_tokens} tokens: {n} tokens from the input messages and "
                f"{sp.max_new_tokens} tokens for the completion. Please reduce the number of tokens in the input "
                f"messages or the completion to fit within the limit."
            )
        rid = obj.rid or uuid.uuid4().hex
        return TokenizedGenerateReqInput(
            rid=rid, input_text=obj.text, input_ids=list(input_ids), sampling_params=sp, stream=obj.stream,
            return_logprob=obj.return_logprob,
            logprob_start_len=obj.logprob_start_len, top_logprobs_num=obj.top_logprobs_num,
        )
