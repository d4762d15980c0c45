"""The FastAPI app: native SGLang routes, OpenAI routes, health/info/control routes.

Every error answers in the OpenAI shape {"object": "error", "message", "type", "param", "code"}.
Bad input is a 400 (validation included, as SGLang and vLLM answer it), an oversized body
a 413, a missing/wrong API key a 401, a full server (--max-queued-requests) a 503 with
Retry-After, a request past --request-timeout a 408; only our own bugs reach the catch-all 500.
Middlewares (auth, body size, request ids) are in middleware.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import uuid
from typing import Any, Awaitable, Callable, Optional

import msgspec
import orjson
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from sglserve.entrypoints.middleware import ApiKeyMiddleware, MaxPayloadMiddleware, RequestContextMiddleware
from sglserve.entrypoints.openai.protocol import (
    AbortRequestInput,
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    ModelCard,
    ModelList,
    ScoringRequest,
    TokenizeRequest,
)
from sglserve.entrypoints.openai.serving_chat import handle_chat_completions
from sglserve.entrypoints.openai.serving_completions import handle_completions
from sglserve.entrypoints.openai.serving_score import handle_score
from sglserve.entrypoints.openai import serving_responses
from sglserve.entrypoints.openai.protocol_responses import ResponsesRequest
from sglserve.entrypoints.openai.responses_store import ResponsesStore, SharedResponsesStore
from sglserve.entrypoints.openai.serving_tokenize import handle_detokenize, handle_tokenize
from sglserve.entrypoints.openai.serving_utils import (
    OpenAIError,
    error_response,
    json_response,
    sse,
    stream_response,
)
from sglserve.io_struct import GenerateReqInput
from sglserve.tokenizer.tokenizer_manager import ClientDisconnected, Overloaded, ServerError, TokenizerManager
from sglserve.server_args import ServerArgs
from sglserve.web.routes import WebUI

logger = logging.getLogger(__name__)

HEALTH_GENERATE_TIMEOUT_S = 20.0
GENERATE_FIELDS = {f.name for f in dataclasses.fields(GenerateReqInput)}


def create_app(server_args: ServerArgs, tokenizer_manager: TokenizerManager, shared_dir: Optional[str] = None) -> FastAPI:
    """`shared_dir`: with several HTTP workers, where they share state (the responses store)."""
    tm = tokenizer_manager
    model_name = server_args.served_model_name
    web_ui = WebUI.create(server_args, tm)  # None with --disable-web-ui

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        tm.start()  # receive loop (and process watcher) on uvicorn's event loop
        if web_ui is not None:
            await web_ui.start()
        yield
        if web_ui is not None:
            await web_ui.stop()

    app = FastAPI(title="sglserve", version="0.1.0", lifespan=lifespan)
    _install_error_handlers(app)
    # Middlewares: the last added runs first. Auth is checked before the body is read.
    app.add_middleware(MaxPayloadMiddleware, max_bytes=server_args.max_payload_size)
    if server_args.api_key:
        app.add_middleware(ApiKeyMiddleware, api_key=server_args.api_key,
                           login_page=None if web_ui is None else web_ui.page)
    app.add_middleware(RequestContextMiddleware)
    if server_args.enable_metrics and tm.metrics is None:
        from sglserve.metrics.collector import MetricsCollector

        tm.metrics = MetricsCollector(model_name, inflight=lambda: tm.num_inflight)

    def guarded(fn: Callable[..., Awaitable[Response]]):
        """Map pipeline exceptions to error responses (ValueError is bad input: 400)."""

        @functools.wraps(fn)
        async def wrapper(*args: Any, **kwargs: Any) -> Response:
            try:
                return await fn(*args, **kwargs)
            except OpenAIError as e:
                return error_response(e.message, e.status_code, e.param)
            except ValueError as e:
                return error_response(str(e), 400)
            except Overloaded as e:
                return error_response(str(e), 503, headers={"Retry-After": str(e.retry_after)})
            except ServerError as e:
                return error_response(str(e), e.status_code)
            except ClientDisconnected:
                return Response(status_code=499)

        return wrapper

    # ---- health and info ---------------------------------------------------------------

    @app.get("/health")
    async def health() -> Response:
        if tm.dead_reason:
            return error_response(tm.dead_reason, 503)
        return Response(status_code=200)

    @app.get("/health_generate")
    async def health_generate(request: Request) -> Response:
        """Healthy when a 1-token generation completes in time."""
        obj = GenerateReqInput(
            text="Hi" if tm.tokenizer is not None else None,
            input_ids=None if tm.tokenizer is not None else [0],
            sampling_params={"max_new_tokens": 1, "temperature": 0.0},
            rid=f"HEALTH_CHECK_{uuid.uuid4().hex}",
        )
        async def run() -> None:
            async for _ in await tm.generate_request(obj, request):
                pass

        try:
            await asyncio.wait_for(run(), HEALTH_GENERATE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return error_response(f"No generation finished within {HEALTH_GENERATE_TIMEOUT_S:g} s.", 503)
        except (ServerError, ValueError) as e:
            return error_response(f"Health generation failed: {e}", 503)
        return Response(status_code=200)

    @app.get("/get_model_info")
    async def get_model_info() -> Response:
        return json_response(
            {"model_path": server_args.model_path, "tokenizer_path": server_args.tokenizer_path, "is_generation": True}
        )

    @app.get("/get_server_info")
    @guarded
    async def get_server_info() -> Response:
        load = await tm.get_load()
        return json_response({**server_args.public_dict(), **tm.scheduler_info, **msgspec.structs.asdict(load),
                              "version": app.version, "http_worker": tm.http_worker})

    @guarded
    async def flush_cache() -> Response:
        ret = await tm.flush_cache()
        if ret.success:
            return Response(
                "Cache flushed.\nPlease check backend logs for more details. "
                "(When there are running or waiting requests, the operation will not be performed.)\n",
                status_code=200,
            )
        return error_response(ret.message or "Cache not flushed.", 400)

    for method in ("GET", "POST"):  # one route per method: unique OpenAPI operation ids
        app.add_api_route("/flush_cache", flush_cache, methods=[method], operation_id=f"flush_cache_{method.lower()}")

    @app.post("/abort_request")
    async def abort_request(body: AbortRequestInput) -> Response:
        """Abort a request by id (its n > 1 / batch members too); abort_all aborts every request."""
        if not body.rid and not body.abort_all:
            return error_response("Give the rid of the request to abort, or abort_all: true.", 400, "rid")
        found = tm.abort_by_client("" if body.abort_all else body.rid)
        return json_response({"success": True, "aborted": found})

    if tm.metrics is not None:
        from sglserve.metrics.collector import CONTENT_TYPE_LATEST

        @app.get("/metrics")
        async def metrics() -> Response:
            """Prometheus text format; the scheduler's gauges are read now (left as they were if it is silent)."""
            try:
                load = await tm.get_load(timeout=5.0)
            except ServerError:
                load = None
            return Response(tm.metrics.render(load, tm.num_inflight), media_type=CONTENT_TYPE_LATEST)

    # ---- native generate ---------------------------------------------------------------

    @app.post("/generate")
    @guarded
    async def generate(request: Request) -> Response:
        try:
            body = orjson.loads(await request.body())
        except orjson.JSONDecodeError as e:
            raise OpenAIError(f"Invalid JSON body: {e}") from e
        if not isinstance(body, dict):
            raise OpenAIError("The request body must be a JSON object.")
        unknown = sorted(set(body) - GENERATE_FIELDS)
        if unknown:
            raise OpenAIError(f"Unknown field(s) {unknown}; allowed: {sorted(GENERATE_FIELDS)}", param=unknown[0])
        if not isinstance(body.get("stream", False), bool):
            raise OpenAIError("stream must be a boolean.", param="stream")
        obj = GenerateReqInput(**body)
        gen = await tm.generate_request(obj, request)
        if obj.stream:
            return stream_response(_native_frames(gen))
        out = None
        async for out in gen:
            pass
        return json_response(out)

    # ---- OpenAI ------------------------------------------------------------------------

    @app.post("/v1/chat/completions")
    @guarded
    async def chat_completions(req: ChatCompletionRequest, raw_request: Request) -> Response:
        return await handle_chat_completions(tm, model_name, req, raw_request)

    @app.post("/v1/completions")
    @guarded
    async def completions(req: CompletionRequest, raw_request: Request) -> Response:
        return await handle_completions(tm, model_name, req, raw_request)

    responses_store = (ResponsesStore(server_args.responses_store_size) if shared_dir is None else
                       SharedResponsesStore(os.path.join(shared_dir, "responses.sqlite"), server_args.responses_store_size))

    @app.post("/v1/responses")
    @guarded
    async def responses(req: ResponsesRequest, raw_request: Request) -> Response:
        return await serving_responses.handle_responses(tm, model_name, responses_store, req, raw_request)

    @app.get("/v1/responses/{response_id}")
    @guarded
    async def retrieve_response(response_id: str) -> Response:
        return serving_responses.retrieve(responses_store, response_id)

    @app.delete("/v1/responses/{response_id}")
    @guarded
    async def delete_response(response_id: str) -> Response:
        return serving_responses.delete(responses_store, response_id)

    @app.post("/v1/score")
    @guarded
    async def score(req: ScoringRequest, raw_request: Request) -> Response:
        return await handle_score(tm, model_name, req, raw_request)

    @app.post("/tokenize")
    @guarded
    async def tokenize(req: TokenizeRequest) -> Response:
        return json_response((await handle_tokenize(tm, req)).model_dump())

    @app.post("/detokenize")
    @guarded
    async def detokenize(req: DetokenizeRequest) -> Response:
        return json_response(handle_detokenize(tm, req).model_dump())

    @app.get("/version")
    async def version() -> Response:
        return json_response({"version": app.version})

    def model_card() -> ModelCard:
        return ModelCard(id=model_name, root=server_args.model_path, max_model_len=tm.context_len)

    @app.get("/v1/models")
    async def models() -> Response:
        return json_response(ModelList(data=[model_card()]).model_dump())

    @app.get("/v1/models/{model:path}")
    async def retrieve_model(model: str) -> Response:
        if model not in server_args.model_names():  # the served name, the path as given, the short name
            return error_response(f"The model {model!r} does not exist; this server serves {model_name!r}.", 404, "model")
        return json_response(model_card().model_dump())

    if web_ui is not None:
        web_ui.install(app, tm, model_name)  # GET / and GET /web/stats (sglserve/web/)
    return app


async def _native_frames(gen) -> Any:
    async for out in gen:
        yield sse(out)


# ---- errors ------------------------------------------------------------------------------


def _validation_message(exc: RequestValidationError) -> tuple:
    parts, param = [], None
    for err in exc.errors()[:4]:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            detail = (err.get("ctx") or {}).get("error", "")
            return f"Invalid JSON body: {err.get('msg')}{': ' + str(detail) if detail else ''}", None
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        name = ".".join(loc)
        param = param or name or None
        parts.append(f"{name}: {msg}" if name else msg)
    return "; ".join(parts) or "Invalid request.", param


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        message, param = _validation_message(exc)
        return error_response(message, 400, param)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return error_response(str(exc.detail), exc.status_code)

    @app.exception_handler(Exception)
    async def on_internal_error(request: Request, exc: Exception) -> Response:
        logger.exception("Internal error on %s %s", request.method, request.url.path)
        return error_response(f"Internal server error: {type(exc).__name__}: {exc}", 500)
