"""The FastAPI application: OpenAI-compatible routes over the diffusion decoders, with limits everywhere.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``POST /v1/infill``, ``GET /v1/models``,
``GET /health``, ``GET /playground``. ``create_app(model, tokenizer, ServeConfig())`` builds the app;
``unmask serve MODEL`` runs it with uvicorn. Request fields are documented in ``schemas``.

Reliability rules: the body is capped before parsing (413); bodies are strict pydantic models (422);
limits from ``ServeConfig`` and the model's context give 400; errors are ``{"error": {"message", "type"}}``
with a short message that never repeats the input; more than ``max_concurrency`` requests running or queued
gives 429; a client that disconnects cancels its decode between steps; an unexpected server fault is logged
and answered 500 without details (client input alone never causes one: schemathesis checks that).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from unmask.analysis.arness import arness_profile, flatten_order
from unmask.config import DecodeConfig, DecoderConfig, GenerationDefaults
from unmask.editing.infill import build_canvas
from unmask.editing.placeholders import Hole, Segment, has_holes, parse_placeholders
from unmask.errors import ConfigError, TokenizerError
from unmask.serve.config import ServeConfig
from unmask.serve.playground import PLAYGROUND_HTML
from unmask.serve.scheduler import DoneEvent, Event, FailedEvent, Job, Scheduler, StepEvent
from unmask.serve.schemas import ChatRequest, CompletionRequest, DiffusionParams, InfillRequest
from unmask.serve.text import TextStreamer, cut_at_stop_ids

log = logging.getLogger(__name__)


class ClientError(Exception):
    """A request the server refuses; ``message`` is written by us and never contains the input."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.status = message, status


def error_body(message: str, kind: str = "invalid_request_error") -> dict:
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _config_message(err: Exception) -> str:
    """A config error's text without the offending value (our messages end in ', got VALUE')."""
    text = str(err)
    for marker in (", got ", "; got "):
        text = text.split(marker)[0]
    return text[:200]


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
# planning a generation: text → canvas + configs, every limit checked


@dataclass(frozen=True)
class Plan:
    canvas: list[int]  # prompt ids with masks (placeholders and the appended reply)
    prompt_tokens: int  # canvas length without the appended masks
    appended: int  # masks appended for the reply
    runs: list[tuple[int, int]]  # (start index in the job's region, count) per placeholder
    config: DecodeConfig
    decoder: DecoderConfig
    seeds: list[int]
    stops: tuple[str, ...]


