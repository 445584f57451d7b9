"""Generate (Ray actor): the engine turns prepared clips into judged rows.

One actor per GPU (one on CPU) owns an engine for its lifetime. Per batch: every clip's
attempt (in two-phase generation its free thought, then its JSON answer with the thought in
context), the retries of engine-side failures, and the extra samples of clips that came out
valid; each attempt is judged against the run's pydantic schema.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from annotator.chat import THOUGHT_SLOT
from annotator.engines.factory import create_engine
from annotator.engines.contract import EngineOptions, Request
from annotator.schema import answer_model, description_model, parse_description
from annotator.settings import ErrorKind
from annotator.stages import StageSpec
from annotator.stages.context import RunContext
from annotator.stages.rows import Attempt, Judged, build_row
from annotator.store import ROW_SCHEMA, SAMPLE_FIELDS

STAGE = StageSpec(
    name="generate",
    reads=("clip_id", "frames", "frames_shape", "fps", "audio", "prompt", "answer_prompt",
           "error_kind", "error", "cues", "prompt_sha256", "cache_key", "media_sha256",
           "label", "speaker", "split", "dataset", "path", "audio_path", "has_video", "has_audio",
           "media_note", "duration_s"),
    writes=tuple(ROW_SCHEMA.names))
"""One actor per engine; the driver sets its resources and batch size from EngineSettings."""

MAX_BUDGET_GROWTH = 4
"""A truncated answer is retried with twice its budget, up to this multiple of --max-tokens."""


def _request(row: dict) -> Request:
    frames = None
    if row["frames"] is not None:
        frames = np.frombuffer(row["frames"], np.uint8).reshape(row["frames_shape"])
    audio = np.frombuffer(row["audio"], np.float32) if row["audio"] is not None else None
    return Request(row["clip_id"], row["prompt"], frames, row["fps"], audio)


def judge(attempt: Attempt, model) -> Judged:
    """(error_kind, error, description) for one attempt; `model` validates the JSON answer
    (without `reasoning` in two-phase generation, where the thought is the reasoning)."""
    for gen in (attempt.thought, attempt.answer):
        if gen is not None and gen.error:
            return ErrorKind.ENGINE, gen.error, None
    gen = attempt.answer
    if gen.finish_reason == "length":
        return ErrorKind.TRUNCATED, f"hit the output budget ({len(gen.token_ids)} tokens)", None
    parsed, reason = parse_description(model, gen.text)
    if parsed is None:
        return ErrorKind.INVALID_OUTPUT, reason, None
    if attempt.thought is not None:
        thought = attempt.thought.text.strip()
        if len(thought) < 8:
            return ErrorKind.INVALID_OUTPUT, "reasoning: the chain of thought was empty", None
        parsed = {"reasoning": thought, **parsed}
    return None, None, parsed


class EngineWorker:
    """Ray actor: owns one engine for its lifetime and turns prepared clips into rows."""

    def __init__(self, ctx: RunContext, options: EngineOptions, torch_threads: int | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.engine = create_engine(ctx.engine, ctx.spec, options)
        self.ctx = ctx
        self.model = description_model(ctx.labels, ctx.template.schema)
        if ctx.two_phase:  # options.schema is the answer's too
            self.model = answer_model(self.model)

    def _attempt(self, rows: list[dict], budgets: list[int] | None = None) -> list[Attempt]:
        """One attempt per row; `budgets`: the answer's max_tokens per row (default: the
        run's)."""
        requests = [_request(r) for r in rows]
        budgets = budgets or [self.ctx.sampling.max_tokens] * len(rows)
        if not self.ctx.two_phase:
            for request, budget in zip(requests, budgets):
                request.max_tokens = budget
            return [Attempt(g) for g in self.engine.generate(requests)]
        for request in requests:
            request.guided, request.max_tokens = False, self.ctx.sampling.think_tokens
        thoughts = self.engine.generate(requests)
        for request, row, thought, budget in zip(requests, rows, thoughts, budgets):
            # the thought goes back in as the model's own turn, so the answer reads it
            request.prompt = row["answer_prompt"].replace(THOUGHT_SLOT, thought.text.strip())
            request.guided, request.max_tokens = True, budget
        return [Attempt(a, t) for a, t in zip(self.engine.generate(requests), thoughts)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["error_kind"] is None]
        results: dict[int, tuple] = {}
        attempts = {i: 0 for i in todo}
        budget = dict.fromkeys(todo, self.ctx.sampling.max_tokens)
        while todo:
            started = time.perf_counter()
            made = self._attempt([rows[i] for i in todo], [budget[i] for i in todo])
            latency = (time.perf_counter() - started) / len(todo)
            retry = []
            for i, attempt in zip(todo, made):
                attempts[i] += 1
                judged = judge(attempt, self.model)
                results[i] = (attempt, judged, latency)
                if judged[0] is not None and judged[0].retryable \
                        and attempts[i] <= self.ctx.retries:
                    retry.append(i)
                    if judged[0] is ErrorKind.TRUNCATED:  # the same budget would cut it again
                        budget[i] = min(2 * budget[i],
                                        MAX_BUDGET_GROWTH * self.ctx.sampling.max_tokens)
            todo = retry
        if self.ctx.sampling.samples > 1:
            self._sample([i for i, (_, judged, _) in results.items() if judged[0] is None],
                         rows)
        out = [build_row(r, *results.get(i, (None, None, 0.0)), attempts.get(i, 0), self.ctx)
               for i, r in enumerate(rows)]
        return pa.Table.from_pylist(out, schema=ROW_SCHEMA)

    def _sample(self, ok: list[int], rows: list[dict]) -> None:
        """The extra samples of each ok clip, in one batch; an invalid one is kept as null."""
        extra = self.ctx.sampling.samples - 1
        made = self._attempt([rows[i] for i in ok for _ in range(extra)])
        for n, i in enumerate(ok):
            kept = []
            for attempt in made[n * extra:(n + 1) * extra]:
                _, _, parsed = judge(attempt, self.model)
                kept.append({k: parsed.get(k) for k in SAMPLE_FIELDS} if parsed else None)
            rows[i]["samples"] = kept
