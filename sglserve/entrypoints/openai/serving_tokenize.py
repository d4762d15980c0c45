"""/tokenize and /detokenize (vLLM's routes and shapes): what the server would feed the model for
a prompt or a chat, and the text of token ids. Same checks as generation: a prompt too long for
the context is a 400 before any tokenizing, ids outside the vocabulary are a 400."""

from __future__ import annotations

from sglserve.entrypoints.openai.protocol import (
    DEFAULT_MODEL_NAME,
    ChatCompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
)
from sglserve.entrypoints.openai.serving_chat import render_chat_prompt
from sglserve.entrypoints.openai.serving_utils import OpenAIError
from sglserve.tokenizer.request_checks import out_of_vocab
from sglserve.tokenizer.tokenizer_manager import TokenizerManager


def _tokenizer(tm: TokenizerManager):
    if tm.tokenizer is None:
        raise OpenAIError("This server runs with --skip-tokenizer-init: it has no tokenizer.")
    return tm.tokenizer


async def handle_tokenize(tm: TokenizerManager, req: TokenizeRequest) -> TokenizeResponse:
    tokenizer = _tokenizer(tm)
    if (req.prompt is None) == (req.messages is None):
        raise OpenAIError("Give exactly one of prompt and messages.", param="prompt")
    if req.prompt is not None:
        tm.check_prompt_chars(len(req.prompt))
        ids = await tm.encode(req.prompt, add_special_tokens=req.add_special_tokens)
    else:
        if not req.messages:
            raise OpenAIError("messages must be a non-empty list", param="messages")
        tm.check_prompt_chars(sum(len(str(m.content or "")) for m in req.messages))
        chat = ChatCompletionRequest(model=req.model or DEFAULT_MODEL_NAME, messages=req.messages, tools=req.tools,
                                     chat_template_kwargs=req.chat_template_kwargs,
                                     continue_final_message=req.continue_final_message)
        ids = await tm.encode(render_chat_prompt(tokenizer, chat, add_generation_prompt=req.add_generation_prompt),
                              add_special_tokens=False)
    return TokenizeResponse(tokens=list(ids), count=len(ids), max_model_len=tm.context_len)


def handle_detokenize(tm: TokenizerManager, req: DetokenizeRequest) -> DetokenizeResponse:
    tokenizer = _tokenizer(tm)
    error = out_of_vocab(req.tokens, tm.vocab_size, "tokens")
    if error:
        raise OpenAIError(error, param="tokens")
    return DetokenizeResponse(prompt=tokenizer.decode(req.tokens))
