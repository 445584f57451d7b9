"""The two Ray stages: media decoding (CPU tasks) and the engine (one actor per GPU, or one
on CPU). Both take and return Arrow batches; the engine stage emits finished output rows.
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from annotator import cues
from annotator.engine import EngineOptions, Generation, Request, create_engine
from annotator.media import MediaError, decode
from annotator.models import ModelSpec
from annotator.plan import PlanSettings, render_prompt
from annotator.schema import SCHEMA_VERSION, description_model, parse_description
from prompts import PromptError
from annotator.store import RETRYABLE, ROW_SCHEMA, STATUS_FAILED, STATUS_OK

GENERATION_MODE = "one-pass, reasoning field first"


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
    out: dict[str, list] = {k: [] for k in ("frames", "frames_shape", "fps", "audio", "cues",
                                             "prompt", "prompt_sha256", "error_kind", "error")}
    for row in batch.to_pylist():
        kind, error, clip, measured, prompt = row["error_kind"], row["error"], None, None, ""
        if kind is None:
            try:
                clip = decode(row["path"], row["audio_path"], num_frames=settings.num_frames,
                              max_duration_s=settings.max_duration_s, max_side=settings.max_side)
                measured = cues.measure(clip.frames, clip.audio)
                prompt = render_prompt(settings, tokenizer, row["context_json"],
                                       cues.for_template(measured))
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
        out["prompt_sha256"].append(hashlib.sha256(prompt.encode()).hexdigest() if prompt
                                    else row["prompt_sha256"])
        out["error_kind"].append(kind)
        out["error"].append(error)
    types = {"frames": pa.binary(), "frames_shape": pa.list_(pa.int32()), "fps": pa.float64(),
             "audio": pa.binary(), "cues": cues.arrow_type(), "prompt": pa.string(),
             "prompt_sha256": pa.string(), "error_kind": pa.string(), "error": pa.string()}
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


def _request(row: dict) -> Request:
    frames = None
    if row["frames"] is not None:
        frames = np.frombuffer(row["frames"], np.uint8).reshape(row["frames_shape"])
    audio = np.frombuffer(row["audio"], np.float32) if row["audio"] is not None else None
    return Request(row["clip_id"], row["prompt"], frames, row["fps"], audio)


def _judge(gen: Generation, model) -> tuple[str | None, str | None, dict | None]:
    """(error_kind, error, description) for one generation."""
    if gen.error:
        return "engine", gen.error, None
    if gen.finish_reason == "length":
        return "truncated", f"hit the output budget ({len(gen.token_ids)} tokens)", None
    parsed, reason = parse_description(model, gen.text)
    if parsed is None:
        return "invalid_output", reason, None
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
        self.model = description_model(ctx.labels, ctx.schema_kind)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        todo = [i for i, r in enumerate(rows) if r["error_kind"] is None]
        results: dict[int, tuple] = {}
        attempts = {i: 0 for i in todo}
        while todo:
            started = time.perf_counter()
            gens = self.engine.generate([_request(rows[i]) for i in todo])
            latency = (time.perf_counter() - started) / len(todo)
            retry = []
            for i, gen in zip(todo, gens):
                attempts[i] += 1
                judged = _judge(gen, self.model)
                results[i] = (gen, judged, latency)
                if judged[0] in RETRYABLE and attempts[i] <= self.ctx.retries:
                    retry.append(i)
            todo = retry
        out = [build_row(r, *results.get(i, (None, None, 0.0)), attempts.get(i, 0),
                         self.spec, self.ctx) for i, r in enumerate(rows)]
        return pa.Table.from_pylist(out, schema=ROW_SCHEMA)


def build_row(row: dict, gen: Generation | None, judged, latency: float, attempts: int,
          spec: ModelSpec, ctx: RowContext) -> dict:
    """One output row (ROW_SCHEMA) from a planned clip and what the engine made of it."""
    kind, error, parsed = judged if judged else (row["error_kind"], row["error"], None)
    description = dict(parsed) if parsed else None
    reasoning = description.pop("reasoning") if description else None
    return {
        "clip_id": row["clip_id"], "status": STATUS_OK if kind is None else STATUS_FAILED,
        "error_kind": kind, "error": error, "description": description,
        "reasoning": reasoning, "raw_output": gen.text if gen else None,
        "label": row["label"], "speaker": row["speaker"], "split": row["split"],
        "dataset": row["dataset"], "path": row["path"], "has_video": row["has_video"],
        "has_audio": row["has_audio"], "media_note": row["media_note"],
        "num_frames": row["frames_shape"][0] if row.get("frames_shape") else 0,
        "fps": row.get("fps"), "duration_s": row["duration_s"],
        "media_sha256": row["media_sha256"], "cues": row.get("cues"), "model": spec.name,
        "model_revision": spec.revision, "engine": ctx.engine,
        "template": ctx.template, "template_sha256": ctx.template_sha256,
        "prompt_sha256": row["prompt_sha256"], "schema_version": SCHEMA_VERSION,
        "generation_mode": GENERATION_MODE, "sampling": ctx.sampling_json,
        "cache_key": row["cache_key"],
        "num_input_tokens": len(gen.prompt_token_ids) if gen else 0,
        "num_output_tokens": len(gen.token_ids) if gen else 0,
        "finish_reason": gen.finish_reason if gen else None,
        "latency_s": latency, "attempts": max(attempts, 1),
        "run_id": ctx.run_id, "created_at": datetime.now(timezone.utc),
    }


def failed_rows(plan: pa.Table, ctx: RowContext, spec: ModelSpec) -> pa.Table:
    """Rows for clips that failed before reaching an engine (media or prompt errors)."""
    rows = [build_row({**r, "frames_shape": None, "fps": None}, None, None, 0.0, 1, spec, ctx)
            for r in plan.to_pylist()]
    return pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