class Slot:
    """One admitted request; released once (by the handler's end or by the worker finishing every choice)."""

    def __init__(self, limiter: Limiter, choices: int) -> None:
        self._limiter, self._left, self._done = limiter, choices, False
        self._lock = threading.Lock()

    def choice_finished(self) -> None:
        with self._lock:
            self._left -= 1
            last = self._left == 0
        if last:
            self.release()

    def release(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = True
        self._limiter.release()


class Limiter:
    def __init__(self, limit: int) -> None:
        self.limit, self.active = limit, 0
        self._lock = threading.Lock()

    def acquire(self, choices: int) -> Slot:
        with self._lock:
            if self.active >= self.limit:
                raise ClientError("the server is at its concurrency limit; retry later", 429)
            self.active += 1
        return Slot(self, choices)

    def release(self) -> None:
        with self._lock:
            self.active -= 1


class Engine:
    """Turns validated requests into scheduler jobs and results into OpenAI-shaped answers."""

    def __init__(self, model, tokenizer, serve: ServeConfig, model_name: str,
                 defaults: GenerationDefaults | None = None) -> None:
        self.model, self.tokenizer, self.serve, self.model_name = model, tokenizer, serve, model_name
        self.mask_id = tokenizer.special.mask
        if model.config.mask_token_id is not None and model.config.mask_token_id != self.mask_id:
            raise ConfigError("the tokenizer's <|mask|> id differs from the model's mask_token_id")
        pad = model.config.pad_token_id if model.config.pad_token_id is not None else tokenizer.special.pad
        self.scheduler = Scheduler(model, pad_token_id=pad, max_batch=serve.max_batch,
                                   batch_wait_ms=serve.batch_wait_ms)
        self.limiter = Limiter(serve.max_concurrency)
        self.stop_ids = tokenizer.special.stop_ids()
        self.defaults = defaults or GenerationDefaults.of(model)
        self.context = model.config.max_position_embeddings

    # -- canvas -------------------------------------------------------------------------------------------
    def segments(self, text: str) -> list[Segment]:
        """``text`` split at its placeholders (the CLI's grammar; here ``<|mask|>`` is one masked token)."""
        try:
            return parse_placeholders(text, default_length=1, max_masks=self.serve.max_masks)
        except ValueError as err:
            raise ClientError(str(err)) from None

    def canvas_of(self, segments: list[Segment]) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids of text segments and holes (``editing.infill.build_canvas``); (start, count) of each hole."""
        if not has_holes(segments):
            return self.tokenizer.encode("".join(segments)), []
        if isinstance(segments[0], Hole):
            raise ClientError("the prompt must start with text, not a mask (position 0 must be a real token)")
        canvas = build_canvas(segments, self.tokenizer.encode, default_length=1, mask_id=self.mask_id,
                              bos_id=self.mask_id)  # never used: the canvas starts with text
        return list(canvas.ids), [(start, end - start) for start, end in canvas.holes]

    def plan(self, req: DiffusionParams, prompt_ids: list[int], runs: list[tuple[int, int]], *,
             default_tokens: bool = True) -> Plan:
        serve = self.serve
        if not prompt_ids:
            raise ClientError("the prompt is empty after tokenisation")
        if prompt_ids[0] == self.mask_id:
            raise ClientError("the prompt must start with text, not a mask (position 0 must be a real token)")
        if req.n > serve.max_n:
            raise ClientError(f"n must be at most {serve.max_n}")
        if req.max_tokens is not None:
            appended = req.max_tokens
        elif runs or not default_tokens:
            appended = 0
        else:
            appended = min(self.defaults.decode.max_new_tokens, serve.max_tokens)
        if appended > serve.max_tokens:
            raise ClientError(f"max_tokens must be at most {serve.max_tokens}")
        masks = appended + sum(c for _, c in runs)
        if masks == 0:
            raise ClientError("nothing to generate: max_tokens is 0 and the prompt has no <|mask|> placeholder")
        if len(prompt_ids) + appended > self.context:
            raise ClientError(f"prompt tokens + max_tokens exceed the model's context of {self.context} tokens")
        if req.steps is not None and req.steps > serve.max_steps:
            raise ClientError(f"steps must be at most {serve.max_steps}")
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > serve.max_stop:
            raise ClientError(f"at most {serve.max_stop} stop sequences are allowed")
        if any(not s or len(s) > serve.max_stop_chars for s in stops):
            raise ClientError(f"each stop sequence must have 1 to {serve.max_stop_chars} characters")
        changes = {"max_new_tokens": masks, "steps": req.steps or masks}
        for name in ("temperature", "top_p", "top_k", "alg", "alg_temp"):
            if getattr(req, name) is not None:
                changes[name] = getattr(req, name)
        try:
            # The model's recommended decoder unless the request names one. It is recommended for completions:
            # masks inside the prompt default to the reference sampler (every decoder fills them if asked).
            base = dataclasses.replace(self.defaults, decoder=DecoderConfig()) if runs else self.defaults
            asked = {k: getattr(req, k) for k in ("decoder", "block_length", "threshold")
                     if getattr(req, k) is not None}
            config, decoder = base.updated(changes, asked)
        except ConfigError as err:
            raise ClientError(_config_message(err)) from None
        if decoder.decoder == "blocks" and config.alg == "origin":
            raise ClientError("the blocks decoder ranks positions by confidence: use an alg other than origin")
        base = req.seed if req.seed is not None else random.SystemRandom().randrange(2**31)
        seeds = [(base + i) % 2**63 for i in range(req.n)]
        # Region indices of each placeholder run: the region is the canvas's masked positions in order.
        region_runs, offset = [], 0
        for _, count in runs:
            region_runs.append((offset, count))
            offset += count
        return Plan(prompt_ids + [self.mask_id] * appended, len(prompt_ids), appended, region_runs, config,
                    decoder, seeds, tuple(stops))

    # -- running ------------------------------------------------------------------------------------------
    def submit(self, plan: Plan, *, want_steps: bool) -> tuple[asyncio.Queue, list[Job], Slot]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        slot = self.limiter.acquire(len(plan.seeds))
        jobs = []
        try:
            for index, seed in enumerate(plan.seeds):
                def emit(event: Event, index: int = index) -> None:
                    if isinstance(event, (DoneEvent, FailedEvent)):
                        slot.choice_finished()
                    loop.call_soon_threadsafe(queue.put_nowait, (index, event))

                jobs.append(Job(plan.canvas, plan.appended, plan.config, plan.decoder, self.mask_id, seed, emit,
                                want_steps=want_steps))
            for job in jobs:
                self.scheduler.submit(job)
        except Exception:
            for job in jobs:
                job.cancelled.set()
            slot.release()
            raise
        return queue, jobs, slot

    def streamer(self, plan: Plan) -> TextStreamer:
        return TextStreamer(decode=self.decode_text, mask_token_id=self.mask_id, stop_ids=self.stop_ids,
                            stops=plan.stops)

    def decode_text(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(ids, cut=False)

    def reply_region(self, plan: Plan, region: list[int]) -> list[int]:
        return region[len(region) - plan.appended:] if plan.appended else []

    def extension(self, plan: Plan, done: DoneEvent) -> dict:
        """The ``unmask`` object of a finished choice: placeholder fills, AR-ness of the decode, costs."""
        profile = arness_profile(flatten_order(done.order), ks_local=(1, 2, 4), ks_global=(1, 2),
                                 length=len(done.region)) if done.order else None
        return {"filled": [self.decode_text(done.region[s:s + c]) for s, c in plan.runs],
                "arness": profile, "forward_passes": done.forwards, "steps": plan.config.steps,
                "batch_size": done.batch_size, "decoder": plan.decoder.decoder}


async def _run_to_completion(request: Request, engine, plan: Plan) -> tuple[dict[int, DoneEvent], list]:
    """Submit a non-streaming plan and wait for all its choices; whatever happens (a disconnect, an error),
    its jobs are cancelled and its concurrency slot is released."""
    queue, jobs, slot = engine.submit(plan, want_steps=False)
    try:
        return await _wait_all(request, queue, len(jobs)), jobs
    finally:
        for job in jobs:
            job.cancelled.set()
        slot.release()


async def _wait_all(request: Request, queue: asyncio.Queue, count: int) -> dict[int, DoneEvent]:
    """Wait for every choice's DoneEvent, polling for a client disconnect so it can cancel the decode."""
    done: dict[int, DoneEvent] = {}
    while len(done) < count:
        try:
            index, event = await asyncio.wait_for(queue.get(), timeout=0.25)
        except asyncio.TimeoutError:
            if await request.is_disconnected():
                raise asyncio.CancelledError from None
            continue
        if isinstance(event, FailedEvent):
            raise ClientError(event.message, 503)
        if isinstance(event, DoneEvent):
            done[index] = event
    return done


def _sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


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
    app = FastAPI(title="unmask", version="1", lifespan=_lifespan,
                  description="OpenAI-compatible API for masked diffusion language models.")
    app.state.engine = engine
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_exception_handler(ClientError, client_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
    app.get("/health")(health)
    app.get("/v1/models")(models)
    app.get("/playground", response_class=HTMLResponse)(playground)
    app.post("/v1/completions")(completions)
    app.post("/v1/chat/completions")(chat_completions)
    app.post("/v1/infill")(infill)
    # The body cap is the outermost middleware: it must run before FastAPI reads the body.
    app.add_middleware(BodyLimit, limit=serve.max_body_bytes)
    return app


# -- errors: every answer is {"error": {...}} with a message of ours ------------------------------------------


async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    parts = []
    for err in exc.errors()[:3]:
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        parts.append(f"{where}: {str(err.get('msg', 'invalid'))[:100]}")
    return JSONResponse(error_body("invalid request: " + "; ".join(parts)), status_code=422)


async def client_error(request: Request, exc: ClientError) -> JSONResponse:
    kind = "rate_limit_error" if exc.status == 429 else "invalid_request_error"
    return JSONResponse(error_body(exc.message, kind), status_code=exc.status)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(exc.detail)[:200]), status_code=exc.status_code)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


