"""The FastAPI application: OpenAI-compatible routes over the diffusion decoders, with limits everywhere.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST /v1/infill``, ``GET /v1/models``,
``GET /v1/models/{id}``, ``POST /tokenize``, ``GET /version``, ``GET /metrics``, ``GET /health``,
``GET /playground``. ``create_app(model, tokenizer, ServeConfig())`` builds the app; ``unmask serve MODEL`` runs
it with uvicorn. Request fields are documented in ``schemas``; which OpenAI fields are honoured and which are
refused (a 400 naming the field) in ``support``.

Reliability rules: the body is capped before parsing (413); bodies are strict pydantic models (422, or 400
for an unknown field); limits from ``ServeConfig`` and the model's context give 400; a model name other than
the served one gives 404; errors are ``{"error": {"message", "type", "param", "code"}}`` with a short message
that never repeats an input value; more than ``max_concurrency`` requests running or queued gives 429; a
client that disconnects cancels its decode between steps; an unexpected server fault is logged and answered
500 without details (client input alone never causes one: schemathesis checks that).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, Response

import unmask
from unmask.config import GenerationDefaults
from unmask.editing.placeholders import Hole, has_holes
from unmask.errors import TokenizerError
from unmask.serve import errors
from unmask.serve.config import ServeConfig
from unmask.serve.engine import Engine, Plan
from unmask.serve.errors import ClientError, error_body
from unmask.serve.generation import generate, run_to_completion
from unmask.serve.metrics import Metrics, RequestMetrics
from unmask.serve.playground import PLAYGROUND_HTML
from unmask.serve.schemas import ChatMessage, ChatRequest, CompletionRequest, InfillRequest, TokenizeRequest
from unmask.serve.support import chat_max_tokens, chat_messages, check_chat, check_completion, check_model

__all__ = ["create_app", "Engine"]


# ---------------------------------------------------------------------------------------------------------
# body cap (pure ASGI, before anything parses the body)


class BodyLimit:
    """Reads at most ``limit`` bytes of a request body, answering 413 beyond it, then replays the body."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            return await _reject(send, 413, "the request body is too large")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _reject(send, 413, "the request body is too large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls wait for the disconnect, as the app expects

        await self.app(scope, replay, send)


async def _reject(send, status: int, message: str) -> None:
    payload = json.dumps(error_body(message)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": payload})



# ---------------------------------------------------------------------------------------------------------
# the app: module-level handlers, each given the app's Engine; create_app only wires them


def _engine(request: Request) -> Engine:
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(_engine)]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The scheduler thread lives as long as the app's lifespan."""
    engine = app.state.engine
    engine.scheduler.start()
    try:
        yield
    finally:
        engine.scheduler.close()


def create_app(model, tokenizer, serve: ServeConfig | None = None, *, model_name: str = "unmask",
               defaults: GenerationDefaults | None = None) -> FastAPI:
    """The server for one loaded model and its recommended sampler and decoder (``defaults``; else what
    ``unmask.load`` left on the model); the scheduler thread lives as long as the app's lifespan."""
    serve = serve or ServeConfig()
    engine = Engine(model, tokenizer, serve, serve.model_name or model_name, defaults)
    app = FastAPI(title="unmask", version=unmask.__version__, lifespan=_lifespan,
                  description="OpenAI-compatible API for masked diffusion language models.")
    app.state.engine = engine
    app.state.metrics = Metrics(engine)
    errors.install(app)
    for path, handler in (("/health", health), ("/v1/models", models), ("/v1/models/{model_id:path}", model_card),
                          ("/version", version), ("/metrics", metrics)):
        app.get(path)(handler)
    app.get("/playground", response_class=HTMLResponse)(playground)
    for path, handler in (("/v1/completions", completions), ("/v1/chat/completions", chat_completions),
                          ("/v1/infill", infill), ("/tokenize", tokenize)):
        app.post(path)(handler)
    # The body cap must run before FastAPI reads the body; the metrics wrap it, so a 413 is counted too.
    app.add_middleware(BodyLimit, limit=serve.max_body_bytes)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    return app


# -- small routes ---------------------------------------------------------------------------------------------


async def health(engine: EngineDep) -> dict:
    return {"status": "ok", "active": engine.limiter.active, "queued": engine.scheduler.queued}


def _card(engine: Engine) -> dict:
    return {"id": engine.model_name, "object": "model", "created": 0, "owned_by": "unmask",
            "max_model_len": engine.context}


async def models(engine: EngineDep) -> dict:
    return {"object": "list", "data": [_card(engine)]}


async def model_card(model_id: str, engine: EngineDep) -> dict:
    check_model(model_id, engine.model_name)
    return _card(engine)


async def version() -> dict:
    return {"version": unmask.__version__}


async def metrics(request: Request) -> Response:
    collected = request.app.state.metrics
    return Response(collected.render(), media_type=collected.content_type)


async def playground() -> HTMLResponse:
    return HTMLResponse(PLAYGROUND_HTML)


