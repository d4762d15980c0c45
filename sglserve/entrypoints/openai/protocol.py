"""Pydantic models of the OpenAI API (the one place), shaped as SGLang returns them.

Requests accept unknown extra fields (clients send things like `store` or `metadata`).
Known fields whose behaviour is not implemented yet are accepted by the schema and then
refused with a 400 naming the field by the serving code; they are never silently ignored.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MODEL_NAME = "default"


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- errors, models, usage ----------------------------------------------------------------


class ErrorResponse(BaseModel):
    object: str = "error"
    message: str
    type: str
    param: Optional[str] = None
    code: int


class ModelCard(BaseModel):
    id: str
    object: str = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "sglserve"
    root: Optional[str] = None
    max_model_len: Optional[int] = None


class ModelList(BaseModel):
    object: str = "list"
    data: List[ModelCard] = Field(default_factory=list)


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class CompletionTokensDetails(BaseModel):
    reasoning_tokens: int = 0  # with --reasoning-parser: output tokens up to the end of the think block


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: Optional[PromptTokensDetails] = None
    completion_tokens_details: Optional[CompletionTokensDetails] = None


class StreamOptions(OpenAIBaseModel):
    include_usage: Optional[bool] = False
    continuous_usage_stats: Optional[bool] = False


class JsonSchemaResponseFormat(OpenAIBaseModel):
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[Dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = False


class ResponseFormat(OpenAIBaseModel):
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: Optional[JsonSchemaResponseFormat] = None


class FunctionDefinition(OpenAIBaseModel):
    name: str
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    strict: Optional[bool] = None


class Tool(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: FunctionDefinition


class ToolChoiceFunction(OpenAIBaseModel):
    name: str


class ToolChoice(OpenAIBaseModel):
    type: Literal["function"] = "function"
    function: ToolChoiceFunction


# ---- sampling fields shared by chat and completions ------------------------------------------


class _SamplingRequest(OpenAIBaseModel):
    """Fields both endpoints share; `to_sampling_params` is the one mapping to SamplingParams."""

    model: str = DEFAULT_MODEL_NAME
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    n: int = 1
    stop: Optional[Union[str, List[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    seed: Optional[int] = None
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    logit_bias: Optional[Dict[str, float]] = None
    user: Optional[str] = None
    # SGLang / vLLM extensions
    top_k: int = -1
    min_p: float = 0.0
    min_tokens: int = 0
    repetition_penalty: float = 1.0
    stop_token_ids: Optional[List[int]] = None
    stop_regex: Optional[Union[str, List[str]]] = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: Optional[str] = None
    ebnf: Optional[str] = None
    response_format: Optional[ResponseFormat] = None
    rid: Optional[str] = None
    cache_salt: Optional[str] = None  # requests share prefix-cache entries only with the same salt

    @field_validator("n")
    @classmethod
    def _n_positive(cls, v: int) -> int:
        if v < 1:
            raise ValueError(f"n must be at least 1, got {v}")
        return v

    def to_sampling_params(self, max_new_tokens: Optional[int]) -> Dict[str, Any]:
        json_schema = None
        if self.response_format is not None and self.response_format.type == "json_schema":
            import json

            schema = self.response_format.json_schema.schema_ if self.response_format.json_schema else None
            json_schema = json.dumps(schema or {})
        elif self.response_format is not None and self.response_format.type == "json_object":
            json_schema = '{"type": "object"}'
        return {
            "max_new_tokens": max_new_tokens,
            "min_new_tokens": self.min_tokens,
            "temperature": 1.0 if self.temperature is None else self.temperature,
            "top_p": 1.0 if self.top_p is None else self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "frequency_penalty": self.frequency_penalty,
            "presence_penalty": self.presence_penalty,
            "repetition_penalty": self.repetition_penalty,
            "stop": self.stop,
            "stop_token_ids": self.stop_token_ids,
            "stop_regex": self.stop_regex,
            "ignore_eos": self.ignore_eos,
            "skip_special_tokens": self.skip_special_tokens,
            "spaces_between_special_tokens": self.spaces_between_special_tokens,
            "no_stop_trim": self.no_stop_trim,
            "seed": self.seed,
            "n": self.n,
            "logit_bias": None if self.logit_bias is None else {int(k): v for k, v in self.logit_bias.items()},
            "json_schema": json_schema,
            "regex": self.regex,
            "ebnf": self.ebnf,
        }

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_keys(cls, v: Optional[Dict[str, float]]) -> Optional[Dict[str, float]]:
        for k in v or {}:
            if not k.lstrip("-").isdigit():
                raise ValueError(f"logit_bias keys must be token ids, got {k!r}")
        return v

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)


def _positive_tokens(name: str, v: Optional[int]) -> Optional[int]:
    if v is not None and v < 1:
        raise ValueError(f"{name} must be at least 1, got {v}")
    return v


# ---- chat -------------------------------------------------------------------------------------


class ChatCompletionMessageParam(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Optional[Union[str, List[Dict[str, Any]]]] = None
    name: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None
    tool_call_id: Optional[str] = None
    reasoning_content: Optional[str] = None


class ChatCompletionRequest(_SamplingRequest):
    messages: List[ChatCompletionMessageParam]
    max_tokens: Optional[int] = None
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    tools: Optional[List[Tool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], ToolChoice]] = None
    parallel_tool_calls: Optional[bool] = None
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    continue_final_message: bool = False
    separate_reasoning: bool = True  # with --reasoning-parser: reasoning_content apart from content

    @field_validator("messages")
    @classmethod
    def _messages_nonempty(cls, v: list) -> list:
        if not v:
            raise ValueError("messages must be a non-empty list")
        return v

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def _max_tokens(cls, v: Optional[int], info) -> Optional[int]:
        return _positive_tokens(info.field_name, v)

    @property
    def requested_max_tokens(self) -> Optional[int]:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class ChatMessage(BaseModel):
    role: str = "assistant"
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None


class ChatCompletionResponseChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: Optional[Dict[str, Any]] = None
    finish_reason: Optional[str] = None
    matched_stop: Union[None, int, str] = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: str = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[ChatCompletionResponseChoice]
    usage: UsageInfo


class DeltaMessage(BaseModel):
    role: Optional[str] = None
    content: Optional[str] = None
    reasoning_content: Optional[str] = None
    tool_calls: Optional[List[Dict[str, Any]]] = None  # unused fields are null, as SGLang sends them


class ChatCompletionResponseStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: Optional[Dict[str, Any]] = None
    finish_reason: Optional[str] = None
    matched_stop: Union[None, int, str] = None


class ChatCompletionStreamResponse(BaseModel):
    id: str
    object: str = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[ChatCompletionResponseStreamChoice]
    usage: Optional[UsageInfo] = None


# ---- completions ------------------------------------------------------------------------------


class CompletionRequest(_SamplingRequest):
    prompt: Union[str, List[str], List[int], List[List[int]]]
    max_tokens: int = 16
    echo: bool = False
    suffix: Optional[str] = None
    best_of: Optional[int] = None
    logprobs: Optional[int] = None

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, v: int) -> int:
        return _positive_tokens("max_tokens", v)


class CompletionResponseChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[Dict[str, Any]] = None
    finish_reason: Optional[str] = None
    matched_stop: Union[None, int, str] = None


class CompletionResponse(BaseModel):
    id: str
    object: str = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[CompletionResponseChoice]
    usage: UsageInfo


class CompletionResponseStreamChoice(BaseModel):
    index: int
    text: str
    logprobs: Optional[Dict[str, Any]] = None
    finish_reason: Optional[str] = None
    matched_stop: Union[None, int, str] = None


class CompletionStreamResponse(BaseModel):
    id: str
    object: str = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: List[CompletionResponseStreamChoice]
    usage: Optional[UsageInfo] = None


class AbortRequestInput(BaseModel):
    """POST /abort_request (SGLang's native route): abort `rid` (n > 1 / batch members too)."""

    model_config = ConfigDict(extra="forbid")
    rid: str = ""
    abort_all: bool = False


class ScoringRequest(OpenAIBaseModel):
    """/v1/score (SGLang's): P(label next | query + item), item + query with item_first; text or token ids."""
    model: str = DEFAULT_MODEL_NAME
    query: Union[str, List[int]]
    items: Union[str, List[str], List[List[int]]]
    label_token_ids: List[int]
    apply_softmax: bool = False  # softmax over the labels (sums to 1), else each label's own probability
    item_first: bool = False


class ScoringResponse(BaseModel):
    object: str = "scoring"
    model: str
    scores: List[List[float]]  # one list per item, one probability per label
    usage: UsageInfo


# ---- tokenizer routes (vLLM's /tokenize and /detokenize) -------------------------------------


class TokenizeRequest(BaseModel):
    """Either `prompt` (tokenized as a completion prompt) or `messages` (rendered with the chat
    template first, as /v1/chat/completions would)."""

    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = None
    prompt: Optional[str] = None
    add_special_tokens: bool = True
    messages: Optional[List[ChatCompletionMessageParam]] = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: Optional[Dict[str, Any]] = None
    tools: Optional[List[Tool]] = None


class TokenizeResponse(BaseModel):
    tokens: List[int]
    count: int
    max_model_len: int


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: Optional[str] = None
    tokens: List[int]


class DetokenizeResponse(BaseModel):
    prompt: str
