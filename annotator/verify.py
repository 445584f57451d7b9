"""`vaemo-annotate verify OUT`: what a run folder holds, checked without changing it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
from rich.markup import escape

from annotator.config import RunConfig
from annotator.core.errors import ConfigError
from annotator.core.layout import RunFolder
from annotator.core.store import Store


def verify(out: Path) -> dict:
    """Counts and problems of the run in `out`; `healthy` is False when a re-run has work."""
    folder = RunFolder(out)
    if not folder.descriptions.is_dir():
        raise ConfigError(f"{folder.descriptions} not found: is {out} a `vaemo-annotate run` "
                          "output folder?")
    store = Store(out)
    raw = store.read_raw(["clip_id", "cache_key", "status"])
    unique = pc.count_distinct(raw["clip_id"]).as_py() if len(raw) else 0
    index = store.index()
    temps = sorted(p.name for p in folder.descriptions.glob(".*.tmp"))
    report = {"rows_on_disk": len(raw), "clips": unique, "duplicates": len(raw) - unique,
              "unreadable": dict(store.unreadable), "quarantined": store.quarantined(),
              "temp_files": temps, "stale": None, "missing": None}
    if folder.run_json.is_file():
        from annotator.pipeline import plan_clips
        from annotator.resolve import resolve

        config = RunConfig(**json.loads(folder.run_json.read_text())["config"])
        plan = plan_clips(resolve(config))
        keys = dict(zip(plan["clip_id"].to_pylist(), plan["cache_key"].to_pylist()))
        report["stale"] = sorted(c for c, k in keys.items()
                                 if c in index and index[c]["cache_key"] != k)
        report["missing"] = sorted(c for c in keys if c not in index)
    report["healthy"] = not (report["unreadable"] or report["stale"] or report["missing"])
    report["lines"] = _lines(out, report)
    return report


def _lines(out: Path, r: dict) -> list[str]:
    lines = [f"{escape(str(out))}: {r['clips']} clips in {r['rows_on_disk']} stored rows"
             + (f" ({r['duplicates']} superseded rows left by a crash; the next run "
                "compacts them)" if r["duplicates"] else "")]
    for name, reason in r["unreadable"].items():
        lines.append(f"unreadable descriptions/{escape(name)}: {escape(reason)} (the next run "
                     "quarantines it and recomputes its clips)")
    if r["quarantined"]:
        lines.append(f"quarantined: {escape(', '.join(r['quarantined']))}")
    if r["temp_files"]:
        lines.append(f"{len(r['temp_files'])} temp file(s) of an interrupted commit (the next "
                     "run removes them)")
    if r["stale"] is None:
        lines.append("no run.json: cache keys not checked")
    else:
        lines.append(f"{len(r['stale'])} row(s) whose cache key no longer matches, "
                     f"{len(r['missing'])} selected clip(s) without a row"
                     + ("; `vaemo-annotate run --config OUT/run.json` brings them up to date"
                        if r["stale"] or r["missing"] else ""))
    lines.append("healthy" if r["healthy"] else "needs a re-run")
    return lines
