"""One worker thread that runs every decode, batching compatible requests into shared forward passes.

Requests become ``Job`` s (one per choice). The worker takes the oldest queued job; when it is
deterministic (temperature 0, alg_temp 0, not ``origin``, not ``dream_compat``) it waits ``batch_wait_ms``
and takes up to ``max_batch - 1`` more queued jobs with the same ``key`` (same sampler and decoder settings,
same number of masks), left-pads their canvases and decodes them as one batch. Rows of a deterministic decode
do not interact, so each row's result equals the job decoded alone (checked by the tests). Sampled jobs run
alone with their own seeded generator: a shared generator would make a row's draws depend on its batch-mates.

Between denoising steps the worker drops rows whose client went away (``cancelled``); when every row of a
batch is gone it stops the decode. Results go back through each job's ``emit`` callback (thread-safe sink).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from unmask.config import DecodeConfig, DecoderConfig
from unmask.decoding.canvas import left_pad
from unmask.decoding.dispatch import decode_stream
from unmask.decoding.lossless import rows_independent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepEvent:
    step: int
    region: list[int]  # ids at the job's masked positions, in canvas order (mask id where still masked)
    committed: list[int]  # region indices committed at this step


@dataclass(frozen=True)
class TokenLogprob:
    """A committed token's log-probability at the step that committed it, and that step's likeliest tokens."""

    logprob: float
    top: tuple[tuple[int, float], ...]  # (token id, log p), most likely first
    step: int


@dataclass(frozen=True)
class DoneEvent:
    canvas: list[int]  # the job's final canvas (no padding)
    region: list[int]
    order: list[list[int]]  # region indices committed per step (the decode trace, for AR-ness)
    forwards: int  # forward passes of the (possibly batched) decode
    batch_size: int  # rows that shared those forwards
    logprobs: list[TokenLogprob | None] | None = None  # per region index, when the job asked (``Job.logprobs``)


@dataclass(frozen=True)
class FailedEvent:
    message: str


Event = StepEvent | DoneEvent | FailedEvent


@dataclass(eq=False)
class Job:
    """One row to decode: a canvas whose masked positions are filled; the last ``appended`` are the reply."""

    canvas: list[int]
    appended: int
    config: DecodeConfig
    decoder: DecoderConfig
    mask_token_id: int
    seed: int
    emit: Callable[[Event], None]
    want_steps: bool = False
    logprobs: int | None = None  # None: no log-probs; k: each token's log-prob at commit and k alternatives
    cancelled: threading.Event = field(default_factory=threading.Event)
    masked: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.masked = [i for i, t in enumerate(self.canvas) if t == self.mask_token_id]
        if not self.masked:
            raise ValueError("a job needs at least one masked position")
        if self.canvas[0] == self.mask_token_id:
            raise ValueError("position 0 of a canvas must be a real token, not a mask")

    @property
    def deterministic(self) -> bool:
        """No draw and no row interaction (``lossless.rows_independent``): the job may share a batch."""
        return rows_independent(self.config)

    @property
    def key(self) -> tuple:
        return (self.config, self.decoder, self.appended, len(self.masked), self.logprobs)


class Scheduler:
    """Queue + worker thread. ``submit`` from any thread; ``close`` stops the worker after the current batch."""

    def __init__(self, model, *, pad_token_id: int, max_batch: int = 8, batch_wait_ms: float = 5.0) -> None:
        self.model = model
        self.pad_token_id = pad_token_id
        self.max_batch = max_batch
        self.batch_wait = batch_wait_ms / 1000
        self._pending: list[Job] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.batches_run = 0  # batches decoded so far (a test reads it to see that batching happened)
        self.rows_run = 0
        self.forwards_run = 0  # model calls, each batch's counted once (``/metrics``)
        self.tokens_decoded = 0  # masked positions filled in rows whose client was still there (``/metrics``)

    # -- lifecycle --------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="unmask-scheduler", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            for job in self._pending:
                job.cancelled.set()
            self._pending.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, job: Job) -> None:
        with self._cond:
            if self._closed:
                raise RuntimeError("the scheduler is closed")
            self._pending.append(job)
            self._cond.notify()

    @property
    def queued(self) -> int:
        with self._cond:
            return len(self._pending)

    # -- worker -----------------------------------------------------------------------------------------
    def _next_batch(self) -> list[Job] | None:
        with self._cond:
            while True:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return None
                first = self._pending.pop(0)
                if not first.cancelled.is_set():
                    break
        if not first.deterministic or self.max_batch == 1:
            return [first]
        if self.batch_wait > 0:
            time.sleep(self.batch_wait)  # let requests that arrive together share the forwards
        with self._cond:
            mates = [j for j in self._pending if j.deterministic and j.key == first.key
                     and not j.cancelled.is_set()][:self.max_batch - 1]
            taken = set(map(id, mates))
            self._pending = [j for j in self._pending if id(j) not in taken]
        return [first, *mates]

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            try:
                self.run_batch(batch)
            except Exception:  # a bug or an out-of-memory must fail these requests, not the server
                log.exception("decode failed for a batch of %d", len(batch))
                for job in batch:
                    _safe_emit(job, FailedEvent("the decode failed on the server"))

    def run_batch(self, batch: list[Job]) -> None:
        """Decode ``batch`` (compatible jobs) as one left-padded canvas; emit events per row."""
        first = batch[0]
        device = self.model.device
        canvas, attention, offsets = left_pad([j.canvas for j in batch], self.pad_token_id, device=device)  # (B, T)
        attention = attention if any(offsets) else None  # (B, T), 0 = pad
        rows = [_Row(job, off, device) for job, off in zip(batch, offsets)]
        region_start = canvas.shape[1] - first.appended if first.appended else 1  # blocks need a suffix region
        generator = torch.Generator(device=device).manual_seed(first.seed)
        forwards = 0
        final = canvas
        stream = decode_stream(self.model, canvas, attention, config=first.config, decoder=first.decoder,
                               region_start=region_start, mask_token_id=first.mask_token_id, generator=generator,
                               logprobs=first.logprobs)
        try:
            for event in stream:
                forwards += event.forwards
                final = event.canvas
                lps = _logprob_lists(event) if event.logprobs is not None else None
                if sum(row.record(event, r, lps) for r, row in enumerate(rows)) == 0:
                    return  # every client left: stop between steps
        finally:
            stream.close()
            self.forwards_run += forwards
        self.batches_run += 1
        self.rows_run += len(batch)
        for r, row in enumerate(rows):
            if not row.job.cancelled.is_set():
                self.tokens_decoded += len(row.job.masked)
                _safe_emit(row.job, row.done(final[r].tolist()[row.offset:], forwards, len(batch)))


class _Row:
    """One job's bookkeeping inside a batch: its masked columns, commit order and log-probs, in region indices."""

    def __init__(self, job: Job, offset: int, device) -> None:
        self.job, self.offset = job, offset
        self.columns = torch.tensor([offset + p for p in job.masked], device=device)  # canvas columns of the masks
        self.rank = {offset + p: r for r, p in enumerate(job.masked)}  # canvas column → region index
        self.order: list[list[int]] = []
        self.logprobs: list[TokenLogprob | None] | None = [None] * len(job.masked) if job.logprobs is not None else None

    def record(self, event, row: int, lps: list | None) -> bool:
        """Note one step of this row (and send it if the client streams); False once the client has gone."""
        job = self.job
        if job.cancelled.is_set():
            return False
        cols = event.committed[row].nonzero(as_tuple=True)[0].tolist()
        if event.revised is not None:  # a revised position counts at its final assignment (docs/sampler.md)
            taken = {self.rank[c] for c in event.revised[row].nonzero(as_tuple=True)[0].tolist() if c in self.rank}
            self.order = [[p for p in step if p not in taken] for step in self.order]
            edited = event.revised[row] & (event.canvas[row] != job.mask_token_id)  # not re-masked: replaced
            cols = sorted(set(cols) | set(edited.nonzero(as_tuple=True)[0].tolist()))
        committed = sorted(self.rank[c] for c in cols if c in self.rank)
        self.order.append(committed)
        if lps is not None and self.logprobs is not None:
            for r, c, chosen, ids, values in lps:
                if r == row and c in self.rank:
                    self.logprobs[self.rank[c]] = TokenLogprob(chosen, tuple(zip(ids, values)), event.step)
        if job.want_steps:
            _safe_emit(job, StepEvent(event.step, event.canvas[row, self.columns].tolist(), committed))
        return True

    def done(self, ids: list[int], forwards: int, batch_size: int) -> DoneEvent:
        region = [ids[p] for p in self.job.masked]
        return DoneEvent(ids, region, [s for s in self.order if s], forwards, batch_size, self.logprobs)


def _logprob_lists(event) -> list[tuple]:
    """A step's ``CommitLogprobs`` as python lists: one (row, column, log p, top ids, top log-probs) per commit."""
    lp = event.logprobs
    return list(zip(lp.rows.tolist(), lp.cols.tolist(), lp.chosen.tolist(), lp.top_ids.tolist(), lp.top.tolist()))


def _safe_emit(job: Job, event: Event) -> None:
    try:
        job.emit(event)
    except RuntimeError:  # the event loop is gone (server shutting down): nobody is listening
        job.cancelled.set()