# -- routes ---------------------------------------------------------------------------------------------------


async def health(engine: EngineDep) -> dict:
    return {"status": "ok", "active": engine.limiter.active, "queued": engine.scheduler.queued}


async def models(engine: EngineDep) -> dict:
    return {"object": "list", "data": [{"id": engine.model_name, "object": "model", "created": 0,
                                        "owned_by": "unmask"}]}


async def playground() -> HTMLResponse:
    return HTMLResponse(PLAYGROUND_HTML)


async def completions(request: Request, req: CompletionRequest, engine: EngineDep):
    if req.echo and req.stream:
        raise ClientError("echo is not supported together with stream")
    ids, runs = engine.canvas_of(engine.segments(req.prompt))
    plan = engine.plan(req, ids, runs)
    return await _generate(engine, request, req, plan, chat=False, echo_text=req.prompt if req.echo else None)


async def chat_completions(request: Request, req: ChatRequest, engine: EngineDep):
    messages = [{"role": m.role, "content": m.content} for m in req.messages]
    try:
        text = engine.tokenizer.apply_chat_template(messages)
    except TokenizerError:
        raise ClientError("this model's tokenizer has no chat template") from None
    ids, runs = engine.canvas_of(engine.segments(text))
    plan = engine.plan(req, ids, runs)
    return await _generate(engine, request, req, plan, chat=True, echo_text=None)


