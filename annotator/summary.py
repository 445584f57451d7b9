"""A run's record: run.json (settings, versions, counts, throughput, engine timings) and the
dataset card, written when a run (or an import of batch results) ends."""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from annotator import card
from annotator.core.files import write_json
from annotator.core.layout import RunFolder
from annotator.core.rows import RowStatus, streams_not_received
from annotator.core.schema import SCHEMA_VERSION
from annotator.core.store import Store
from annotator.resolve import Resolved, versions


def write_summary(resolved: Resolved, store: Store, tracker, cached: int, started: float,
                  engine_info: dict) -> dict:
    """run.json (settings, versions, counts, throughput, engine timings) and the dataset card
    for the selected clips as the store holds them now; returns the summary."""
    config, ctx = resolved.config, resolved.ctx
    rows = store.read(["clip_id", "status", "error_kind", "num_output_tokens", "label",
                       "run_id", "has_video", "has_audio", "video_tokens", "audio_tokens"])
    selected = set(resolved.chosen["clip_id"].to_pylist())
    mine = rows.filter(pc.is_in(rows["clip_id"], value_set=pa.array(sorted(selected))))
    failed = mine.filter(pc.equal(mine["status"], RowStatus.FAILED.value))
    unfed = streams_not_received(mine.filter(pc.equal(mine["run_id"], ctx.run_id)))
    by_kind = dict(Counter(failed["error_kind"].to_pylist()))
    summary = {
        "run_id": ctx.run_id, "config": config.model_dump(mode="json"),
        "versions": versions(), "device": resolved.device,
        "model": {"name": ctx.spec.name, "revision": ctx.spec.revision,
                  "family": ctx.spec.family, "modalities": list(ctx.spec.modalities)},
        "template": {"name": ctx.template.tag, "sha256": ctx.template.sha256},
        "labels": ctx.labels, "schema_version": SCHEMA_VERSION,
        "sampling": ctx.sampling.model_dump(), "engine_key": ctx.engine_key,
        "counts": {"selected": len(selected), "rows": len(mine),
                   "ok": len(mine) - len(failed), "failed": len(failed),
                   "failed_by_kind": by_kind, "cached": cached,
                   "computed_now": tracker.done, "media_not_received": unfed},
        "throughput": tracker.rates(), "engine": engine_info,
        "wall_s": round(time.perf_counter() - started, 2),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    write_json(RunFolder(config.out).run_json, summary)
    card.write(config.out, summary, store)
    return summary


def engine_timeline(folder: Path) -> dict:
    """Where the engines' time went (each actor's file, summed; read once, then removed):
    start-up, waiting for the first prepared batch, idle gaps after it, busy stepping."""
    found = []
    for path in sorted(folder.glob("engine-*.json")):
        found.append(json.loads(path.read_text()))
    shutil.rmtree(folder, ignore_errors=True)
    if not found:
        return {}
    return {"engines": len(found),
            "ready_at": min(f["ready_at"] for f in found),
            "startup_s": round(max(f["startup_s"] for f in found), 2),
            **{key: round(sum(f[key] for f in found), 2)
               for key in ("wait_first_s", "idle_s", "busy_s")},
            "steps": sum(f["steps"] for f in found),
            "engine_nodes": sorted({f.get("node", "") for f in found}),
            "prepared_on": sorted({n for f in found for n in f.get("prepared_on", [])})}
