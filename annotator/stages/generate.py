"""Generate (Ray actor): the engine turns prepared clips into judged rows, streaming.

One actor per engine (per GPU, or per tensor-parallel group; one on CPU) owns it for its
lifetime, and a pump thread keeps it stepping. Ray hands the actor several batches at once
(--batches-in-flight), and each clip moves on the moment its previous request ends: its free
free turns (a thought in two-phase, or a template's chain of phases), each with the earlier
ones in context, then its JSON answer; a retry when an
attempt fails (a truncated one with twice the budget); its extra samples once it is valid.
No clip waits for another: a batch returns (to be committed) when its last clip is done,
while the engine goes on with the other batches' clips. Each attempt is judged against the
run's pydantic schema.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from annotator.chat import shown_until, turn_shapes, with_replies
from annotator.engines.factory import create_engine
from annotator.engines.contract import Generation, Request
from annotator.core.files import write_text
from annotator.core.schema import enforced_model
from annotator.stages import StageSpec
from annotator.stages.context import RunContext
from annotator.stages.gate import Gate, changed_fields
from annotator.stages.prompt import chat_prompt
from annotator.stages.prepare import ray_node
from annotator.stages.rows import Attempt, Judged, build_row, judge
from annotator.core.rows import KNOWN_COLUMNS, ROW_SCHEMA, SAMPLE_FIELDS, ErrorKind
from prompts.refine import refine_text


MAX_BUDGET_GROWTH = 4
"""A truncated answer is retried with twice its budget, up to this multiple of --max-tokens."""
REFINING = -1
"""Marks a request in flight as a refinement round (where an extra sample has its index)."""
GATE_EVERY_S = 0.25
"""While the engine is busy, how often the gate queries the answers that came since: its
DuckDB query takes ~20 ms whatever its rows, so once per engine step was up to 2x on an
engine that steps every 20 ms with a clip finishing on most steps; now at most 8%, and a
refinement waits at most this long."""


def request_for(row: dict, ctx: RunContext, replies: Sequence[Generation] = (),
                texts: Sequence[str] = ()) -> Request:
    """The engine request of a prepared clip's next turn (the first, or the one after
    `replies`): its prompt with the replies so far in their slots, the media its turns have
    shown so far, and for a free turn its budget, unguided. A turn past the prepared ones
    (a refinement) is made from the user `texts` of every turn so far."""
    turn = len(replies)
    shapes = turn_shapes(ctx.spec, ctx.turn_media, row["has_video"], row["has_audio"])
    video, audio, audio_in_video = shown_until(shapes, turn)
    frames = wave = None
    if video and row["frames"] is not None:
        frames = np.frombuffer(row["frames"], np.uint8).reshape(row["frames_shape"])
    if audio and row["audio"] is not None:
        wave = np.frombuffer(row["audio"], np.float32)
    prepared = [row["prompt"], *(row["later_prompts"] or [])]
    prompt = prepared[turn] if turn < len(prepared) else \
        chat_prompt(ctx, row["has_video"], row["has_audio"], list(texts[:turn + 1]))
    if replies:  # the model's own replies go back in as its turns
        prompt = with_replies(ctx.spec, prompt, [r.text.strip() for r in replies])
    request = Request(row["clip_id"], prompt, frames, row["fps"], wave,
                      audio_in_video=audio_in_video)
    if turn < len(ctx.free_phases):
        request.guided = False
        request.max_tokens = ctx.free_phases[turn].max_tokens or ctx.sampling.think_tokens
    return request


@dataclass
class Batch:
    """One Ray batch in flight: its rows, and the table once every clip is done."""

    rows: list[dict]
    remaining: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    table: pa.Table | None = None
    error: BaseException | None = None


@dataclass
class Clip:
    """One clip's way through its attempts and samples."""

    index: int
    batch: Batch
    budget: int
    attempts: int = 0
    started: float = 0.0
    result: tuple | None = None
    """(Attempt, Judged, seconds its last attempt took) once it is settled."""
    samples: list = field(default_factory=list)
    waiting: int = 0
    """Extra samples still being generated."""
    kept: tuple | None = None
    """(Attempt, Judged) of its last valid answer, while the gate refines it."""
    answers: list = field(default_factory=list)
    """Every JSON turn of its refinement (the first answer, then each round's)."""
    rounds: list = field(default_factory=list)
    """The refinement rounds so far (core.rows.REFINEMENTS_TYPE)."""

    @property
    def row(self) -> dict:
        return self.batch.rows[self.index]


