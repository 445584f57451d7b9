"""Read and validate a clip manifest (CSV, JSONL, Parquet, or a `datasets` folder).

The result is a pyarrow Table with one row per clip: `clip_id`, absolute `path` (and
`audio_path`), the optional metadata columns, and every extra column the user had.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from annotator.core.errors import ManifestError
from annotator.core.rows import KNOWN_COLUMNS




class ClipRecord(BaseModel):
    """One manifest row as vaemo understands it; extra columns are carried along untouched."""

    model_config = ConfigDict(extra="allow", coerce_numbers_to_str=True)

    path: str
    """Video file; relative paths resolve against the manifest's folder."""
    clip_id: str | None = None
    """Stable id; defaults to `path` without its extension."""
    audio_path: str | None = None
    """Separate audio file, when the audio is not inside the video container."""
    label: str | None = None
    """Dataset emotion label, if any."""
    speaker: str | None = None
    """Speaker id, used to stratify subsets."""
    split: str | None = None
    """Dataset split (train/val/test)."""
    dataset: str | None = None
    """Source dataset name."""

    @field_validator("clip_id", "audio_path", "label", "speaker", "split", "dataset",
                     mode="before")
    @classmethod
    def _blank_is_missing(cls, value):
        """An empty cell, or a NaN from a numeric column, means "not given"."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, str) and not value.strip():
            return None
        return value

    @field_validator("path", mode="before")
    @classmethod
    def _path_given(cls, value):
        if value is None or (isinstance(value, float) and math.isnan(value)) \
                or (isinstance(value, str) and not value.strip()):
            raise ValueError("empty path: every row needs the clip's file")
        return value


def _read_table(path: Path) -> pa.Table:
    suffix = path.suffix.lower()
    if path.is_dir():
        import datasets

        return datasets.load_from_disk(str(path)).data.table
    if suffix == ".csv":
        from pyarrow import csv

        # every column as text: ids like "001" must not become integers
        names = csv.open_csv(path).schema.names
        return csv.read_csv(path, convert_options=csv.ConvertOptions(
            column_types={n: pa.string() for n in names}, strings_can_be_null=True))
    if suffix in (".jsonl", ".json", ".ndjson"):
        return _read_jsonl(path)
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path)
    raise ManifestError(
        f"{path}: unknown manifest format {suffix!r}; use .csv, .jsonl, .parquet or a "
        "`datasets` folder (Dataset.save_to_disk)")


def _read_jsonl(path: Path) -> pa.Table:
    """One JSON object per line; a bad line is named by its line number."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:
                raise ManifestError(f"{path}: line {number} is not valid JSON ({err}); fix or "
                                    "remove that line") from None
            if not isinstance(row, dict):
                raise ManifestError(f"{path}: line {number} is not a JSON object")
            rows.append({k: None if v is None else v if isinstance(v, str) else
                         json.dumps(v) if isinstance(v, (list, dict)) else str(v)
                         for k, v in row.items()})
    return pa.Table.from_pylist(rows) if rows else pa.table({})


def load_manifest(path: str | Path) -> pa.Table:
    """Load, validate and normalise a manifest. Raises ManifestError with the rows at fault."""
    path = Path(os.path.abspath(Path(path).expanduser()))
    if not path.exists():
        raise ManifestError(f"{path}: manifest not found; pass --manifest with an existing file")
    try:
        table = _read_table(path)
    except ManifestError:
        raise
    except UnicodeDecodeError as err:
        raise ManifestError(f"{path}: not UTF-8 text ({err}); save the manifest as UTF-8") \
            from err
    except Exception as err:  # pyarrow/datasets parse errors are many types
        hint = "; save the manifest as UTF-8" if "UTF8" in str(err) else ""
        raise ManifestError(f"{path}: cannot read manifest ({type(err).__name__}: "
                            f"{str(err).strip()}){hint}") from err
    if table.num_rows == 0:
        raise ManifestError(f"{path}: the manifest has no rows")
    if "path" not in table.column_names:
        raise ManifestError(
            f"{path}: no `path` column (found: {', '.join(table.column_names) or 'none'}); "
            "the manifest needs one video file path per row")
    rows = _validate(path, table)
    base = path if path.is_dir() else path.parent
    for row in rows:
        row["clip_id"] = row["clip_id"] or str(Path(row["path"]).with_suffix(""))
        # absolute but not resolved: a broken link or a symlink loop fails its own row later
        row["path"] = os.path.abspath(base / row["path"])
        if row.get("audio_path"):
            row["audio_path"] = os.path.abspath(base / row["audio_path"])
    _check_unique(path, rows)
    columns = list(KNOWN_COLUMNS) + [c for c in table.column_names if c not in KNOWN_COLUMNS]
    out = pa.Table.from_pylist(rows)
    for name in KNOWN_COLUMNS:  # a stable schema: every known column, null when absent
        if name not in out.column_names:
            out = out.append_column(name, pa.nulls(len(out), pa.string()))
    return out.select(columns)


def _validate(path: Path, table: pa.Table) -> list[dict]:
    rows, problems = [], []
    for i, raw in enumerate(table.to_pylist()):
        try:
            rows.append(ClipRecord.model_validate(raw).model_dump())
        except ValidationError as err:
            msg = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
            problems.append(f"row {i + 1}: {msg}")
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise ManifestError(f"{path}: {len(problems)} invalid row(s):\n  {shown}{more}")
    return rows


def _check_unique(path: Path, rows: list[dict]) -> None:
    ids = pa.array([r["clip_id"] for r in rows])
    counts = pc.value_counts(ids)
    dupes = [c["values"] for c in counts.to_pylist() if c["counts"] > 1]
    if dupes:
        where = {d: [i + 1 for i, r in enumerate(rows) if r["clip_id"] == d] for d in dupes[:5]}
        detail = "; ".join(f"{d!r} at rows {v}" for d, v in where.items())
        raise ManifestError(
            f"{path}: {len(dupes)} duplicate clip_id(s): {detail}. Give each row a unique "
            "`clip_id` column (or unique paths).")
