"""OUT/README.md: a dataset card a person can read, written after every run."""

from __future__ import annotations

import html
import json
from collections import Counter
from pathlib import Path

from annotator.core.layout import RunFolder
from annotator.core.store import Store


def _text(value) -> str:
    """Text from outside (a model's config, a template header, the manifest, a path) as
    inert Markdown: no HTML, no code spans, no links, no emphasis."""
    return (html.escape(str(value)).replace("`", "&#96;").replace("[", "&#91;")
            .replace("*", "&#42;").replace("_", "&#95;"))


def write(out: Path, summary: dict, store: Store) -> None:
    """Write OUT/README.md from a run's summary and its stored rows."""
    rows = store.read(["clip_id", "status", "label", "description", "reasoning", "error_kind"])
    ok = [r for r in rows.to_pylist() if r["status"] == "ok"]
    predicted = Counter(_text(r["description"]["primary_emotion"]) for r in ok)
    c = summary["counts"]
    lines = [
        "# vaemo affective descriptions",
        "",
        f"Run {_text(summary['run_id'])} annotated {c['rows']} of {c['selected']} selected "
        f"clips from {_text(summary['config']['manifest'])} with "
        f"**{_text(summary['model']['name'])}** (revision "
        f"{_text(summary['model']['revision'])}, {summary['config']['compute']['engine']} "
        f"engine, {summary['device']}), template {_text(summary['template']['name'])}.",
        "",
        f"- ok: {c['ok']}, failed: {c['failed']} "
        f"({', '.join(f'{k}: {v}' for k, v in c['failed_by_kind'].items()) or 'none'})",
        f"- label set: "
        f"{', '.join(map(_text, summary['labels'])) if summary['labels'] else 'open vocabulary'}",
        f"- predicted primary emotions: "
        f"{', '.join(f'{k} {v}' for k, v in predicted.most_common()) or 'none yet'}",
        f"- schema version {summary['schema_version']}; sampling "
        f"`{json.dumps(summary['config']['sampling']['temperature'])}` temperature, "
        f"max {summary['config']['sampling']['max_tokens']} tokens",
        "",
        "## Files",
        "- `descriptions/*.parquet`: one row per clip (`status` ok|failed, `error_kind`, "
        "`description` struct, `reasoning`, `raw_output`, provenance and token counts).",
        "- `subset.parquet`: the selected clip ids and their strata.",
        "- `run.json`: configuration, package versions, counts, throughput.",
        "",
        "## Load",
        "```python",
        "import pandas as pd; df = pd.read_parquet('descriptions')",
        "from datasets import load_dataset",
        "ds = load_dataset('parquet', data_files='descriptions/*.parquet')['train']",
        "```",
        "",
        "These descriptions are machine-written and unaudited; run `vaemo-annotate audit` "
        "before training on them.",
    ]
    if ok:
        example = ok[0]
        body = json.dumps({"reasoning": example["reasoning"], **example["description"]},
                          indent=2, ensure_ascii=True)[:2000]
        lines += ["", "## Example", f"{_text(example['clip_id'])} (label: "
                  f"{_text(example['label'])})", "", "```json",
                  body.replace("`", "\\u0060"), "```"]  # model text cannot close the fence
    RunFolder(out).card.write_text("\n".join(lines) + "\n")
