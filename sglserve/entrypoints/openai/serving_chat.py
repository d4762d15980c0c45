"""/v1/chat/completions: chat template -> GenerateReqInput -> chat.completion (or SSE chunks)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Dict, List, Optional

from fastapi import Request, Response

from sglserve.entrypoints.openai.protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatCompletionResponseChoice,
    ChatMessage,
)
from sglserve.entrypoints.openai.serving_utils import (
    OpenAIError,
    final_outputs,
    finish_reason_fields,
    json_response,
    check_model_name,
    reject_unimplemented,
    sse,
    stream_response,
    usage_of,
)
from sglserve.entrypoints.openai.chat_output import ChoiceOutput
from sglserve.entrypoints.openai.stream_chunks import ChatContentFrames, chat_chunk, chat_delta, usage_chunk
from sglserve.entrypoints.openai.chat_tools import ToolPlan, plan_tools, prepare_messages, template_supports_tools
from sglserve.io_struct import GenerateReqInput
from sglserve.tokenizer.logprob_output import MAX_TOP_LOGPROBS, chat_logprobs
from sglserve.tokenizer.tokenizer_manager import TokenizerManager
from sglserve.parser.reasoning_parser import ReasoningParser


def render_chat_prompt(tokenizer: Any, req: ChatCompletionRequest, plan: Optional[ToolPlan] = None,
                       add_generation_prompt: bool = True) -> str:
    """Render the messages (and tools, see chat_tools.py) with the chat template. The text is then
    tokenized without special tokens (TokenizerManager.encode, off the event loop): what
    apply_chat_template(tokenize=True) does inline."""
    if tokenizer is None:
        raise OpenAIError("Chat completions need a tokenizer; the server runs with --skip-tokenizer-init.")
    if not getattr(tokenizer, "chat_template", None):
        raise OpenAIError("The model has no chat template; use /v1/completions instead.")
    messages: List[Dict[str, Any]] = []
    for i, m in enumerate(req.messages):
        msg = m.model_dump(exclude_none=True)
        if isinstance(m.content, list):
            texts = []
            for part in m.content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise OpenAIError(
                        f"messages[{i}].content: only text parts are supported, got type {part.get('type')!r}.",
                        param=f"messages.{i}.content",
                    )
                texts.append(part["text"])
            msg["content"] = "\n".join(texts)
        elif m.content is None:
            msg["content"] = ""
        messages.append(msg)
    native_tools = template_supports_tools(tokenizer)
    messages = prepare_messages(messages, plan, req.tools, native_tools)
    extra = dict(req.chat_template_kwargs or {})
    if plan is not None and native_tools:
        extra.setdefault("tools", [t.model_dump(exclude_none=True) for t in req.tools])
    cont = req.continue_final_message
    if cont and messages[-1]["role"] != "assistant":
        raise OpenAIError("continue_final_message needs the last message to be from the assistant.",
                          param="continue_final_message")
    try:
        return tokenizer.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt and not cont, continue_final_message=cont,
            tokenize=False, **extra,
        )
    except Exception as e:  # jinja TemplateError (raise_exception in the template), bad kwargs
        raise OpenAIError(f"Failed to apply the chat template: {e}") from e


@dataclass
class ChatRun:
    """A chat request on its way: the generation and one ChoiceOutput (parsers) per choice.
    /v1/chat/completions and /v1/responses both start here."""

    gen: AsyncIterator[Any]
    rid: str
    created: int
    outputs: List[ChoiceOutput]


async def start_chat(tm: TokenizerManager, req: ChatCompletionRequest, raw_request: Request) -> ChatRun:
    reject_unimplemented(req)
    check_model_name(tm.server_args, req)
    if req.top_logprobs is not None and not req.logprobs:
        raise OpenAIError("top_logprobs needs logprobs=true.", param="top_logprobs")
    if req.top_logprobs is not None and not 0 <= req.top_logprobs <= MAX_TOP_LOGPROBS:
        raise OpenAIError(f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {req.top_logprobs}.", param="top_logprobs")
    tm.check_prompt_chars(sum(_content_chars(m.content) for m in req.messages))  # before templating
    plan = plan_tools(req, tm.server_args.tool_call_parser)
    input_ids = await tm.encode(render_chat_prompt(tm.tokenizer, req, plan), add_special_tokens=False)
    sampling_params = req.to_sampling_params(req.requested_max_tokens)
    if plan is not None and plan.json_schema is not None:
        sampling_params["json_schema"] = plan.json_schema
    if plan is not None and plan.structural_tag is not None and not any(
            sampling_params.get(k) for k in ("json_schema", "regex", "ebnf")):  # a request's own grammar wins
        sampling_params["structural_tag"] = plan.structural_tag
    obj = GenerateReqInput(
        input_ids=input_ids,
        sampling_params=sampling_params,
        stream=req.stream,
        rid=req.rid,
        cache_salt=req.cache_salt,
        return_logprob=req.logprobs,
        top_logprobs_num=req.top_logprobs or 0,
        return_text_in_logprobs=True,
    )
    gen = await tm.generate_request(obj, raw_request)  # ValueError here -> 400 before any byte is sent
    rid = obj.rid if isinstance(obj.rid, str) else obj.rid[0].rsplit("-", 1)[0]
    # JSON by construction (forced tool calls, response_format): no reasoning to split off
    json_only = "json_schema" in sampling_params and sampling_params["json_schema"] is not None
    reasoning = None if json_only else _reasoning_parser(tm, req)
    outputs = [ChoiceOutput(reasoning, plan.parser() if plan else None) for _ in range(req.n)]
    return ChatRun(gen, rid, int(time.time()), outputs)


def reasoning_tokens(tm: TokenizerManager, choice_out: ChoiceOutput, output_ids: List[int]) -> Optional[int]:
    """usage's reasoning_tokens of one choice: None when the server runs no reasoning parser
    (no completion_tokens_details then), 0 when this request's output is not parsed for it."""
    if tm.server_args.reasoning_parser is None:
        return None
    parser = choice_out.reasoning_parser
    return 0 if parser is None else parser.reasoning_tokens(output_ids, tm.tokenizer.decode)


