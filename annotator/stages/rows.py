"""Rows: one output row (core.rows.ROW_SCHEMA) per clip, from its plan and what the engine made.

Used by the engine stage for the clips it ran, and by the driver for clips that failed before
reaching an engine (missing media, a template error).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

import pyarrow as pa

from annotator.core.rows import KNOWN_COLUMNS, ROW_SCHEMA, ErrorKind, RowStatus, make_row
from annotator.core.schema import SCHEMA_VERSION, parse_description
from annotator.engines.contract import Generation
from annotator.models import ModelSpec
from annotator.stages.context import RunContext
from annotator.stages.prompt import hinted_label
from prompts import TWO_PHASE

def generation_label(ctx: RunContext) -> str:
    """The `generation_mode` column's value."""
    if not ctx.two_phase:
        return "one-pass, reasoning field first"
    if ctx.template.phases == TWO_PHASE:
        return "two-phase, free chain of thought then JSON"
    return f"{len(ctx.phase_names)} turns: {', '.join(ctx.phase_names[:-1])}, then JSON"


class Attempt:
    """What the engine made of one clip: the JSON answer kept, in generation in turns the
    replies to the free turns that came before it, and with --refine every JSON turn
    (`answers`: the first answer, then each refinement's) and the rounds that asked for
    them."""

    def __init__(self, answer: Generation, replies: Sequence[Generation] = (),
                 answers: Sequence[Generation] = (), rounds: Sequence[dict] = ()):
        self.answer, self.replies = answer, tuple(replies)
        self.answers, self.rounds = tuple(answers) or (answer,), list(rounds)

    @property
    def text(self) -> str:
        return self.answer.text

    @property
    def generations(self) -> tuple[Generation, ...]:
        """Every engine turn, in order."""
        return (*self.replies, *self.answers)

    @property
    def output_tokens(self) -> int:
        return sum(g.num_output_tokens for g in self.generations)

    def reasoning(self, phases: Sequence[str]) -> str:
        """The free turns' replies as the description's reasoning: a thought as it is, a
        chain's replies each under its phase's name."""
        texts = [r.text.strip() for r in self.replies]
        if len(texts) == 1:
            return texts[0]
        return "\n\n".join(f"{name}: {text}" for name, text in zip(phases, texts))

    def media_tokens(self, spec: ModelSpec) -> list[dict[str, int | None]]:
        """{modality: placeholder tokens that turn's prompt added} of each turn, for each
        stream the model takes; None where they cannot be counted (no token ids: a served
        model)."""
        counted, before = dict(spec.media_token_ids), {}
        turns = []
        for gen in self.generations:
            ids = gen.prompt_token_ids
            now = {m: ids.count(counted[m]) if ids and m in counted else None
                   for m in ("video", "audio")}
            turns.append({m: None if n is None else n - before.get(m, 0)
                          for m, n in now.items()})
            before = {m: n for m, n in now.items() if n is not None}
        return turns

    def turns(self, spec: ModelSpec, phases: Sequence[str]) -> list[dict]:
        """The `turns` column: each turn's phase, free text, output tokens and the media
        tokens it added."""
        names = [*phases, *(f"refine{n}" for n in range(1, len(self.answers)))]
        texts = [r.text for r in self.replies] + [None] * len(self.answers)
        return [{"phase": name, "text": text, "output_tokens": gen.num_output_tokens,
                 "video_tokens": media["video"], "audio_tokens": media["audio"]}
                for name, text, gen, media in zip(names, texts, self.generations,
                                                  self.media_tokens(spec))]


Judged = tuple[ErrorKind | None, str | None, dict | None]
"""(error kind, error, description) of an attempt."""


def judge(attempt: Attempt, model, phases: Sequence[str] = ()) -> Judged:
    """(error_kind, error, description) for one attempt; `model` validates the JSON answer
    (without `reasoning` in generation in turns, where the free turns, named `phases`, are
    the reasoning)."""
    for gen in (*attempt.replies, attempt.answer):
        if gen.error:
            return ErrorKind.ENGINE, gen.error, None
    gen = attempt.answer
    if gen.finish_reason == "length":
        return (ErrorKind.TRUNCATED, f"hit the output budget ({gen.num_output_tokens} tokens)",
                None)
    parsed, reason = parse_description(model, gen.text)
    if parsed is None:
        return ErrorKind.INVALID_OUTPUT, reason, None
    if attempt.replies:
        for name, reply in zip(phases, attempt.replies):
            if len(reply.text.strip()) < 8:
                return (ErrorKind.INVALID_OUTPUT,
                        f"reasoning: the reply to phase {name!r} was empty", None)
        parsed = {"reasoning": attempt.reasoning(phases), **parsed}
    return None, None, parsed


def build_row(row: dict, attempt: Attempt | None, judged: Judged | None, latency: float,
              attempts: int, ctx: RunContext) -> dict:
    """One output row from a planned (and prepared) clip and what the engine made of it."""
    kind, error, parsed = judged if judged else (row["error_kind"], row["error"], None)
    media = {"video": None, "audio": None}
    if attempt:  # every stream the model was given, whichever turn showed it
        for turn in attempt.media_tokens(ctx.spec):
            media = {m: n if media[m] is None else media[m] + (n or 0)
                     for m, n in turn.items()}
    description = dict(parsed) if parsed else None
    reasoning = description.pop("reasoning") if description else None
    return make_row(
        **{name: row.get(name) for name in KNOWN_COLUMNS},  # the manifest's, as planned
        status=(RowStatus.OK if kind is None else RowStatus.FAILED).value,
        error_kind=ErrorKind(kind).value if kind else None, error=error,
        description=description, reasoning=reasoning,
        raw_output=attempt.text if attempt else None, samples=row.get("samples"),
        label_hint=hinted_label(ctx, row),
        has_video=row["has_video"], has_audio=row["has_audio"], media_note=row["media_note"],
        num_frames=row["frames_shape"][0] if row.get("frames_shape") else 0,
        fps=row.get("fps"), duration_s=row["duration_s"],
        media_sha256=row["media_sha256"], cues=row.get("cues"), model=ctx.spec.name,
        model_revision=ctx.spec.revision, engine=ctx.engine,
        template=ctx.template.tag, template_sha256=ctx.template.sha256,
        prompt_sha256=row["prompt_sha256"], schema_version=SCHEMA_VERSION,
        generation_mode=generation_label(ctx), sampling=ctx.sampling.to_json(),
        cache_key=row["cache_key"],
        num_input_tokens=attempt.answer.num_prompt_tokens if attempt else 0,
        num_output_tokens=attempt.output_tokens if attempt else 0,
        video_tokens=media["video"], audio_tokens=media["audio"],
        turns=attempt.turns(ctx.spec, ctx.phase_names) if attempt else None,
        refinements=(attempt.rounds or None) if attempt else None,
        finish_reason=attempt.answer.finish_reason if attempt else None,
        latency_s=latency, attempts=max(attempts, 1),
        sent=attempt.answer.sent if attempt else None,
        run_id=ctx.run_id, created_at=datetime.now(UTC))


def failed_rows(plan: pa.Table, ctx: RunContext, kind: ErrorKind | None = None,
                error: str | None = None) -> pa.Table:
    """Rows for clips that failed without an engine answer: their plan's media or prompt
    error, or `kind` and `error` for all of them (e.g. an engine that kept dying)."""
    rows = []
    for r in plan.to_pylist():
        if kind is not None:
            r.update(error_kind=kind.value, error=error)
        rows.append(build_row({**r, "frames_shape": None, "fps": None}, None, None, 0.0, 1, ctx))
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