async def tokenize(req: TokenizeRequest, engine: EngineDep) -> dict:
    """The ids of ``prompt``, or of ``messages`` in the model's chat format, as a generation would see them."""
    check_model(req.model, engine.model_name)
    if (req.prompt is None) == (req.messages is None):
        raise ClientError("give exactly one of prompt and messages", param="prompt")
    text = req.prompt if req.prompt is not None else _chat_text(engine, req.messages)
    ids, _ = engine.canvas_of(engine.segments(text))
    return {"model": engine.model_name, "tokens": ids, "count": len(ids), "max_model_len": engine.context}


# -- generation routes ----------------------------------------------------------------------------------------


async def completions(request: Request, req: CompletionRequest, engine: EngineDep):
    check_model(req.model, engine.model_name)
    check_completion(req)
    prompts = _prompts(req.prompt)
    if len(prompts) > engine.serve.max_prompts:
        raise ClientError(f"at most {engine.serve.max_prompts} prompts per request", param="prompt")
    plans = [_completion_plan(engine, req, prompt) for prompt in prompts]
    return await generate(engine, request, req, plans, chat=False, echo=req.echo)


def _prompts(prompt: str | list) -> list[str | list[int]]:
    """The request's prompts: one text, a list of texts, one token-id list or a list of them."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt or (isinstance(prompt[0], list) and not all(prompt)):
        raise ClientError("the prompt is empty", param="prompt")
    return [prompt] if isinstance(prompt[0], int) else list(prompt)


def _completion_plan(engine: Engine, req: CompletionRequest, prompt: str | list[int]) -> Plan:
    """A prompt's plan; with a ``suffix``, the completion is the middle between prompt and suffix (an infill)."""
    ids, runs = engine.canvas_of(engine.segments(prompt)) if isinstance(prompt, str) else engine.token_canvas(prompt)
    if not req.suffix:
        return engine.plan(req, ids, runs, logprobs=req.logprobs)
    if has_holes(engine.segments(req.suffix)):
        raise ClientError("suffix must not contain <|mask|> placeholders", param="suffix")
    middle = req.max_tokens if req.max_tokens is not None else engine.default_tokens()
    if middle == 0:
        raise ClientError("max_tokens (the length of the text before suffix) must be at least 1", param="max_tokens")
    if middle > engine.serve.max_tokens:
        raise ClientError(f"max_tokens must be at most {engine.serve.max_tokens}", param="max_tokens")
    runs = [*runs, (len(ids), middle)]
    canvas = ids + [engine.mask_id] * middle + engine.tokenizer.encode(req.suffix)
    return engine.plan(req.model_copy(update={"max_tokens": 0}), canvas, runs, reply_run=len(runs) - 1,
                       logprobs=req.logprobs)


async def chat_completions(request: Request, req: ChatRequest, engine: EngineDep):
    check_model(req.model, engine.model_name)
    check_chat(req)
    max_tokens = chat_max_tokens(req)
    ids, runs = engine.canvas_of(engine.segments(_chat_text(engine, req.messages)))
    plan = engine.plan(req.model_copy(update={"max_tokens": max_tokens}), ids, runs,
                       logprobs=(req.top_logprobs or 0) if req.logprobs else None)
    return await generate(engine, request, req, [plan], chat=True)


def _chat_text(engine: Engine, messages: list[ChatMessage]) -> str:
    try:
        return engine.tokenizer.apply_chat_template(chat_messages(messages))
    except TokenizerError:
        raise ClientError("this model's tokenizer has no chat template") from None


async def infill(request: Request, req: InfillRequest, engine: EngineDep):
    """prefix + ``max_tokens`` masks (default 16) + suffix; ``text`` is the middle, ``full`` the document."""
    check_model(req.model, engine.model_name)
    if req.stream:
        raise ClientError("stream is not supported on /v1/infill")
    if has_holes(engine.segments(req.prefix)) or has_holes(engine.segments(req.suffix)):
        raise ClientError("prefix and suffix must not contain <|mask|> placeholders (use /v1/completions)")
    middle = req.max_tokens if req.max_tokens is not None else min(16, engine.serve.max_tokens)
    if middle == 0:
        raise ClientError("max_tokens (the middle's length) must be at least 1")
    if middle > engine.serve.max_tokens:
        raise ClientError(f"max_tokens must be at most {engine.serve.max_tokens}")
    # The middle is a hole between two literal spans: the canvas a prompt with one placeholder makes.
    ids, runs = engine.canvas_of([s for s in (req.prefix, Hole(middle), req.suffix) if s != ""])
    plan = engine.plan(req.model_copy(update={"max_tokens": 0}), ids, runs)
    prefix_ids, suffix_ids = ids[:runs[0][0]], ids[runs[0][0] + middle:]
    done, jobs = await run_to_completion(request, engine, [plan])
    choices = []
    for index in range(len(jobs)):
        event = done[index]
        # full: the whole final canvas decoded, so a test can see prefix and suffix survived byte for byte.
        choices.append({"index": index, "text": engine.decode_text(event.region),
                        "full": engine.decode_text(event.canvas), "middle_ids": event.region,
                        "finish_reason": "length", "unmask": engine.extension(plan, event)})
    return {"id": "infill-" + uuid.uuid4().hex[:24], "object": "infill", "created": int(time.time()),
            "model": engine.model_name, "choices": choices,
            "prefix_ids": prefix_ids, "suffix_ids": suffix_ids}