async def handle_chat_completions(
    tm: TokenizerManager, model_name: str, req: ChatCompletionRequest, raw_request: Request
) -> Response:
    run = await start_chat(tm, req, raw_request)
    if req.stream:
        return stream_response(_stream(tm, run, model_name, req))

    outs = await final_outputs(run.gen)
    choices, reasoning = [], []
    for i, out in enumerate(outs):
        reason, matched = finish_reason_fields(out["meta_info"])
        choice_out = run.outputs[i]
        choice_out.update(out["text"], final=True)
        reasoning.append(reasoning_tokens(tm, choice_out, out["output_ids"]))
        choices.append(ChatCompletionResponseChoice(
            index=i, message=ChatMessage(**choice_out.message()), finish_reason=choice_out.finish_reason(reason),
            matched_stop=matched, logprobs=chat_logprobs(out["meta_info"]) if req.logprobs else None,
        ))
    resp = ChatCompletionResponse(id=run.rid, created=run.created, model=model_name, choices=choices,
                                  usage=usage_of([o["meta_info"] for o in outs], req.n, reasoning))
    return json_response(resp.model_dump())


def _content_chars(content: Any) -> int:
    if isinstance(content, str):
        return len(content)
    if isinstance(content, list):
        return sum(len(p["text"]) for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return 0


def _reasoning_parser(tm: TokenizerManager, req: ChatCompletionRequest) -> Optional[ReasoningParser]:
    name = tm.server_args.reasoning_parser
    if name is None or not req.separate_reasoning:
        return None
    if name == "qwen3" and (req.chat_template_kwargs or {}).get("enable_thinking") is False:
        return None  # the template closed the think block in the prompt: all answer
    return ReasoningParser(name)


async def _stream(tm: TokenizerManager, run: ChatRun, model_name: str, req: ChatCompletionRequest
                  ) -> AsyncIterator[bytes]:
    gen, rid, created, outputs = run.gen, run.rid, run.created, run.outputs

    def chunk(index: int, delta: Dict[str, Any], reason=None, matched=None, usage=None, logprobs=None) -> bytes:
        return sse(chat_chunk(rid, created, model_name, index, delta, reason, matched, usage, logprobs))

    metas: Dict[int, Dict[str, Any]] = {}
    reasoning: Dict[int, Optional[int]] = {}
    frames = ChatContentFrames(rid, created, model_name)  # the per-token chunk, from bytes made once
    continuous, want_logprobs = req.continuous_usage, req.logprobs
    for i in range(req.n):
        yield chunk(i, chat_delta(role="assistant", content=""))
    async for out in gen:
        index = out.get("index", 0)
        meta = metas[index] = out["meta_info"]
        reason, matched = finish_reason_fields(meta)
        choice_out = outputs[index]
        delta = choice_out.update(out["text"], final=reason is not None)
        logprobs = None
        if want_logprobs:
            n_lp = len(meta.get("output_token_logprobs") or [])
            if n_lp > choice_out.sent_logprobs:
                logprobs = chat_logprobs(meta, choice_out.sent_logprobs, n_lp)
                choice_out.sent_logprobs = n_lp
        fast = logprobs is None and len(delta) == 1 and "content" in delta
        usage = usage_of([meta]) if continuous and (reason is not None or not fast) else None
        if fast:
            yield frames.content(index, delta["content"], meta if continuous else None)
        elif delta or logprobs:
            yield chunk(index, chat_delta(**delta), usage=usage, logprobs=logprobs)
        if reason is not None:
            reasoning[index] = reasoning_tokens(tm, choice_out, out["output_ids"]) if req.include_usage else None
            yield chunk(index, chat_delta(), choice_out.finish_reason(reason), matched, usage)
    if req.include_usage and metas:
        order = sorted(metas)
        yield sse(usage_chunk("chat.completion.chunk", rid, created, model_name,
                              usage_of([metas[i] for i in order], req.n, [reasoning.get(i) for i in order])))
