"""From a validated request to scheduler jobs: canvases, plans (every limit checked), admission, submission.

A ``Plan`` is one prompt's canvas and decode settings; a request makes one plan per prompt and one job per
plan and choice (``n``). Choice ``i`` of prompt ``p`` has index ``p * n + i`` (OpenAI's order). The
``Limiter`` admits at most ``max_concurrency`` requests at a time (429 beyond); a request's ``Slot`` is freed
by whichever comes first, the handler's end or the worker finishing its last choice.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from unmask.analysis.arness import arness_profile, flatten_order
from unmask.config import DecodeConfig, DecoderConfig, GenerationDefaults
from unmask.editing.infill import build_canvas
from unmask.editing.placeholders import Hole, Segment, has_holes, parse_placeholders
from unmask.errors import ConfigError
from unmask.serve.config import ServeConfig
from unmask.serve.errors import ClientError
from unmask.serve.scheduler import DoneEvent, Event, FailedEvent, Job, Scheduler
from unmask.serve.schemas import DiffusionParams
from unmask.serve.text import TextStreamer

# request fields that choose a revising decoder (``decoding.revise``), passed to ``DecoderConfig`` as named
REVISION_FIELDS = ("revise", "revise_budget", "revise_per_step", "edit_low", "edit_high")


def _config_message(err: Exception) -> str:
    """A config error's text without the offending value (our messages end in ', got VALUE')."""
    text = str(err)
    for marker in (", got ", "; got "):
        text = text.split(marker)[0]
    return text[:200]


@dataclass(frozen=True)
class Plan:
    canvas: list[int]  # prompt ids with masks (placeholders and the appended reply)
    prompt_tokens: int  # canvas length without the reply's masks (appended, or an infilled middle)
    appended: int  # masks appended for the reply
    runs: list[tuple[int, int]]  # (start index in the job's region, count) per placeholder
    config: DecodeConfig
    decoder: DecoderConfig
    seeds: list[int]
    stops: tuple[str, ...]
    reply: tuple[int, int] = (0, 0)  # (start, count) in the region of the tokens the response text is made of
    logprobs: int | None = None  # None: no log-probs; k: each returned token's log-prob and k alternatives


