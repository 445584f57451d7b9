"""The run's rows on disk: `OUT/descriptions/*.parquet` (names in annotator/layout.py).

Rows are committed a batch at a time, each batch as its own Parquet file written under a
hidden temporary name and renamed into place, so a kill -9 at any moment leaves only whole
files: every committed row is kept, nothing half-written is ever read. A clip has at most one
row: rows that are about to be recomputed (stale cache key, `--force`, `retry-failed`) are
removed from their files (again by atomic rewrite) *before* the new row is computed, so a
crash in between leaves the clip pending, never duplicated.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Annotated, get_args, get_origin

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import BaseModel

from annotator import cues
from annotator.layout import RunFolder
from annotator.schema import AffectiveDescription

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


ROW_SCHEMA = pa.schema([
    ("clip_id", pa.string()),
    ("status", pa.string()),
    ("error_kind", pa.string()),
    ("error", pa.string()),
    ("description", description_type()),
    ("reasoning", pa.string()),
    ("raw_output", pa.string()),
    ("samples", pa.list_(pa.struct([description_type().field(n) for n in SAMPLE_FIELDS]))),
    ("label", pa.string()),
    ("speaker", pa.string()),
    ("split", pa.string()),
    ("dataset", pa.string()),
    ("path", pa.string()),
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
    ("finish_reason", pa.string()),
    ("latency_s", pa.float64()),
    ("attempts", pa.int32()),
    ("run_id", pa.string()),
    ("created_at", pa.timestamp("us", tz="UTC")),
])


class Store:
    """The rows of one run folder: read, index by clip, commit a batch, drop clips."""

    def __init__(self, out: str | Path):
        self.out = Path(out)
        self.dir = RunFolder(self.out).descriptions

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.parquet")) if self.dir.is_dir() else []

    def read(self, columns: list[str] | None = None) -> pa.Table:
        files = self.files()
        if not files:
            return ROW_SCHEMA.empty_table() if columns is None else \
                pa.schema([ROW_SCHEMA.field(c) for c in columns]).empty_table()
        return pa.concat_tables([_read_file(f, columns or ROW_SCHEMA.names) for f in files])

    def index(self) -> dict[str, dict]:
        """clip_id -> {cache_key, status, error_kind, attempts} for every stored row."""
        table = self.read(["clip_id", "cache_key", "status", "error_kind", "attempts"])
        return {row["clip_id"]: row for row in table.to_pylist()}

    def commit(self, rows: pa.Table, run_id: str, metadata: dict) -> Path:
        """Write one batch atomically; returns the final file."""
        self.dir.mkdir(parents=True, exist_ok=True)
        table = rows.cast(ROW_SCHEMA).replace_schema_metadata(
            {"vaemo": json.dumps(metadata, sort_keys=True)})
        final = self.dir / f"part-{run_id}-{uuid.uuid4().hex[:8]}.parquet"
        atomic_write_parquet(table, final)
        return final

    def drop(self, clip_ids: set[str]) -> int:
        """Remove the rows of these clips from every file (atomic rewrite per file)."""
        if not clip_ids:
            return 0
        dropped = 0
        wanted = pa.array(sorted(clip_ids), pa.string())
        for f in self.files():
            table = pq.read_table(f)
            hit = pc.is_in(table["clip_id"], value_set=wanted)
            n = pc.sum(hit).as_py() or 0
            if not n:
                continue
            dropped += n
            keep = table.filter(pc.invert(hit))
            if len(keep):
                atomic_write_parquet(keep.replace_schema_metadata(table.schema.metadata), f)
            else:
                f.unlink()
        return dropped


def _read_file(path: Path, columns: list[str]) -> pa.Table:
    """One file's `columns`; a column the file predates (e.g. `samples`) is read as nulls."""
    present = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in columns if c in present])
    for name in columns:
        if name not in present:
            field = ROW_SCHEMA.field(name)
            table = table.append_column(field, pa.nulls(len(table), field.type))
    return table.select(columns)


def atomic_write_parquet(table: pa.Table, final: Path) -> None:
    tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:6]}.tmp")
    pq.write_table(table, tmp, compression="zstd")
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def write_json(path: Path, payload: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
