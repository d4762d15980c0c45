"""SamplingParams: the one definition of how a request samples and stops."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

from sglserve.sampling import stop_regex

_SAMPLING_EPS = 1e-6
DERIVED = ("stop_strs", "stop_str_max_len", "stop_regex_strs")  # set by normalize(), not by requests


class SamplingParamsError(ValueError):
    """A bad sampling parameter; the message names it and says what is allowed."""


@dataclass
class SamplingParams:
    max_new_tokens: Optional[int] = None  # None: up to the context length
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    stop: Optional[Union[str, List[str]]] = None
    stop_token_ids: Optional[List[int]] = None
    stop_regex: Optional[Union[str, List[str]]] = None  # SGLang's: stop where a pattern matches (stop_regex.py)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    seed: Optional[int] = None
    n: int = 1
    logit_bias: Optional[Dict[int, float]] = None
    json_schema: Optional[str] = None
    regex: Optional[str] = None
    ebnf: Optional[str] = None
    structural_tag: Optional[str] = None  # SGLang's: JSON {structures, triggers} (constrained/structural_tag.py)

    # Derived in normalize()
    stop_strs: List[str] = field(default_factory=list)
    stop_str_max_len: int = 0
    stop_regex_strs: List[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, d: Optional[dict], vocab_size: Optional[int] = None) -> "SamplingParams":
        """Parse and verify (token ids against vocab_size when given) a request's sampling_params."""
        d = dict(d or {})
        known = {k for k in cls.__dataclass_fields__ if k not in DERIVED}
        unknown = set(d) - known
        if unknown:
            raise SamplingParamsError(f"Unknown sampling parameter(s) {sorted(unknown)}; allowed: {sorted(known)}")
        try:
            obj = cls(**d)
        except TypeError as e:  # pragma: no cover - dataclass guards the names above
            raise SamplingParamsError(str(e)) from e
        obj.verify(vocab_size)
        return obj

    @property
    def is_greedy(self) -> bool:
        return self.temperature < _SAMPLING_EPS or self.top_k == 1

    def verify(self, vocab_size: Optional[int] = None) -> None:
        def num(name: str) -> float:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise SamplingParamsError(f"{name} must be a number, got {v!r}")
            return v

        if num("temperature") < 0.0:
            raise SamplingParamsError(f"temperature must be non-negative, got {self.temperature}.")
        if not 0.0 < num("top_p") <= 1.0:
            raise SamplingParamsError(f"top_p must be in (0, 1], got {self.top_p}.")
        if not 0.0 <= num("min_p") <= 1.0:
            raise SamplingParamsError(f"min_p must be in [0, 1], got {self.min_p}.")
        top_k = num("top_k")
        if top_k < -1 or top_k == 0 or int(top_k) != top_k:
            raise SamplingParamsError(f"top_k must be -1 (disable) or a positive integer, got {self.top_k}.")
        for name in ("frequency_penalty", "presence_penalty"):
            if not -2.0 <= num(name) <= 2.0:
                raise SamplingParamsError(f"{name} must be in [-2, 2], got {getattr(self, name)}.")
        if not 0.0 < num("repetition_penalty") <= 2.0:
            raise SamplingParamsError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty}.")
        if self.max_new_tokens is not None:
            if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int):
                raise SamplingParamsError(f"max_new_tokens must be an integer, got {self.max_new_tokens!r}.")
            if self.max_new_tokens < 0:
                raise SamplingParamsError(f"max_new_tokens must be at least 0, got {self.max_new_tokens}.")
        if not isinstance(self.min_new_tokens, int) or self.min_new_tokens < 0:
            raise SamplingParamsError(f"min_new_tokens must be a non-negative integer, got {self.min_new_tokens}.")
        if self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens:
            raise SamplingParamsError(
                f"min_new_tokens must be <= max_new_tokens, got {self.min_new_tokens} > {self.max_new_tokens}."
            )
        if not isinstance(self.n, int) or self.n < 1:
            raise SamplingParamsError(f"n must be a positive integer, got {self.n!r}.")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise SamplingParamsError(f"seed must be an integer, got {self.seed!r}.")
        if self.stop_token_ids is not None:
            if not isinstance(self.stop_token_ids, list) or not all(
                isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in self.stop_token_ids
            ):
                raise SamplingParamsError(f"stop_token_ids must be a list of non-negative integers, got {self.stop_token_ids!r}.")
            # ids outside the vocabulary are accepted, as SGLang accepts them: they can never be sampled, so never match
        if self.stop is not None:
            stops = [self.stop] if isinstance(self.stop, str) else self.stop
            if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
                raise SamplingParamsError(f"stop must be a string or a list of strings, got {self.stop!r}.")
        if self.stop_regex is not None:
            try:
                self.stop_regex = stop_regex.as_list(self.stop_regex)
            except stop_regex.StopRegexError as e:
                raise SamplingParamsError(str(e)) from None
        if self.logit_bias is not None:
            self.logit_bias = _check_logit_bias(self.logit_bias, vocab_size)
        grammars = [g for g in (self.json_schema, self.regex, self.ebnf, self.structural_tag) if g is not None]
        if len(grammars) > 1:
            raise SamplingParamsError("Only one of json_schema, regex, ebnf and structural_tag can be set.")
        self.normalize()

    def normalize(self) -> None:
        if self.stop is None:
            self.stop_strs = []
        else:
            self.stop_strs = [self.stop] if isinstance(self.stop, str) else [s for s in self.stop if s]
        self.stop_str_max_len = max((len(s) for s in self.stop_strs), default=0)
        self.stop_regex_strs = [self.stop_regex] if isinstance(self.stop_regex, str) else list(self.stop_regex or [])
        if self.is_greedy:
            self.top_k, self.top_p, self.min_p = 1, 1.0, 0.0


def _check_logit_bias(bias, vocab_size: Optional[int]) -> Dict[int, float]:
    """{token id (int or its string, as JSON sends it): bias in [-100, 100]} -> {int: float}."""
    if not isinstance(bias, dict):
        raise SamplingParamsError(f"logit_bias must be an object mapping token ids to biases, got {bias!r}.")
    out: Dict[int, float] = {}
    for k, v in bias.items():
        try:
            tok = int(k)
        except (TypeError, ValueError):
            raise SamplingParamsError(f"logit_bias keys must be token ids, got {k!r}.") from None
        if tok < 0 or (vocab_size is not None and tok >= vocab_size):
            raise SamplingParamsError(f"logit_bias token id {tok} is outside the vocabulary [0, {vocab_size}).")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not -100 <= v <= 100:
            raise SamplingParamsError(f"logit_bias values must be numbers in [-100, 100], got {v!r} for token {tok}.")
        out[tok] = float(v)
    return out
