"""The two Ray stages: media decoding (CPU tasks) and the engine (one actor per GPU, or one
on CPU). Both take and return Arrow batches; the engine stage emits finished output rows.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, UTC

import numpy as np
import pyarrow as pa

from annotator import cues
from annotator.engine import EngineOptions, Generation, Request, create_engine
from annotator.media import MediaError, MediaInfo, decode
from annotator.models import THOUGHT_SLOT, ModelSpec
from annotator.plan import PlanSettings, render_prompt
from annotator.schema import SCHEMA_VERSION, answer_model, description_model, parse_description
from annotator.store import RETRYABLE, ROW_SCHEMA, SAMPLE_FIELDS, STATUS_FAILED, STATUS_OK
from prompts import PromptError

GENERATION_MODES = {"one-pass": "one-pass, reasoning field first",
                    "two-phase": "two-phase, free chain of thought then JSON"}


@functools.lru_cache(maxsize=2)
def load_tokenizer(path: str):
    """The model's tokenizer, loaded once per process (driver or Ray worker)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def prepare_batch(batch: pa.Table, *, settings: PlanSettings) -> pa.Table:
    """Ray CPU stage: decode each planned clip, measure its cues, render its final prompt.

    Both streams are decoded whatever the model takes (a text-only model needs the cues most);
    only what the model accepts is passed on to the engine. A clip that fails becomes a media
    or prompt error, not an exception.
    """
    spec = settings.spec
    tokenizer = load_tokenizer(spec.path)
    out: dict[str, list] = {k: [] for k in (
        "frames", "frames_shape", "fps", "audio", "cues", "prompt", "answer_prompt",
        "prompt_sha256", "error_kind", "error")}
    for row in batch.to_pylist():
        kind, error, clip, measured = row["error_kind"], row["error"], None, None
        prompt = answer_prompt = ""
        if kind is None:
            try:
                probed = MediaInfo(row["has_video"], row["has_audio"], row["duration_s"] or 0.0,
                                   None, None, None)  # the plan's probe: no third open
                clip = decode(row["path"], row["audio_path"], num_frames=settings.num_frames,
                              max_duration_s=settings.max_duration_s, max_side=settings.max_side,
                              info=probed)
                measured = cues.measure(clip.frames, clip.audio)
                listed = cues.for_template(measured)
                prompt, answer_prompt = render_prompt(settings, tokenizer,
                                                      row["context_json"], listed)
            except MediaError as err:
                kind, error = "media", str(err)
            except PromptError as err:
                kind, error = "prompt", str(err)
        send_frames = clip is not None and clip.frames is not None and "video" in spec.modalities
        send_wave = clip is not None and clip.audio is not None and "audio" in spec.modalities
        out["frames"].append(clip.frames.tobytes() if send_frames else None)
        out["frames_shape"].append(list(clip.frames.shape) if send_frames else None)
        out["fps"].append(clip.fps if send_frames else None)
        out["audio"].append(clip.audio.tobytes() if send_wave else None)
        out["cues"].append(measured)
        out["prompt"].append(prompt or row["prompt"])
        out["answer_prompt"].append(answer_prompt)
        out["prompt_sha256"].append(hashlib.sha256(prompt.encode()).hexdigest() if prompt
                                    else row["prompt_sha256"])
        out["error_kind"].append(kind)
        out["error"].append(error)
    types = {"frames": pa.binary(), "frames_shape": pa.list_(pa.int32()), "fps": pa.float64(),
             "audio": pa.binary(), "cues": cues.arrow_type(), "prompt": pa.string(),
             "answer_prompt": pa.string(), "prompt_sha256": pa.string(),
             "error_kind": pa.string(), "error": pa.string()}
    table = batch.drop_columns([c for c in out if c in batch.column_names])
    for name, values in out.items():
        table = table.append_column(name, pa.array(values, types[name]))
    return table


@dataclass(frozen=True)
class RowContext:
    """Per-run values stamped on every row."""

    run_id: str
    engine: str
    template: str
    template_sha256: str
    sampling_json: str
    labels: list[str] | None
    retries: int
    schema_kind: str = "full"
    generation: str = "one-pass"


def _request(row: dict) -> Request:
    frames = None
    if row["frames"] is not None:
        frames = np.frombuffer(row["frames"], np.uint8).reshape(row["frames_shape"])
    audio = np.frombuffer(row["audio"], np.float32) if row["audio"] is not None else None
    return Request(row["clip_id"], row["prompt"], frames, row["fps"], audio)


@dataclass
class Attempt:
    """What the engine made of one clip: the JSON answer, and in two-phase generation the
    free chain of thought that came before it."""

    answer: Generation
    thought: Generation | None = None

    @property
    def text(self) -> str:
        return self.answer.text

    @property
    def output_tokens(self) -> int:
        return len(self.answer.token_ids) + (len(self.thought.token_ids) if self.thought else 0)


def _judge(attempt: Attempt, model) -> tuple[str | None, str | None, dict | None]:
    """(error_kind, error, description) for one attempt; `model` validates the JSON answer
    (without `reasoning` in two-phase generation, where the thought is the reasoning)."""
    for gen in (attempt.thought, attempt.answer):
        if gen is not None and gen.error:
            return "engine", gen.error, None
    gen = attempt.answer
    if gen.finish_reason == "length":
        return "truncated", f"hit the output budget ({len(gen.token_ids)} tokens)", None
    parsed, reason = parse_description(model, gen.text)
    if parsed is None:
        return "invalid_output", reason, None
    if attempt.thought is not None:
        thought = attempt.thought.text.strip()
        if len(thought) < 8:
            return "invalid_output", "reasoning: the chain of thought was empty", None
        parsed = {"reasoning": thought, **parsed}
    return None, None, parsed