async def infill(request: Request, req: InfillRequest, engine: EngineDep):
    """prefix + ``max_tokens`` masks (default 16) + suffix; ``text`` is the middle, ``full`` the document."""
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
    done, jobs = await _run_to_completion(request, engine, plan)
    choices = []
    for index in range(len(jobs)):
        event = done[index]
        middle_text = engine.decode_text(event.region)
        # full: the whole final canvas decoded, so a test can see prefix and suffix survived byte for byte.
        choices.append({"index": index, "text": middle_text, "full": engine.decode_text(event.canvas),
                        "middle_ids": event.region, "finish_reason": "length",
                        "unmask": engine.extension(plan, event)})
    return {"id": "infill-" + uuid.uuid4().hex[:24], "object": "infill", "created": int(time.time()),
            "model": engine.model_name, "choices": choices,
            "prefix_ids": prefix_ids, "suffix_ids": suffix_ids}


# -- completions: whole answers or a server-sent event stream -------------------------------------------------


async def _generate(engine: Engine, request: Request, req: DiffusionParams, plan: Plan, *, chat: bool,
                    echo_text: str | None):
    created = int(time.time())
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    obj = "chat.completion" if chat else "text_completion"
    if req.stream:
        # Admission (429) happens here, before the 200 header goes out; the slot also frees itself when
        # the worker finishes every choice, even if the response body is never iterated.
        submitted = engine.submit(plan, want_steps=True)
        return StreamingResponse(_stream(engine, plan, req, ident, created, chat, *submitted),
                                 media_type="text/event-stream", headers={"cache-control": "no-cache"})
    done, jobs = await _run_to_completion(request, engine, plan)
    choices, completion_tokens = [], 0
    for index in range(len(jobs)):
        event = done[index]
        streamer = engine.streamer(plan)
        reply = engine.reply_region(plan, event.region)
        text = streamer.feed(reply, final=True)
        completion_tokens += len(cut_at_stop_ids(reply, engine.stop_ids)[0])
        finish = "stop" if streamer.stopped else "length"
        if echo_text is not None:
            text = engine.decode_text(event.canvas[:plan.prompt_tokens]) + text
        choices.append(_choice(chat, index, text, finish, engine.extension(plan, event)))
    usage = {"prompt_tokens": plan.prompt_tokens, "completion_tokens": completion_tokens,
             "total_tokens": plan.prompt_tokens + completion_tokens}
    return {"id": ident, "object": obj, "created": created, "model": engine.model_name, "choices": choices,
            "usage": usage}


async def _stream(engine: Engine, plan: Plan, req: DiffusionParams, ident: str, created: int, chat: bool,
                  queue: asyncio.Queue, jobs: list[Job], slot: Slot) -> AsyncIterator[str]:
    try:
        obj = "chat.completion.chunk" if chat else "text_completion"
        base = {"id": ident, "object": obj, "created": created, "model": engine.model_name}
        if chat:
            for index in range(len(jobs)):
                yield _sse({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                 "finish_reason": None, "logprobs": None}]})
        streamers = [engine.streamer(plan) for _ in jobs]
        left = len(jobs)
        while left:
            index, event = await queue.get()
            if isinstance(event, FailedEvent):
                yield _sse(error_body(event.message, "server_error"))
                break
            if isinstance(event, StepEvent):
                delta = streamers[index].feed(engine.reply_region(plan, event.region))
                ext = _canvas_ext(engine, event) if req.stream_canvas else None
                if delta or ext is not None:
                    yield _sse({**base, "choices": [_choice(chat, index, delta, ext=ext, stream=True)]})
                continue
            delta = streamers[index].feed(engine.reply_region(plan, event.region), final=True)
            finish = "stop" if streamers[index].stopped else "length"
            choice = _choice(chat, index, delta, finish, engine.extension(plan, event), stream=True)
            yield _sse({**base, "choices": [choice]})
            left -= 1
        yield _sse("[DONE]")
    finally:
        # Reached on completion, on error and when the client disconnects (the response is cancelled).
        for job in jobs:
            job.cancelled.set()
        slot.release()


def _choice(chat: bool, index: int, text: str, finish: str | None = None, ext: dict | None = None, *,
            stream: bool = False) -> dict:
    """One OpenAI choice: a completion's text, or a chat message (its delta in a stream chunk); ``unmask``
    carries the extension (``Engine.extension``, or a step's canvas)."""
    if not chat:
        body: dict = {"text": text}
    elif stream:
        body = {"delta": {"content": text} if text else {}}
    else:
        body = {"message": {"role": "assistant", "content": text}}
    return {"index": index, **body, "finish_reason": finish, "logprobs": None,
            **({} if ext is None else {"unmask": ext})}


def _canvas_ext(engine: Engine, event: StepEvent) -> dict:
    """A step's canvas for ``stream_canvas``: each reply position's text, None while still masked."""
    texts = engine.tokenizer.token_texts(event.region)
    return {"step": event.step, "committed": event.committed,
            "canvas": [None if t == engine.mask_id else s for t, s in zip(event.region, texts)]}
