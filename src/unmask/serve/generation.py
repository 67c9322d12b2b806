"""Running plans and answering in OpenAI's shapes: a whole response, or a server-sent event stream.

Both paths finish a choice the same way (``finish_reply``): the reply region's text cut at the first stop,
the tokens that text is made of (``usage`` counts them) and, when asked, their log-probs at commit.
With ``stream_options.include_usage`` every chunk has ``"usage": null`` and a last chunk, before
``[DONE]``, carries the usage and no choices (as OpenAI streams it). In a stream, a choice's log-probs come
in its final chunk: a diffusion decode knows a token's text only once everything before it is committed.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import StreamingResponse

from unmask.serve.engine import Engine, Plan, Slot, choice_plans
from unmask.serve.errors import ClientError, error_body
from unmask.serve.logprobs import chat_logprobs, legacy_logprobs, returned_tokens
from unmask.serve.scheduler import DoneEvent, FailedEvent, Job, StepEvent, TokenLogprob
from unmask.serve.schemas import DiffusionParams
from unmask.serve.text import TextStreamer, cut_at_stop_ids


@dataclass(frozen=True)
class Reply:
    """A finished choice: its text, why it ended, the tokens of that text and their log-probs (if asked)."""

    delta: str  # the text not streamed yet (all of it, outside a stream)
    text: str
    finish: str  # "stop" (a stop token or sequence) or "length"
    tokens: list[int]
    logprobs: list[TokenLogprob] | None


def finish_reply(engine: Engine, plan: Plan, done: DoneEvent, streamer: TextStreamer | None = None) -> Reply:
    streamer = streamer or engine.streamer(plan)
    region = engine.reply_region(plan, done.region)
    delta = streamer.feed(region, final=True)
    ids = cut_at_stop_ids(region, engine.stop_ids)[0]
    tokens = ids[:returned_tokens(ids, streamer.sent, engine.decode_text)]
    scores = None
    if plan.logprobs is not None and done.logprobs is not None:
        start = plan.reply[0]
        scores = done.logprobs[start:start + len(tokens)]
    return Reply(delta, streamer.sent, "stop" if streamer.stopped else "length", tokens, scores)


def render_logprobs(engine: Engine, plan: Plan, reply: Reply, chat: bool) -> dict | None:
    if reply.logprobs is None:
        return None
    shape = chat_logprobs if chat else legacy_logprobs
    return shape(engine.tokenizer, reply.tokens, reply.logprobs, plan.logprobs or 0)


def usage(plans: list[Plan], completion_tokens: int) -> dict:
    prompt = sum(p.prompt_tokens for p in plans)  # once per prompt, whatever n
    return {"prompt_tokens": prompt, "completion_tokens": completion_tokens,
            "total_tokens": prompt + completion_tokens}


async def generate(engine: Engine, request: Request, req: DiffusionParams, plans: list[Plan], *, chat: bool,
                   echo: bool = False):
    """The response to a completion request: one choice per plan and ``n``, whole or streamed."""
    created = int(time.time())
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    if req.stream:
        # Admission (429) happens here, before the 200 header goes out; the slot also frees itself when
        # the worker finishes every choice, even if the response body is never iterated.
        submitted = engine.submit(plans, want_steps=True)
        head = {"id": ident, "object": "chat.completion.chunk" if chat else "text_completion", "created": created,
                "model": engine.model_name}
        return StreamingResponse(_stream(engine, plans, req, head, chat, *submitted),
                                 media_type="text/event-stream", headers={"cache-control": "no-cache"})
    done, _ = await run_to_completion(request, engine, plans)
    choices, completion_tokens = [], 0
    for index, plan in enumerate(choice_plans(plans)):
        event = done[index]
        reply = finish_reply(engine, plan, event)
        completion_tokens += len(reply.tokens)
        text = engine.decode_text(event.canvas[:plan.prompt_tokens]) + reply.text if echo else reply.text
        choices.append(choice(chat, index, text, reply.finish, engine.extension(plan, event),
                              logprobs=render_logprobs(engine, plan, reply, chat)))
    return {"id": ident, "object": "chat.completion" if chat else "text_completion", "created": created,
            "model": engine.model_name, "choices": choices, "usage": usage(plans, completion_tokens)}


async def run_to_completion(request: Request, engine: Engine, plans: list[Plan]) -> tuple[dict[int, DoneEvent], list]:
    """Submit non-streaming plans and wait for all their choices; whatever happens (a disconnect, an error),
    the jobs are cancelled and the concurrency slot is released."""
    queue, jobs, slot = engine.submit(plans, want_steps=False)
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


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n"


async def _stream(engine: Engine, plans: list[Plan], req: DiffusionParams, head: dict, chat: bool,
                  queue: asyncio.Queue, jobs: list[Job], slot: Slot) -> AsyncIterator[str]:
    per_choice = choice_plans(plans)
    options = getattr(req, "stream_options", None)
    with_usage = bool(options and options.include_usage)
    base = {**head, "usage": None} if with_usage else head
    try:
        if chat:
            for index in range(len(jobs)):
                yield sse({**base, "choices": [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                "finish_reason": None, "logprobs": None}]})
        streamers = [engine.streamer(plan) for plan in per_choice]
        left, completion_tokens = len(jobs), 0
        while left:
            index, event = await queue.get()
            plan = per_choice[index]
            if isinstance(event, FailedEvent):
                yield sse(error_body(event.message, "server_error"))
                break
            if isinstance(event, StepEvent):
                delta = streamers[index].feed(engine.reply_region(plan, event.region))
                ext = canvas_ext(engine, event) if req.stream_canvas else None
                if delta or ext is not None:
                    yield sse({**base, "choices": [choice(chat, index, delta, ext=ext, stream=True)]})
                continue
            reply = finish_reply(engine, plan, event, streamers[index])
            completion_tokens += len(reply.tokens)
            last = choice(chat, index, reply.delta, reply.finish, engine.extension(plan, event), stream=True,
                          logprobs=render_logprobs(engine, plan, reply, chat))
            yield sse({**base, "choices": [last]})
            left -= 1
        if with_usage and left == 0:
            yield sse({**head, "choices": [], "usage": usage(plans, completion_tokens)})
        yield sse("[DONE]")
    finally:
        # Reached on completion, on error and when the client disconnects (the response is cancelled).
        for job in jobs:
            job.cancelled.set()
        slot.release()


def choice(chat: bool, index: int, text: str, finish: str | None = None, ext: dict | None = None, *,
           stream: bool = False, logprobs: dict | None = None) -> dict:
    """One OpenAI choice: a completion's text, or a chat message (its delta in a stream chunk); ``unmask``
    carries the extension (``Engine.extension``, or a step's canvas)."""
    if not chat:
        body: dict = {"text": text}
    elif stream:
        body = {"delta": {"content": text} if text else {}}
    else:
        body = {"message": {"role": "assistant", "content": text}}
    return {"index": index, **body, "finish_reason": finish, "logprobs": logprobs,
            **({} if ext is None else {"unmask": ext})}


def canvas_ext(engine: Engine, event: StepEvent) -> dict:
    """A step's canvas for ``stream_canvas``: each reply position's text, None while still masked."""
    texts = engine.tokenizer.token_texts(event.region)
    return {"step": event.step, "committed": event.committed,
            "canvas": [None if t == engine.mask_id else s for t, s in zip(event.region, texts)]}
