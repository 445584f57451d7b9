"""Per-clip plan: probe the streams, hash the media, render the prompt, derive the cache key.

Cheap (no frame decoding), so it runs for every selected clip before any engine starts: the
run knows what is cached, and the dry run can say so. A clip whose file is missing or cannot
be opened gets a plan with its `error`, and becomes a failed row without reaching an engine.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import pyarrow as pa

from annotator.cues import CUES_VERSION
from annotator.media import MediaError, media_sha256, probe
from annotator.models import ModelSpec, build_prompt
from prompts import PromptError, Template, render


@dataclass(frozen=True)
class PlanSettings:
    """Everything besides the clip that shapes the prompt and the engine's view of it."""

    spec: ModelSpec
    template: Template
    labels: list[str] | None
    sampling_json: str
    schema_sha256: str
    num_frames: int
    max_duration_s: float
    max_side: int
    min_pixels: int
    max_pixels: int
    engine_key: str = ""
    """Engine and dtype: the same prompt can decode differently on another engine."""
    generation: str = "one-pass"
    """'one-pass' or 'two-phase' (see annotator.engine.Sampling.generation)."""

    def decode_key(self) -> dict:
        return {"num_frames": self.num_frames, "max_duration_s": self.max_duration_s,
                "max_side": self.max_side, "min_pixels": self.min_pixels,
                "max_pixels": self.max_pixels}


PLAN_SCHEMA = pa.schema([
    ("clip_id", pa.string()), ("path", pa.string()), ("audio_path", pa.string()),
    ("label", pa.string()), ("speaker", pa.string()), ("split", pa.string()),
    ("dataset", pa.string()), ("stratum", pa.string()),
    ("has_video", pa.bool_()), ("has_audio", pa.bool_()), ("duration_s", pa.float64()),
    ("media_note", pa.string()), ("media_sha256", pa.string()),
    ("context_json", pa.string()),
    ("prompt", pa.string()), ("prompt_sha256", pa.string()), ("cache_key", pa.string()),
    ("error_kind", pa.string()), ("error", pa.string()),
])


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(settings: PlanSettings, media_hash: str, prompt_hash: str) -> str:
    """Hash of everything that decides a row: media bytes, rendered prompt, template, model
    and revision, sampling, schema, and how the media are decoded for the model.

    The prompt hashed here is rendered without cues; the final prompt adds the cues, which
    are a function of the media bytes and the cue extractor's version, both in the key."""
    parts = {
        "cues": CUES_VERSION,
        "media": media_hash, "prompt": prompt_hash, "template": settings.template.sha256,
        "model": settings.spec.name, "revision": settings.spec.revision,
        "sampling": settings.sampling_json, "schema": settings.schema_sha256,
        "decode": settings.decode_key(), "engine": settings.engine_key,
    }
    return _sha(json.dumps(parts, sort_keys=True))


def plan_clip(row: dict, settings: PlanSettings, tokenizer) -> dict:
    spec = settings.spec
    out = {k: row.get(k) for k in PLAN_SCHEMA.names}
    out.update(has_video=False, has_audio=False, duration_s=None, media_note="",
               prompt="", prompt_sha256="", error_kind=None, error=None)
    try:
        out["media_sha256"] = media_sha256(row["path"], row.get("audio_path"))
        info = probe(row["path"], row.get("audio_path"))
    except MediaError as err:
        out["media_sha256"] = out.get("media_sha256") or _sha(f"unreadable:{row['path']}")
        out.update(error_kind="media", error=str(err))
        out["cache_key"] = cache_key(settings, out["media_sha256"], "")
        return out
    use_video = info.has_video and "video" in spec.modalities
    use_audio = info.has_audio and "audio" in spec.modalities
    notes = []
    if not info.has_audio:
        notes.append("no audio stream")
    if not info.has_video:
        notes.append("no video stream")
    if spec.modalities and not (use_video or use_audio):
        notes.append("nothing the model can see or hear")
    out.update(has_video=info.has_video, has_audio=info.has_audio, duration_s=info.duration_s,
               media_note="; ".join(notes))
    media = {"has_video": info.has_video, "has_audio": info.has_audio,
             "duration_s": min(info.duration_s, settings.max_duration_s),
             "source_fps": info.source_fps, "width": info.width, "height": info.height,
             "num_frames": settings.num_frames if use_video else 0}
    clip = {k: v for k, v in row.items() if k not in ("path", "audio_path", "stratum")}
    out["context_json"] = json.dumps({"clip": clip, "media": media}, sort_keys=True,
                                      default=str)
    try:
        prompt = render_prompt(settings, tokenizer, out["context_json"], None)[0]
    except PromptError as err:
        out.update(error_kind="prompt", error=str(err))
        prompt = ""
    out.update(prompt=prompt, prompt_sha256=_sha(prompt) if prompt else "")
    out["cache_key"] = cache_key(settings, out["media_sha256"], out["prompt_sha256"])
    return out


def render_prompt(settings: PlanSettings, tokenizer, context_json: str,
                  cues: dict | None) -> tuple[str, str]:
    """(prompt, answer prompt) for a planned clip, with measured cues once they exist.

    One-pass: the answer prompt is "". Two-phase: the prompt is the first turn, which asks for
    the free chain of thought; the answer prompt is that turn, the model's thought (as
    models.THOUGHT_SLOT) and the turn that asks for the JSON."""
    spec = settings.spec
    two_phase = settings.generation == "two-phase"
    context = json.loads(context_json)
    media = context["media"]
    context.update(modalities=list(spec.modalities), labels=settings.labels, cues=cues,
                   examples=[], phase="think" if two_phase else "one-pass")
    user_text = render(settings.template, context)
    use_video = media["has_video"] and "video" in spec.modalities
    use_audio = media["has_audio"] and "audio" in spec.modalities
    prompt = build_prompt(tokenizer, spec, user_text, use_video, use_audio)
    if not two_phase:
        return prompt, ""
    answer = render(settings.template, {**context, "phase": "answer"})
    try:
        return prompt, build_prompt(tokenizer, spec, user_text, use_video, use_audio, answer)
    except ValueError as err:
        raise PromptError(str(err)) from err


def plan_table(rows: pa.Table, settings: PlanSettings, tokenizer, workers: int = 8
               ) -> pa.Table:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(workers) as pool:
        planned = list(pool.map(lambda r: plan_clip(r, settings, tokenizer), rows.to_pylist()))
    return pa.Table.from_pylist(planned, schema=PLAN_SCHEMA)
