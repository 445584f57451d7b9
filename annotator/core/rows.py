"""The columns of a manifest, of a plan and of an output row, each declared once here.

`MANIFEST` is what a clip list may say about a clip (other columns are carried along);
`ROW_SCHEMA` is one row of `OUT/descriptions/*.parquet`. Every writer of rows (the engine
stage, the driver's early failures, the synthetic runs of tests and benchmarks) builds them
through `make_row`, which refuses a row with a column too many or too few, so a column added
here and forgotten in a writer fails at once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, get_args, get_origin

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel

from annotator.core import cues
from annotator.core.schema import AffectiveDescription

MANIFEST = pa.schema([(name, pa.string()) for name in (
    "clip_id", "path", "audio_path", "label", "speaker", "split", "dataset")])
"""The manifest columns vaemo understands (all optional but `path`); each is kept in the
plan and in the row."""
KNOWN_COLUMNS = tuple(MANIFEST.names)


class RowStatus(StrEnum):
    OK = "ok"
    FAILED = "failed"


class ErrorKind(StrEnum):
    """Why a row failed (the `error_kind` column)."""

    MEDIA = "media"
    PROMPT = "prompt"
    ENGINE = "engine"
    INVALID_OUTPUT = "invalid_output"
    TRUNCATED = "truncated"

    @property
    def retryable(self) -> bool:
        """Engine-side failures are worth another attempt; bad media or templates are not."""
        return self in (ErrorKind.ENGINE, ErrorKind.INVALID_OUTPUT, ErrorKind.TRUNCATED)


SAMPLE_FIELDS = ("primary_emotion", "valence", "arousal", "confidence", "summary")
"""What `run --samples N` keeps of each extra description (the `samples` column)."""


def _arrow(annotation) -> pa.DataType:
    """Arrow type of a pydantic field annotation (str, float, int, Literal, list, model)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _arrow(args[0])
    if origin is list:
        return pa.list_(_arrow(args[0]))
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return pa.struct([(n, _arrow(f.annotation)) for n, f in annotation.model_fields.items()])
    return {float: pa.float64(), int: pa.int64(), bool: pa.bool_()}.get(annotation, pa.string())


def description_type() -> pa.DataType:
    """Arrow struct of the full schema's fields (reasoning has its own column); a coarse row
    fills the fields it has and leaves the rest null."""
    fields = AffectiveDescription.model_fields
    return pa.struct([(n, _arrow(f.annotation)) for n, f in fields.items() if n != "reasoning"])


SENT_TYPE = pa.struct([
    ("frames", pa.int32()), ("audio_s", pa.float64()), ("request_bytes", pa.int64()),
    ("enforced", pa.string()), ("http_tries", pa.int32())])
"""`sent`: what a served model was sent for the row's answer (null for in-process engines):
frames, seconds of audio, the request body's bytes, how the JSON was enforced
(json_schema or validated here), and the HTTP tries it took."""

TURNS_TYPE = pa.list_(pa.struct([
    ("phase", pa.string()), ("text", pa.string()), ("output_tokens", pa.int32()),
    ("video_tokens", pa.int32()), ("audio_tokens", pa.int32())]))
"""`turns`: each engine turn of the row's answer, in order: its phase (one-pass; think or
a template's phases, then answer, then refine1, refine2, ...), the free text it wrote (null
for a JSON turn: `raw_output` is the one kept), its output tokens and the video and audio
placeholder tokens its prompt added to the turns before (a phase that shows only the frames
adds no audio tokens)."""

REFINEMENTS_TYPE = pa.list_(pa.struct([
    ("round", pa.int32()), ("fired", pa.list_(pa.string())), ("told", pa.string()),
    ("valid", pa.bool_()), ("changed", pa.list_(pa.string())), ("error", pa.string())]))
"""`refinements` (run --refine N): each round the gate sent the answer back: the rules that
fired, what the model was told, whether its corrected JSON was valid (an invalid one is
dropped and the answer before it kept), the description fields it changed; null when no
rule fired (or without --refine)."""

ROW_SCHEMA = pa.schema([
    MANIFEST.field("clip_id"),
    ("status", pa.string()),
    ("error_kind", pa.string()),
    ("error", pa.string()),
    ("description", description_type()),
    ("reasoning", pa.string()),
    ("raw_output", pa.string()),
    ("samples", pa.list_(pa.struct([description_type().field(n) for n in SAMPLE_FIELDS]))),
    MANIFEST.field("label"),
    ("label_hint", pa.string()),  # the label its prompt showed (--label-hint), else null
    MANIFEST.field("speaker"),
    MANIFEST.field("split"),
    MANIFEST.field("dataset"),
    MANIFEST.field("path"),
    MANIFEST.field("audio_path"),
    ("has_video", pa.bool_()),
    ("has_audio", pa.bool_()),
    ("media_note", pa.string()),
    ("num_frames", pa.int32()),
    ("fps", pa.float64()),
    ("duration_s", pa.float64()),
    ("media_sha256", pa.string()),
    ("cues", cues.arrow_type()),
    ("model", pa.string()),
    ("model_revision", pa.string()),
    ("engine", pa.string()),
    ("template", pa.string()),
    ("template_sha256", pa.string()),
    ("prompt_sha256", pa.string()),
    ("schema_version", pa.string()),
    ("generation_mode", pa.string()),
    ("sampling", pa.string()),
    ("cache_key", pa.string()),
    ("num_input_tokens", pa.int32()),
    ("num_output_tokens", pa.int32()),
    # the video and audio placeholder tokens in what the engine was given: 0 for a clip that
    # has the stream means it never reached the model; null where nothing can count them
    ("video_tokens", pa.int32()),
    ("audio_tokens", pa.int32()),
    ("turns", TURNS_TYPE),
    ("refinements", REFINEMENTS_TYPE),
    ("finish_reason", pa.string()),
    ("latency_s", pa.float64()),
    ("attempts", pa.int32()),
    ("sent", SENT_TYPE),
    ("run_id", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


def streams_not_received(rows: pa.Table) -> dict[str, int]:
    """{stream: rows whose clip has it but whose prompt held none of its tokens}."""
    return {m: pc.sum(pc.and_(rows[f"has_{m}"], pc.equal(rows[f"{m}_tokens"], 0))).as_py()
            or 0 for m in ("video", "audio")}


def make_row(**values) -> dict:
    """One output row: exactly ROW_SCHEMA's columns, or a ValueError naming the difference."""
    missing = [n for n in ROW_SCHEMA.names if n not in values]
    extra = [n for n in values if n not in ROW_SCHEMA.names]
    if missing or extra:
        raise ValueError(f"a row must have exactly ROW_SCHEMA's columns (annotator/core/rows.py)"
                         f"; missing {missing}, unknown {extra}")
    return {name: values[name] for name in ROW_SCHEMA.names}