class Scheduler:
    """Keeps every clip's next request in the engine; runs on the pump thread only."""

    def __init__(self, engine, ctx: RunContext, model):
        self.engine, self.ctx, self.model = engine, ctx, model
        self.inflight: dict[str, tuple[Clip, int | None, object]] = {}
        self.batches: dict[int, tuple[Batch, list[Clip]]] = {}
        self.keys = itertools.count()
        self.gate = Gate(ctx.labels) if ctx.sampling.refine else None
        self.to_check: list[Clip] = []
        """Clips whose valid answer waits for the gate (see `check`)."""
        self.checked_at = 0.0

    def add(self, batch: Batch) -> None:
        clips = [Clip(i, batch, self.ctx.sampling.max_tokens)
                 for i, r in enumerate(batch.rows) if r["error_kind"] is None]
        batch.remaining = len(clips)
        self.batches[id(batch)] = (batch, clips)
        for clip in clips:
            self._attempt(clip)
        if not clips:
            self._finish(batch)

    def finished(self, key: str, generation: Generation) -> None:
        found = self.inflight.pop(key, None)
        if found is None:  # a request of a batch that already failed
            return
        clip, sample, replies = found
        if sample == REFINING:
            self._refined(clip, generation)
            return
        if not generation.error and len(replies) < len(self.ctx.free_phases):
            self._submit(clip, sample, (*replies, generation))  # a free turn just ended
            return
        self._answered(clip, sample, Attempt(generation, replies))

    def fail(self, error: BaseException) -> None:
        """The engine broke: every batch in flight fails (the driver retries its clips)."""
        self.inflight.clear()
        for batch, _ in self.batches.values():
            batch.error = error
            batch.done.set()
        self.batches.clear()

    def _attempt(self, clip: Clip) -> None:
        clip.attempts += 1
        clip.started = time.perf_counter()
        self._submit(clip, None)

    def _submit(self, clip: Clip, sample: int | None, replies: tuple[Generation, ...] = ()
                ) -> None:
        """The clip's next request: a free turn, or the JSON answer after them."""
        request = request_for(clip.row, self.ctx, replies)
        if request.guided:
            request.max_tokens = clip.budget if sample is None else self.ctx.sampling.max_tokens
        self._send(clip, sample, replies, request)

    def _send(self, clip: Clip, sample: int | None, replies: tuple, request) -> None:
        """Put `request` in the engine under a fresh key, remembered until it ends."""
        key = f"{clip.row['clip_id']}#{next(self.keys)}"
        self.inflight[key] = (clip, sample, replies)
        self.engine.submit(key, request)

    def _answered(self, clip: Clip, sample: int | None, attempt: Attempt) -> None:
        judged = judge(attempt, self.model, self.ctx.phase_names)
        if sample is not None:  # an extra sample: kept if valid, null if not
            parsed = judged[2]
            clip.samples[sample] = {k: parsed.get(k) for k in SAMPLE_FIELDS} if parsed else None
            clip.waiting -= 1
            if not clip.waiting:
                self._settled(clip)
            return
        kind = judged[0]
        if kind is not None and kind.retryable and clip.attempts <= self.ctx.retries:
            if kind is ErrorKind.TRUNCATED:  # the same budget would cut it again
                clip.budget = min(2 * clip.budget,
                                  MAX_BUDGET_GROWTH * self.ctx.sampling.max_tokens)
            self._attempt(clip)
            return
        if kind is None and self.gate is not None:
            clip.kept, clip.answers = (attempt, judged), [attempt.answer]
            self.to_check.append(clip)
            return
        self._keep(clip, attempt, judged)

    def check(self, engine_busy: bool = False) -> None:
        """The gate on every clip that got a valid answer since its last query: a clip on
        which a rule fires gets a refinement turn (at most --refine of them), the others
        are kept as they are. While the engine is busy, at most every GATE_EVERY_S."""
        if not self.to_check or (engine_busy and
                                 time.perf_counter() - self.checked_at < GATE_EVERY_S):
            return
        self.checked_at = time.perf_counter()
        clips, self.to_check = self.to_check, []
        rows = [build_row(c.row, *c.kept, 0.0, c.attempts, self.ctx) for c in clips]
        for clip, fired in zip(clips, self.gate.check(rows)):
            if not fired:
                self._keep(clip, *clip.kept)
                continue
            told = refine_text(list(fired.values()))
            clip.rounds.append({"round": len(clip.rounds) + 1, "fired": sorted(fired),
                                "told": told, "valid": None, "changed": None, "error": None})
            attempt = clip.kept[0]
            replies = (*attempt.replies, *clip.answers)
            texts = [*clip.row["turn_texts"], *(r["told"] for r in clip.rounds)]
            request = request_for(clip.row, self.ctx, replies, texts)
            request.max_tokens = clip.budget
            self._send(clip, REFINING, replies, request)

    def _refined(self, clip: Clip, generation: Generation) -> None:
        """A refinement's JSON: kept when valid (and checked again while rounds are left),
        dropped for the answer before it when not."""
        before, (_, _, previous) = clip.kept
        clip.answers.append(generation)
        attempt = Attempt(generation, before.replies)
        judged = judge(attempt, self.model, self.ctx.phase_names)
        last = clip.rounds[-1]
        if judged[0] is None:
            last.update(valid=True, changed=changed_fields(previous, judged[2]))
            clip.kept = (attempt, judged)
            if len(clip.rounds) < self.ctx.sampling.refine:
                self.to_check.append(clip)
                return
        else:
            last.update(valid=False, error=judged[1])
        self._keep(clip, *clip.kept)

    def _keep(self, clip: Clip, attempt: Attempt, judged: Judged) -> None:
        """The clip's answer is final: its extra samples next, if any, else it is done."""
        kind = judged[0]
        if clip.rounds:  # the row shows every JSON turn and every round
            attempt = Attempt(attempt.answer, attempt.replies, clip.answers, clip.rounds)
        clip.result = (attempt, judged, time.perf_counter() - clip.started)
        extra = self.ctx.sampling.samples - 1
        if kind is None and extra > 0:
            clip.samples, clip.waiting = [None] * extra, extra
            for n in range(extra):
                self._submit(clip, n)
            return
        self._settled(clip)

    def _settled(self, clip: Clip) -> None:
        clip.batch.remaining -= 1
        if not clip.batch.remaining:
            self._finish(clip.batch)

    def _finish(self, batch: Batch) -> None:
        _, clips = self.batches.pop(id(batch))
        by_index = {c.index: c for c in clips}
        try:
            out = []
            for i, row in enumerate(batch.rows):
                clip = by_index.get(i)
                if clip is not None and clip.samples:
                    row["samples"] = clip.samples
                result = clip.result if clip is not None else (None, None, 0.0)
                out.append(build_row(row, *result, clip.attempts if clip else 0, self.ctx))
            batch.table = pa.Table.from_pylist(out, schema=ROW_SCHEMA)
        except Exception as err:  # noqa: BLE001 - reported through the batch's call
            batch.error = err
        batch.done.set()