def choice_plans(plans: Sequence[Plan]) -> list[Plan]:
    """The plan of each choice index: prompt by prompt, ``n`` choices each."""
    return [plan for plan in plans for _ in plan.seeds]


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
    """Turns validated requests into scheduler jobs and finished jobs into texts."""

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
        self.vocab_size = model.config.vocab_size

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

    def token_canvas(self, ids: list[int]) -> tuple[list[int], list[tuple[int, int]]]:
        """A token-id prompt: every id must be in the vocabulary; runs of the mask id are holes to fill."""
        if any(i >= self.vocab_size for i in ids):
            raise ClientError(f"prompt token ids must be below the vocabulary size {self.vocab_size}", param="prompt")
        runs: list[tuple[int, int]] = []
        for k, token in enumerate(ids):
            if token != self.mask_id:
                continue
            if runs and runs[-1][0] + runs[-1][1] == k:
                runs[-1] = (runs[-1][0], runs[-1][1] + 1)
            else:
                runs.append((k, 1))
        return list(ids), runs

    def default_tokens(self) -> int:
        return min(self.defaults.decode.max_new_tokens, self.serve.max_tokens)

    # -- planning -----------------------------------------------------------------------------------------
    def plan(self, req: DiffusionParams, prompt_ids: list[int], runs: list[tuple[int, int]], *,
             default_tokens: bool = True, reply_run: int | None = None, logprobs: int | None = None) -> Plan:
        """Check ``req`` against every limit and build the plan. The reply is the appended masks, or the
        placeholder run ``reply_run`` (an infilled middle: then nothing is appended)."""
        self._check_prompt(req, prompt_ids)
        appended = self._appended(req, runs, default_tokens)
        masks = appended + sum(c for _, c in runs)
        if masks == 0:
            raise ClientError("nothing to generate: max_tokens is 0 and the prompt has no <|mask|> placeholder")
        if len(prompt_ids) + appended > self.context:
            raise ClientError(f"prompt tokens + max_tokens exceed the model's context of {self.context} tokens")
        stops = self._stops(req)
        config, decoder = self._configs(req, masks, bool(runs))
        base = req.seed if req.seed is not None else random.SystemRandom().randrange(2**31)
        seeds = [(base + i) % 2**63 for i in range(req.n)]
        # Region indices of each placeholder run: the region is the canvas's masked positions in order.
        region_runs, offset = [], 0
        for _, count in runs:
            region_runs.append((offset, count))
            offset += count
        reply = region_runs[reply_run] if reply_run is not None else (offset, appended)
        prompt_tokens = len(prompt_ids) - (reply[1] if reply_run is not None else 0)  # an infilled middle is no prompt
        return Plan(prompt_ids + [self.mask_id] * appended, prompt_tokens, appended, region_runs, config,
                    decoder, seeds, stops, reply, logprobs)

    def _check_prompt(self, req: DiffusionParams, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise ClientError("the prompt is empty after tokenisation")
        if prompt_ids[0] == self.mask_id:
            raise ClientError("the prompt must start with text, not a mask (position 0 must be a real token)")
        if req.n > self.serve.max_n:
            raise ClientError(f"n must be at most {self.serve.max_n}", param="n")
        if req.steps is not None and req.steps > self.serve.max_steps:
            raise ClientError(f"steps must be at most {self.serve.max_steps}", param="steps")

    def _appended(self, req: DiffusionParams, runs: list, default_tokens: bool) -> int:
        if req.max_tokens is not None:
            appended = req.max_tokens
        else:
            appended = 0 if runs or not default_tokens else self.default_tokens()
        if appended > self.serve.max_tokens:
            raise ClientError(f"max_tokens must be at most {self.serve.max_tokens}", param="max_tokens")
        return appended

    def _stops(self, req: DiffusionParams) -> tuple[str, ...]:
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        if len(stops) > self.serve.max_stop:
            raise ClientError(f"at most {self.serve.max_stop} stop sequences are allowed", param="stop")
        if any(not s or len(s) > self.serve.max_stop_chars for s in stops):
            raise ClientError(f"each stop sequence must have 1 to {self.serve.max_stop_chars} characters",
                              param="stop")
        return tuple(stops)

    def _configs(self, req: DiffusionParams, masks: int, has_runs: bool) -> tuple[DecodeConfig, DecoderConfig]:
        changes = {"max_new_tokens": masks, "steps": req.steps or masks}
        for name in ("temperature", "top_p", "top_k", "alg", "alg_temp"):
            if getattr(req, name) is not None:
                changes[name] = getattr(req, name)
        try:
            # The model's recommended decoder unless the request names one. It is recommended for completions:
            # masks inside the prompt default to the reference sampler (every decoder fills them if asked).
            base = dataclasses.replace(self.defaults, decoder=DecoderConfig()) if has_runs else self.defaults
            asked = {k: getattr(req, k) for k in ("decoder", "block_length", "threshold", *REVISION_FIELDS)
                     if getattr(req, k) is not None}
            config, decoder = base.updated(changes, asked)
        except ConfigError as err:
            raise ClientError(_config_message(err)) from None
        if decoder.decoder == "blocks" and config.alg == "origin":
            raise ClientError("the blocks decoder ranks positions by confidence: use an alg other than origin")
        return config, decoder

    # -- running ------------------------------------------------------------------------------------------
    def submit(self, plans: Sequence[Plan], *, want_steps: bool) -> tuple[asyncio.Queue, list[Job], Slot]:
        """One job per choice (index order: ``choice_plans``); their events arrive on the queue as (index, event)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        per_choice = choice_plans(plans)
        slot = self.limiter.acquire(len(per_choice))
        seeds = [seed for plan in plans for seed in plan.seeds]
        jobs = []
        try:
            for index, (plan, seed) in enumerate(zip(per_choice, seeds)):
                def emit(event: Event, index: int = index) -> None:
                    if isinstance(event, (DoneEvent, FailedEvent)):
                        slot.choice_finished()
                    loop.call_soon_threadsafe(queue.put_nowait, (index, event))

                jobs.append(Job(plan.canvas, plan.appended, plan.config, plan.decoder, self.mask_id, seed, emit,
                                want_steps=want_steps, logprobs=plan.logprobs))
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
        start, count = plan.reply
        return region[start:start + count]

    def extension(self, plan: Plan, done: DoneEvent) -> dict:
        """The ``unmask`` object of a finished choice: placeholder fills, AR-ness of the decode, costs."""
        profile = arness_profile(flatten_order(done.order), ks_local=(1, 2, 4), ks_global=(1, 2),
                                 length=len(done.region)) if done.order else None
        return {"filled": [self.decode_text(done.region[s:s + c]) for s, c in plan.runs],
                "arness": profile, "forward_passes": done.forwards, "steps": plan.config.steps,
                "batch_size": done.batch_size, "decoder": plan.decoder.decoder}
