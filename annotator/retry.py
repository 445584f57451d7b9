"""`vaemo-annotate retry-failed OUT`: drop a run's failed rows and run it again.

The failed rows are removed first (atomically), so their clips become pending; the run then
recomputes exactly those, with the settings recorded in OUT/run.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from rich.console import Console

from annotator.config import RunConfig
from annotator.core.errors import ConfigError
from annotator.core.layout import RunFolder
from annotator.core.rows import ErrorKind, RowStatus
from annotator.core.store import Store


def retry_failed(out: Path, kinds: list[str] | None, console: Console,
                 overrides: dict | None = None) -> dict:
    """Run the failed rows of the run in `out` again (only those of `kinds`, if given) with
    its recorded settings, changed by `overrides` (e.g. a larger max_tokens for truncated
    rows); every other row is kept as it is. Returns the new run's summary."""
    out = Path(out)
    recorded = RunFolder(out).run_json
    if not recorded.is_file():
        raise ConfigError(f"{recorded} not found: retry-failed needs a finished run's "
                          "output folder")
    for kind in kinds or ():
        if kind not in {k.value for k in ErrorKind}:
            raise ConfigError(f"--kind {kind!r}: error kinds are "
                              f"{', '.join(k.value for k in ErrorKind)}")
    rows = Store(out).read(["clip_id", "status", "error_kind"])
    failed = rows.filter(pc.equal(rows["status"], RowStatus.FAILED.value))
    if kinds:
        failed = failed.filter(pc.is_in(failed["error_kind"], value_set=pa.array(kinds)))
    ids = set(failed["clip_id"].to_pylist())
    console.print(f"retry-failed: {len(ids)} failed row(s) to recompute")
    if not ids:
        return {"retried": 0}
    settings = json.loads(recorded.read_text())["config"]
    config = RunConfig(**{**settings, **(overrides or {}), "force": False, "dry_run": False})
    from annotator.pipeline import run

    summary = run(config, console, only=ids)
    return {"retried": len(ids), **summary}