class EngineWorker:
    """Ray actor: owns one engine for its lifetime and turns planned clips into rows."""

    def __init__(self, kind: str, spec: ModelSpec, options: EngineOptions, ctx: RowContext,
                 torch_threads: int | None = None):
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.engine = create_engine(kind, spec, options)
        self.spec, self.ctx = spec, ctx
        self.sampling = options.sampling
        self.model = description_model(ctx.labels, ctx.schema_kind)
        if self.sampling.generation == "two-phase":  # options.schema is the answer's too
            self.model = answer_model(self.model)

    def _attempt(self, rows: list[dict]) -> list[Attempt]:
        requests = [_request(r) for r in rows]
        if self.sampling.generation != "two-phase":
            return [Attempt(g) for g in self.engine.generate(requests)]
        for request in requests:
            request.guided, request.max_tokens = False, self.sampling.think_tokens
        thoughts = self.engine.generate(requests)
        for request, row, thought in zip(requests, rows, thoughts):
            # the thought goes back in as the model's own turn, so the answer reads it
            request.prompt = row["answer_prompt"].replace(THOUGHT_SLOT, thought.text.strip())
            request.guided, request.max_tokens = True, None
        return [Attempt(a, t) for a, t in zip(self.engine.generate(requests), thoughts)]

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["error_kind"] is None]
        results: dict[int, tuple] = {}
        attempts = {i: 0 for i in todo}
        while todo:
            started = time.perf_counter()
            made = self._attempt([rows[i] for i in todo])
            latency = (time.perf_counter() - started) / len(todo)
            retry = []
            for i, attempt in zip(todo, made):
                attempts[i] += 1
                judged = _judge(attempt, self.model)
                results[i] = (attempt, judged, latency)
                if judged[0] in RETRYABLE and attempts[i] <= self.ctx.retries:
                    retry.append(i)
            todo = retry
        if self.sampling.samples > 1:
            self._sample([i for i, (_, judged, _) in results.items() if judged[0] is None],
                         rows)
        out = [build_row(r, *results.get(i, (None, None, 0.0)), attempts.get(i, 0),
                         self.spec, self.ctx) for i, r in enumerate(rows)]
        return pa.Table.from_pylist(out, schema=ROW_SCHEMA)

    def _sample(self, ok: list[int], rows: list[dict]) -> None:
        """The extra samples of each ok clip, in one batch; an invalid one is kept as null."""
        extra = self.sampling.samples - 1
        made = self._attempt([rows[i] for i in ok for _ in range(extra)])
        for n, i in enumerate(ok):
            kept = []
            for attempt in made[n * extra:(n + 1) * extra]:
                _, _, parsed = _judge(attempt, self.model)
                kept.append({k: parsed.get(k) for k in SAMPLE_FIELDS} if parsed else None)
            rows[i]["samples"] = kept


def build_row(row: dict, attempt: Attempt | None, judged, latency: float, attempts: int,
              spec: ModelSpec, ctx: RowContext) -> dict:
    """One output row (ROW_SCHEMA) from a planned clip and what the engine made of it."""
    kind, error, parsed = judged if judged else (row["error_kind"], row["error"], None)
    description = dict(parsed) if parsed else None
    reasoning = description.pop("reasoning") if description else None
    return {
        "clip_id": row["clip_id"], "status": STATUS_OK if kind is None else STATUS_FAILED,
        "error_kind": kind, "error": error, "description": description,
        "reasoning": reasoning, "raw_output": attempt.text if attempt else None,
        "samples": row.get("samples"),
        "label": row["label"], "speaker": row["speaker"], "split": row["split"],
        "dataset": row["dataset"], "path": row["path"], "has_video": row["has_video"],
        "has_audio": row["has_audio"], "media_note": row["media_note"],
        "num_frames": row["frames_shape"][0] if row.get("frames_shape") else 0,
        "fps": row.get("fps"), "duration_s": row["duration_s"],
        "media_sha256": row["media_sha256"], "cues": row.get("cues"), "model": spec.name,
        "model_revision": spec.revision, "engine": ctx.engine,
        "template": ctx.template, "template_sha256": ctx.template_sha256,
        "prompt_sha256": row["prompt_sha256"], "schema_version": SCHEMA_VERSION,
        "generation_mode": GENERATION_MODES[ctx.generation], "sampling": ctx.sampling_json,
        "cache_key": row["cache_key"],
        "num_input_tokens": len(attempt.answer.prompt_token_ids) if attempt else 0,
        "num_output_tokens": attempt.output_tokens if attempt else 0,
        "finish_reason": attempt.answer.finish_reason if attempt else None,
        "latency_s": latency, "attempts": max(attempts, 1),
        "run_id": ctx.run_id, "created_at": datetime.now(UTC),
    }


def failed_rows(plan: pa.Table, ctx: RowContext, spec: ModelSpec) -> pa.Table:
    """Rows for clips that failed before reaching an engine (media or prompt errors)."""
    rows = [build_row({**r, "frames_shape": None, "fps": None}, None, None, 0.0, 1, spec, ctx)
            for r in plan.to_pylist()]
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
