"""The audit's HTML report: one self-contained file that works offline.

Summary numbers, inline SVG plots, and a browsable table of rows with each clip playable
beside its description, cues and flags. Model text is never parsed as HTML: the page is
rendered by Jinja with autoescaping, the rows travel as JSON inside a
`<script type="application/json">` block (with `<`, `>` and `&` escaped), and the table is
built with `textContent`. Clips are linked by their path relative to the report, not embedded:
a 10k-clip report stays small, and opens wherever the run and its media are.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path

import duckdb
from jinja2 import Environment
from markupsafe import Markup, escape

from annotator.core.files import write_text
from annotator.core.schema import TEXT_FIELDS
from annotator.audit.rules import Rule


def write(path: Path, metrics: dict, con: duckdb.DuckDBPyConnection, rules: list[Rule],
          max_rows: int, media_root: Path | None) -> None:
    """The report at `path`; clips are linked only where they lie under `media_root` (the
    manifest's folder), so a manifest row cannot make the page point at any file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = _table_rows(con, path.parent, max_rows, media_root)
    agreement = metrics["agreement"]
    flag_counts = metrics["flags"]["counts"]
    plots = {
        "labels": _bars(_label_distribution(con), "clips per primary emotion (predicted)"),
        "flags": _bars(sorted(flag_counts.items(), key=lambda kv: -kv[1]), "rows per flag"),
        "lengths": _bars(_histogram_items(metrics["richness"]["length_histogram"]),
                         "description length (words)"),
        "confusion": _confusion(agreement) if agreement.get("n") else "",
    }
    source = resources.files(__package__).joinpath("report.html.j2").read_text()
    html = Environment(autoescape=True).from_string(source).render(
        metrics=metrics, plots=plots, rules=rules, shown=len(rows),
        rows_json=Markup(_script_json(rows)),
        shown_fields=Markup(_script_json(["primary_emotion", *TEXT_FIELDS])))
    write_text(path, html)


def _script_json(payload) -> str:
    """JSON that cannot close its <script> element or start markup."""
    text = json.dumps(payload, ensure_ascii=False, default=str)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _table_rows(con: duckdb.DuckDBPyConnection, report_dir: Path, max_rows: int,
                media_root: Path | None) -> list[dict]:
    """Flagged rows first (excluded before merely flagged), then the rest, up to max_rows."""
    table = con.sql(f"""
        SELECT a.clip_id, a.path, a.audio_path, a.has_video, a.has_audio, a.label, a.status,
               a.error,
               a.description, a.reasoning, a.cues, f.flags, f.details, f.excluded
        FROM audited a JOIN flags_view f ON f.clip_id = a.clip_id
        ORDER BY f.excluded DESC, len(f.flags) > 0 DESC, a.clip_id
        LIMIT {int(max_rows)}
    """).to_arrow_table()
    rows = table.to_pylist()
    for row in rows:  # only the rows shown (bounded by max_rows) are serialised
        row["src"] = _relative(row.pop("path"), report_dir, media_root)
        # a dataset with separate audio files: the clip's own audio plays beside its video
        row["audio_src"] = _relative(row.pop("audio_path"), report_dir, media_root)
    return rows


def _relative(path: str | None, base: Path, media_root: Path | None) -> str | None:
    if not path or media_root is None:
        return None
    if not Path(os.path.realpath(path)).is_relative_to(os.path.realpath(media_root)):
        return None  # outside the manifest's folder: never linked
    try:
        return Path(os.path.relpath(path, base)).as_posix()
    except ValueError:  # another drive (Windows): an absolute URL still works offline
        return Path(path).as_uri()


def _label_distribution(con: duckdb.DuckDBPyConnection) -> list[tuple[str, int]]:
    return con.execute("""
        SELECT description.primary_emotion, count(*) FROM audited WHERE status = 'ok'
        GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 30""").fetchall()


def _histogram_items(hist: dict) -> list[tuple[str, int]]:
    edges, counts = hist.get("edges", []), hist.get("counts", [])
    return [(f"{edges[i]:.0f}" if edges[i + 1] - edges[i] == 1 else
             f"{edges[i]:.0f}-{edges[i + 1] - 1:.0f}", c) for i, c in enumerate(counts)]


def _bars(items: list[tuple[str, int]], title: str) -> Markup:
    """A horizontal bar chart as inline SVG; labels are escaped."""
    if not items:
        return Markup(f"<p class='empty'>{escape(title)}: nothing to show</p>")
    width, bar_h, label_w = 520, 18, 190
    top = max(v for _, v in items) or 1
    parts = [f"<svg role='img' aria-label='{escape(title)}' width='{width}' "
             f"height='{len(items) * (bar_h + 4) + 24}'>"
             f"<text x='0' y='14' class='title'>{escape(title)}</text>"]
    for i, (label, value) in enumerate(items):
        y = 24 + i * (bar_h + 4)
        w = (width - label_w - 50) * value / top
        parts.append(f"<text x='{label_w - 6}' y='{y + 13}' text-anchor='end'>"
                     f"{escape(str(label))[:40]}</text>"
                     f"<rect x='{label_w}' y='{y}' width='{w:.1f}' height='{bar_h}'/>"
                     f"<text x='{label_w + w + 4:.1f}' y='{y + 13}'>{value}</text>")
    return Markup("".join(parts) + "</svg>")


def _confusion(agreement: dict) -> Markup:
    """Confusion matrix (rows: dataset label, columns: prediction) as an SVG heatmap."""
    classes, matrix = agreement["classes"], agreement["confusion"]
    cell, pad = 34, 120
    size = pad + cell * len(classes)
    top = max(max(r) for r in matrix) or 1
    parts = [f"<svg role='img' aria-label='confusion matrix' width='{size + 10}' "
             f"height='{size + 10}'><text x='0' y='14' class='title'>confusion (rows: "
             "dataset label, columns: predicted)</text>"]
    for j, name in enumerate(classes):
        x = pad + j * cell + cell / 2
        parts.append(f"<text transform='translate({x:.0f},{pad - 6}) rotate(-45)'>"
                     f"{escape(name)[:16]}</text>")
    for i, name in enumerate(classes):
        y = pad + i * cell
        parts.append(f"<text x='{pad - 6}' y='{y + cell / 2 + 4:.0f}' text-anchor='end'>"
                     f"{escape(name)[:16]}</text>")
        for j, value in enumerate(matrix[i]):
            shade = 0.08 + 0.85 * value / top
            parts.append(f"<rect x='{pad + j * cell}' y='{y}' width='{cell - 2}' "
                         f"height='{cell - 2}' fill-opacity='{shade:.2f}'/>"
                         f"<text x='{pad + j * cell + cell / 2 - 1:.0f}' "
                         f"y='{y + cell / 2 + 4:.0f}' text-anchor='middle' class='cell'>"
                         f"{value}</text>")
    return Markup("".join(parts) + "</svg>")
