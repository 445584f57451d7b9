"""Prepare (Ray CPU tasks): decode each planned clip, measure its cues, render its final prompt.

Both streams are decoded whatever the model takes (a text-only model needs the cues most);
only what the model accepts is passed on to the engine. A clip that fails becomes a media or
prompt error in its row, never an exception that stops the run.
"""

from __future__ import annotations

import functools
import hashlib
import os
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa

from annotator.core import cues
from annotator.core.errors import MediaError, PromptError
from annotator.core.media import MediaInfo, decode
from annotator.core.rows import ErrorKind
from annotator.stages import StageSpec
from annotator.stages.context import RunContext
from annotator.stages.prompt import chat_prompt, render_texts

OUTPUT_TYPES = {
    "frames": pa.binary(), "frames_shape": pa.list_(pa.int32()), "fps": pa.float64(),
    "audio": pa.binary(), "cues": cues.arrow_type(), "prompt": pa.string(),
    "later_prompts": pa.list_(pa.string()), "turn_texts": pa.list_(pa.string()),
    "prompt_sha256": pa.string(), "error_kind": pa.string(),
    "error": pa.string(), "prepared_on": pa.string(),
}


def prepare_batch(batch: pa.Table, *, ctx: RunContext) -> pa.Table:
    """The planned clips of `batch` with their media, cues and final prompts added; in a
    Ray task, on this worker's idle-priority thread."""
    node = ray_node()
    if node:
        return idle_thread().submit(_prepare, batch, ctx, node).result()
    return _prepare(batch, ctx, node)


@functools.cache
def idle_thread() -> ThreadPoolExecutor:
    """One thread of this process at SCHED_IDLE, the lowest CPU priority: it gets only the
    CPU time no other thread wants, so the engine's thread never waits for a core behind
    decoding (on 2 cores it had waited 3.3 s of a 20 s run; on a GPU node the same thread
    schedules and detokenizes for the GPU). Linux sets a policy per thread and an
    unprivileged thread cannot leave SCHED_IDLE, so the policy is never set on the thread Ray
    runs tasks on: a worker that later hosts an engine actor keeps its normal priority."""
    return ThreadPoolExecutor(1, thread_name_prefix="prepare-idle", initializer=_lowest_priority)


def _lowest_priority() -> None:
    try:
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError):  # not Linux, or refused (a seccomp profile): the
        pass  # clips are prepared at normal priority, as they were before


def _prepare(batch: pa.Table, ctx: RunContext, node: str) -> pa.Table:
    spec, media = ctx.spec, ctx.media
    out: dict[str, list] = {k: [] for k in OUTPUT_TYPES}
    for row in batch.to_pylist():
        kind, error, clip, measured = row["error_kind"], row["error"], None, None
        prompt, later, texts = "", [], []
        if kind is None:
            try:
                probed = MediaInfo(row["has_video"], row["has_audio"], row["duration_s"] or 0.0,
                                   None, None, None)  # the plan's probe: no third open
                clip = decode(row["path"], row["audio_path"], num_frames=media.num_frames,
                              max_duration_s=media.max_duration_s, max_side=media.max_side,
                              info=probed)
                measured = cues.measure(clip.frames, clip.audio)
                listed = cues.for_template(measured)
                texts = render_texts(ctx, row["context_json"], listed)
                prompt, *later = [chat_prompt(ctx, row["has_video"], row["has_audio"],
                                              texts[:n]) for n in range(1, len(texts) + 1)]
            except MediaError as err:
                kind, error = ErrorKind.MEDIA.value, str(err)
            except PromptError as err:
                kind, error = ErrorKind.PROMPT.value, str(err)
            except Exception as err:  # noqa: BLE001 - a decoder or cue library failing on
                # one clip (FFmpeg, librosa, OpenCV) fails that clip, never the run
                stage = "prompt" if clip is not None and measured is not None else "media"
                kind, error = stage, f"{type(err).__name__}: {err}"
        send_frames = clip is not None and clip.frames is not None and "video" in spec.modalities
        send_wave = clip is not None and clip.audio is not None and "audio" in spec.modalities
        out["frames"].append(clip.frames.tobytes() if send_frames else None)
        out["frames_shape"].append(list(clip.frames.shape) if send_frames else None)
        out["fps"].append(clip.fps if send_frames else None)
        out["audio"].append(clip.audio.tobytes() if send_wave else None)
        out["cues"].append(measured)
        out["prompt"].append(prompt)
        out["later_prompts"].append(later)
        out["turn_texts"].append(texts)
        out["prompt_sha256"].append(hashlib.sha256(prompt.encode()).hexdigest() if prompt
                                    else row["prompt_sha256"])
        out["error_kind"].append(kind)
        out["error"].append(error)
        out["prepared_on"].append(node)
    table = batch.drop_columns([c for c in out if c in batch.column_names])
    for name, values in out.items():
        table = table.append_column(name, pa.array(values, OUTPUT_TYPES[name]))
    return table


def ray_node() -> str:
    """The Ray node this task runs on ("" outside Ray): run.json says where clips were
    prepared."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else ""


STAGE = StageSpec(
    fn=prepare_batch, name="prepare",
    reads=("path", "audio_path", "has_video", "has_audio", "duration_s", "context_json",
           "prompt_sha256", "error_kind", "error"),
    writes=tuple(OUTPUT_TYPES),
    # decoding and cues are light: half a CPU, which also keeps Ray from fusing this stage
    # into the engine actor, so clips are prepared by tasks while the engine generates
    ray={"batch_size": 4, "num_cpus": 0.5})
