"""Pydantic models of the OpenAI Responses API (/v1/responses), protocol.py's sibling.

The request is validated here; serving_responses.py turns it into a ChatCompletionRequest and
runs it through the chat path. Output items and stream events are plain dicts built by
responses_output.py in the shapes of the official client's types (openai.types.responses).
Known fields whose behaviour is not implemented are refused with a 400 naming them
(`ResponsesRequest.unsupported`), never ignored.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, Field, field_validator

from sglserve.entrypoints.openai.protocol import DEFAULT_MODEL_NAME, OpenAIBaseModel, _SamplingRequest

# ChatCompletionRequest fields a Responses request may carry as extensions (SGLang's sampling
# extras: top_k, min_p, regex, ebnf, ...); the rest have Responses names of their own
SAMPLING_EXTRAS = tuple(sorted(
    (set(_SamplingRequest.model_fields) | {"chat_template_kwargs", "separate_reasoning"})
    - {"model", "temperature", "top_p", "n", "stream", "stream_options", "response_format", "user"}
))


class ResponseTextFormat(OpenAIBaseModel):
    type: Literal["text", "json_schema", "json_object"] = "text"
    name: Optional[str] = None
    description: Optional[str] = None
    schema_: Optional[Dict[str, Any]] = Field(default=None, alias="schema")
    strict: Optional[bool] = None


class ResponseTextConfig(OpenAIBaseModel):
    format: Optional[ResponseTextFormat] = None
    verbosity: Optional[str] = None


class ResponseTool(OpenAIBaseModel):
    """A Responses tool: function tools are flat ({type, name, parameters, ...}), unlike chat's."""

    type: str
    name: Optional[str] = None
    description: Optional[str] = None
    parameters: Optional[Dict[str, Any]] = None
    strict: Optional[bool] = None


class ResponseReasoning(OpenAIBaseModel):
    effort: Optional[str] = None
    summary: Optional[str] = None


class ResponsesRequest(OpenAIBaseModel):
    model: str = DEFAULT_MODEL_NAME
    input: Union[str, List[Dict[str, Any]]]
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = None
    temperature: Optional[float] = None
    top_p: Optional[float] = None
    text: Optional[ResponseTextConfig] = None
    tools: Optional[List[ResponseTool]] = None
    tool_choice: Optional[Union[Literal["none", "auto", "required"], Dict[str, Any]]] = None
    parallel_tool_calls: Optional[bool] = None
    reasoning: Optional[ResponseReasoning] = None
    stream: bool = False
    store: bool = True
    previous_response_id: Optional[str] = None
    metadata: Optional[Dict[str, str]] = None
    user: Optional[str] = None
    # Known fields without an implementation here: refused (unsupported) unless left at their default
    background: Optional[bool] = None
    truncation: Optional[Literal["auto", "disabled"]] = None
    include: Optional[List[str]] = None
    top_logprobs: Optional[int] = None

    @field_validator("max_output_tokens")
    @classmethod
    def _positive(cls, v: Optional[int]) -> Optional[int]:
        if v is not None and v < 1:
            raise ValueError(f"max_output_tokens must be at least 1, got {v}")
        return v

    @field_validator("input")
    @classmethod
    def _input_nonempty(cls, v: Union[str, list]) -> Union[str, list]:
        if isinstance(v, list) and not v:
            raise ValueError("input must be a string or a non-empty list of items")
        return v

    def unsupported(self) -> Optional[tuple]:
        """(param, message) of the first known field set to something not implemented, or None."""
        extra = self.model_extra or {}
        checks = [
            ("background", bool(self.background), "background mode is not supported; leave background unset or false"),
            ("truncation", self.truncation == "auto", "truncation 'auto' is not supported; the input must fit the context"),
            ("include", bool(self.include), f"include {self.include} is not supported"),
            ("top_logprobs", self.top_logprobs is not None, "top_logprobs is not supported on /v1/responses"),
            ("reasoning", bool(self.reasoning and self.reasoning.summary),
             "reasoning.summary is not supported (the reasoning text itself is returned)"),
            ("text", bool(self.text and self.text.verbosity not in (None, "medium")), "text.verbosity is not supported"),
        ]
        checks += [(name, extra.get(name) is not None, f"{name} is not supported")
                   for name in ("conversation", "prompt", "max_tool_calls")]
        for param, bad, message in checks:
            if bad:
                return param, message
        return None


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: Dict[str, int]
    output_tokens: int
    output_tokens_details: Dict[str, int]
    total_tokens: int
    prompt_tokens: int  # SGLang's names, beside OpenAI's
    completion_tokens: int


class ResponseObject(BaseModel):
    id: str
    object: str = "response"
    created_at: int = Field(default_factory=lambda: int(time.time()))
    model: str
    status: Literal["completed", "incomplete", "in_progress", "failed", "cancelled", "queued"]
    error: Optional[Dict[str, Any]] = None
    incomplete_details: Optional[Dict[str, Any]] = None
    instructions: Optional[str] = None
    max_output_tokens: Optional[int] = None
    metadata: Dict[str, str] = Field(default_factory=dict)
    output: List[Dict[str, Any]] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: Optional[str] = None
    reasoning: Optional[Dict[str, Any]] = None
    store: bool = True
    temperature: Optional[float] = None
    text: Dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Union[str, Dict[str, Any]] = "auto"
    tools: List[Dict[str, Any]] = Field(default_factory=list)
    top_p: Optional[float] = None
    truncation: str = "disabled"
    background: bool = False
    user: Optional[str] = None
    usage: Optional[ResponseUsage] = None
