"""Per-clip plan: probe the streams, hash the media, render the prompt, derive the cache key.

Cheap (no frame decoding), so it runs for every selected clip before any engine starts: the
run knows what is cached, and the dry run can say so. A clip whose file is missing or cannot
be opened gets a plan with its `error`, and becomes a failed row without reaching an engine.
Small runs plan in the driver's threads; large ones and clusters in Ray tasks on the nodes
(`plan_batch`), which hand back the plan without the prompt text (its length and hash): the
driver holds about a manifest row per clip, and prepare renders the final prompt anyway.
"""

from __future__ import annotations

import hashlib
import json
import os

import pyarrow as pa

from annotator.core.cues import CUES_VERSION
from annotator.core.errors import MediaError, PromptError
from annotator.core.interrupt import check
from annotator.core.media import media_sha256, probe
from annotator.core.rows import MANIFEST, ErrorKind
from annotator.stages import StageSpec
from annotator.stages.context import RunContext
from annotator.stages.prompt import chat_prompt, render_texts, template_clip


PLAN_SCHEMA = pa.schema([
    *MANIFEST, ("stratum", pa.string()),
    ("has_video", pa.bool_()), ("has_audio", pa.bool_()), ("duration_s", pa.float64()),
    ("media_note", pa.string()), ("media_sha256", pa.string()),
    ("context_json", pa.string()),
    ("prompt_chars", pa.int64()), ("prompt_sha256", pa.string()), ("cache_key", pa.string()),
    ("error_kind", pa.string()), ("error", pa.string()),
])


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def cache_key(ctx: RunContext, media_hash: str, prompt_hash: str) -> str:
    """Hash of everything that decides a row: media bytes, rendered prompt, template, model
    and revision, sampling, schema, and how the media are decoded for the model.

    The prompt hashed here is rendered without cues; the final prompt adds the cues, which
    are a function of the media bytes and the cue extractor's version, both in the key."""
    parts = {**_context_parts(ctx), "media": media_hash, "prompt": prompt_hash}
    return _sha(json.dumps(parts, sort_keys=True))


def _context_parts(ctx: RunContext) -> dict:
    """The part of a cache key that is the same for every clip of a run."""
    return {"cues": CUES_VERSION, "template": ctx.template.sha256, "model": ctx.spec.name,
            "revision": ctx.spec.revision, "sampling": ctx.sampling.to_json(),
            "schema": ctx.schema_sha256, "decode": ctx.media.key(), "engine": ctx.engine_key}


def plan_clip(row: dict, ctx: RunContext) -> dict:
    spec = ctx.spec
    out = {k: row.get(k) for k in PLAN_SCHEMA.names}
    out.update(has_video=False, has_audio=False, duration_s=None, media_note="",
               prompt_chars=0, prompt_sha256="", error_kind=None, error=None)
    try:
        out["media_sha256"] = media_sha256(row["path"], row.get("audio_path"))
        info = probe(row["path"], row.get("audio_path"))
    except MediaError as err:
        out["media_sha256"] = out.get("media_sha256") or _sha(f"unreadable:{row['path']}")
        out.update(error_kind=ErrorKind.MEDIA.value, error=str(err))
        out["cache_key"] = cache_key(ctx, out["media_sha256"], "")
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
             "duration_s": min(info.duration_s, ctx.media.max_duration_s),
             "source_fps": info.source_fps, "width": info.width, "height": info.height,
             "num_frames": ctx.media.num_frames if use_video else 0}
    clip = template_clip(row)
    out["context_json"] = json.dumps({"clip": clip, "media": media}, sort_keys=True,
                                      default=str)
    try:
        prompt = chat_prompt(ctx, info.has_video, info.has_audio,
                             render_texts(ctx, out["context_json"], None, turns=1))
    except PromptError as err:
        out.update(error_kind=ErrorKind.PROMPT.value, error=str(err))
        prompt = ""
    out.update(prompt_chars=len(prompt), prompt_sha256=_sha(prompt) if prompt else "")
    out["cache_key"] = cache_key(ctx, out["media_sha256"], out["prompt_sha256"])
    return out



def plan_table(rows: pa.Table, ctx: RunContext, workers: int = 8) -> pa.Table:
    """Plan every selected clip; hashing and probing are I/O, so threads overlap them. A
    signal (in the driver) stops it between two clips, the queued ones cancelled."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(workers)
    planned = []
    try:
        for clip in pool.map(lambda r: plan_clip(r, ctx), rows.to_pylist()):
            planned.append(clip)
            check()
    finally:
        pool.shutdown(cancel_futures=True)
    return pa.Table.from_pylist(planned, schema=PLAN_SCHEMA)


def plan_batch(batch: pa.Table, *, ctx: RunContext) -> pa.Table:
    """A Ray task's share of the plan, made on the node that runs it (its file hashes cached
    on that node; the prompts from the chat frames in `ctx`)."""
    return plan_table(batch, ctx, workers=4)


def context_digest(ctx: RunContext) -> str:
    """Everything besides the clip itself that decides a planned cache key: cue version,
    template, model files, sampling (with the generation mode), schema, decoding, engine."""
    return _sha(json.dumps(_context_parts(ctx), sort_keys=True))


def fingerprint(row: dict, digest: str) -> str | None:
    """What a clip's plan is a function of, read without opening its files: the manifest
    row, the stat of its files (size, mtime, inode, device) and the run's `context_digest`.
    Equal fingerprints plan to equal cache keys; None when a file cannot be stat'ed."""
    parts = [digest, json.dumps({k: v for k, v in row.items() if k != "stratum"},
                                sort_keys=True, default=str)]
    for path in (row["path"], row.get("audio_path")):
        if path:
            try:
                st = os.stat(path)
            except OSError:
                return None
            parts.append(f"{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_dev}")
    return _sha("\0".join(parts))


STAGE = StageSpec(
    fn=plan_batch, name="plan", reads=(*MANIFEST.names, "stratum"),
    writes=tuple(PLAN_SCHEMA.names),
    # probing and hashing wait on storage, rendering holds the GIL: a core per task, and
    # threads inside it overlap the reads
    ray={"batch_size": 256, "num_cpus": 1})
"""Runs before any engine starts (the dry run reports it): in the driver, or in Ray tasks."""