class EngineWorker:
    """Ray actor: owns one engine for its lifetime; several batches are in flight in it at
    once (Ray calls it from as many threads), a pump thread alone creates the engine, submits
    to it and steps it (the vLLM engine renders what is submitted on a thread of its own).

    The thread that steps an engine on CPU is the one that created it: vLLM sets up its
    OpenMP threads for the creating thread. Stepped from another thread, a cold run's 30
    SmolLM2 clips (bf16, 2 threads) generated in 47.9 s in the actor; from the creating
    thread in 33.9 s, as fast as a script calling vLLM itself (docs/performance.md)."""

    def __init__(self, ctx: RunContext, torch_threads: int | None = None,
                 stats_dir: str | None = None, api_key: str = ""):
        self.stats = Path(stats_dir) / f"engine-{os.getpid()}.json" if stats_dir else None
        self.ctx = ctx
        self.inbox: queue.Queue[Batch] = queue.Queue()
        self.broken: BaseException | None = None
        ready: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._pump, args=(torch_threads, api_key, ready),
                         name="engine-pump", daemon=True).start()
        failed = ready.get()
        if failed is not None:  # the engine could not start: the actor fails with its error
            raise failed

    def _start(self, torch_threads: int | None, api_key: str) -> None:
        started = time.time()
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        ctx = self.ctx
        self.engine = create_engine(ctx.engine, ctx.spec, ctx.options, api_key)
        self.timing = {"started_at": started, "ready_at": time.time(),
                       "startup_s": time.time() - started, "wait_first_s": 0.0,
                       "busy_s": 0.0, "idle_s": 0.0, "steps": 0, "node": ray_node(),
                       "prepared_on": []}
        model = enforced_model(tuple(ctx.labels) if ctx.labels else None, ctx.template.schema,
                               ctx.two_phase)  # the model ctx.options.schema was made from
        self.scheduler = Scheduler(self.engine, ctx, model)

    def __call__(self, batch: pa.Table) -> pa.Table:
        if self.broken is not None:
            raise RuntimeError(f"the engine failed earlier: {self.broken}")
        job = Batch(batch.to_pylist())
        nodes = {r.get("prepared_on") for r in job.rows} - {None, ""}
        self.timing["prepared_on"] = sorted(set(self.timing["prepared_on"]) | nodes)
        self.inbox.put(job)
        job.done.wait()
        if job.error is not None:
            raise RuntimeError(f"{type(job.error).__name__}: {job.error}") from job.error
        self._write_timing()
        return job.table

    def _write_timing(self) -> None:
        """Where this engine's time went so far (the driver sums the engines' files)."""
        if self.stats is None:
            return
        self.stats.parent.mkdir(parents=True, exist_ok=True)
        write_text(self.stats, json.dumps(self.timing))

    def _pump(self, torch_threads: int | None, api_key: str, ready: queue.SimpleQueue
              ) -> None:
        """Create the engine (`ready` gets None, or the error), then take new batches
        (waiting for one only when the engine is idle), step the engine and hand finished
        requests to the scheduler; forever, or until the engine breaks."""
        try:
            self._start(torch_threads, api_key)
        except BaseException as err:  # noqa: BLE001 - raised in __init__, the actor's thread
            ready.put(err)
            return
        ready.put(None)
        timing, seen_work = self.timing, False
        while self.broken is None:
            try:
                while True:
                    idle, waited = not self.engine.busy(), time.perf_counter()
                    try:
                        batch = self.inbox.get(block=idle)
                    except queue.Empty:
                        break
                    if idle:  # the engine had nothing to do while it waited
                        timing["idle_s" if seen_work else "wait_first_s"] += \
                            time.perf_counter() - waited
                    seen_work = True
                    self.scheduler.add(batch)
                stepped = time.perf_counter()
                for key, generation in self.engine.step():
                    self.scheduler.finished(key, generation)
                self.scheduler.check(self.engine.busy())
                timing["busy_s"] += time.perf_counter() - stepped
                timing["steps"] += 1
            except Exception as err:  # noqa: BLE001 - every waiting batch is told
                self.broken = err
                self.scheduler.fail(err)
        while True:  # batches that arrive after the break fail at once
            job = self.inbox.get()
            job.error = self.broken
            job.done.set()


STAGE = StageSpec(
    fn=EngineWorker, name="generate",
    reads=(*KNOWN_COLUMNS, "frames", "frames_shape", "fps", "audio", "prompt",
           "later_prompts", "turn_texts", "error_kind", "error", "cues", "prompt_sha256",
           "cache_key", "media_sha256", "has_video", "has_audio", "media_note", "duration_s",
           "prepared_on"),
    writes=tuple(ROW_SCHEMA.names))
"""One actor per engine; the driver sets its resources and batch size from EngineSettings."""
