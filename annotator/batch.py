"""Provider batch files: `export-requests` writes the selected clips' requests as OpenAI Batch
JSONL, `import-results` turns the file that comes back into rows.

A batch job is a run whose engine answers later. Export plans and prepares the clips as `run`
does (the same cache keys: cached clips are not exported; a clip whose media fail is stored
as a typed row at once), writes one request per clip (`custom_id` = clip id, the very
`/v1/chat/completions` body the live engine sends) and keeps each exported clip's prepared
plan (without its media) beside the file. Import checks the returned file against that plan
(a missing, duplicated or foreign `custom_id` is named, and nothing is stored), judges each
answer as a live run does and commits the rows. The file works with OpenAI's Batch API, the
providers that copy it and `vllm run-batch`.

One request per clip, so one-pass generation and one sample: a clip whose answer fails
(invalid, truncated, a failed request) is a typed row that `retry-failed` recomputes live.
"""

from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console

from annotator import progress
from annotator.config import RunConfig
from annotator.core.errors import ConfigError
from annotator.core.files import replacing, write_json, write_parquet
from annotator.core.layout import RunFolder
from annotator.core.rows import ROW_SCHEMA
from annotator.core.schema import enforced_model
from annotator.core.store import Store
from annotator.engines import ENGINES
from annotator.engines.contract import Generation
from annotator.engines.openai_engine import to_generation
from annotator.engines.wire import chat_request
from annotator.resolve import commit_meta, resolve
from annotator.resume import split_cached
from annotator.stages.context import with_chat
from annotator.stages.generate import request_for
from annotator.stages.prepare import prepare_batch
from annotator.stages.rows import Attempt, build_row, failed_rows, judge

BLOCK = 64
"""Clips prepared at a time (their frames and audio are in memory until written)."""
MEDIA = ("frames", "audio", "prompt", "later_prompts", "turn_texts", "context_json")
"""Prepared columns the kept plan leaves out: the request file holds them."""
URL = "/v1/chat/completions"


def export_requests(config: RunConfig, console: Console) -> dict:
    """Write OUT/batch/requests.jsonl for the selected clips that have no row yet."""
    if not ENGINES[config.compute.engine].served:
        raise ConfigError("export-requests writes requests for a served model: pass "
                          "--engine openai, --endpoint (where the file goes) and --model")
    from annotator.pipeline import plan_clips

    resolved = resolve(config, "cpu")
    ctx = with_chat(resolved.ctx)
    if ctx.two_phase or ctx.sampling.samples > 1:
        raise ConfigError("a batch file holds one request per clip; two-phase generation and "
                          "--samples need an answer before the next request: pass "
                          "--generation one-pass (and --samples 1)")
    folder, store = RunFolder(config.out), Store(config.out)
    with store.lock():
        plan = plan_clips(resolved)
        _, pending = split_cached(plan, store, config.force)
        failed = [failed_rows(pending.filter(pc.is_valid(pending["error_kind"])), ctx)]
        to_send = pending.filter(pc.is_null(pending["error_kind"]))
        kept: list[pa.Table] = []
        folder.batch_requests.parent.mkdir(parents=True, exist_ok=True)
        with replacing(folder.batch_requests) as tmp, open(tmp, "w") as out:
            for start in range(0, len(to_send), BLOCK):
                prepared, broken = _prepared(to_send.slice(start, BLOCK), ctx)
                failed.append(broken)
                sent = []
                for row in prepared.to_pylist():
                    body, what = chat_request(ctx.spec, ctx.options, request_for(row, ctx))
                    line = json.dumps({"custom_id": row["clip_id"], "method": "POST",
                                       "url": URL, "body": body})
                    out.write(line + "\n")
                    sent.append(json.dumps({**what, "request_bytes": len(json.dumps(body))}))
                kept.append(prepared.drop_columns([c for c in MEDIA if c in
                                                   prepared.column_names])
                            .append_column("sent", pa.array(sent, pa.string())))
        exported = pa.concat_tables(kept) if kept else _empty_plan()
        write_parquet(exported, folder.batch_plan)
        write_json(folder.batch_export, {
            "run_id": ctx.run_id, "config": config.model_dump(mode="json"),
            "template_sha256": ctx.template.sha256, "schema_sha256": ctx.schema_sha256,
            "requests": len(exported)})
        failures = pa.concat_tables(failed)
        if len(failures):
            store.commit(failures, ctx.run_id, commit_meta(ctx.run_id))
    summary = {"requests": len(exported), "failed_before": len(failures),
               "cached": len(plan) - len(pending), "file": str(folder.batch_requests)}
    console.print(f"export-requests: {summary['requests']} request(s) in {summary['file']}; "
                  f"{summary['cached']} cached, {summary['failed_before']} failed before "
                  "a request (stored as typed rows)")
    return summary


def _prepared(plan: pa.Table, ctx) -> tuple[pa.Table, pa.Table]:
    """(the clips prepared for a request, the rows of those whose preparation failed)."""
    prepared = prepare_batch(plan, ctx=ctx)
    ok = pc.is_null(prepared["error_kind"])
    broken = [build_row(r, None, None, 0.0, 1, ctx)
              for r in prepared.filter(pc.invert(ok)).to_pylist()]
    return prepared.filter(ok), pa.Table.from_pylist(broken, schema=ROW_SCHEMA)


def _empty_plan() -> pa.Table:
    return pa.table({"clip_id": pa.array([], pa.string()), "sent": pa.array([], pa.string())})


def import_results(out: Path, results: Path, console: Console) -> dict:
    """Rows from a returned batch file for the clips `export-requests` wrote to `out`."""
    folder = RunFolder(out)
    if not folder.batch_export.is_file():
        raise ConfigError(f"{folder.batch_export} not found: import-results needs the folder "
                          "`vaemo-annotate export-requests` wrote")
    export = json.loads(folder.batch_export.read_text())
    plan = pq.read_table(folder.batch_plan)
    answers = read_results(Path(results), plan["clip_id"].to_pylist())
    config = RunConfig(**export["config"])
    resolved = resolve(config, "cpu")
    ctx = replace(resolved.ctx, run_id=export["run_id"])
    if (ctx.template.sha256, ctx.schema_sha256) != (export["template_sha256"],
                                                    export["schema_sha256"]):
        raise ConfigError("the template or the label set changed since export-requests: these "
                          "answers are for the old prompts; export again and send the new file")
    model = enforced_model(tuple(ctx.labels) if ctx.labels else None, ctx.template.schema,
                           False)
    started = time.perf_counter()
    rows = []
    for row in plan.to_pylist():
        sent = json.loads(row.pop("sent"))
        attempt = Attempt(_generation(answers[row["clip_id"]], sent))
        rows.append(build_row(row, attempt, judge(attempt, model), 0.0, 1, ctx))
    table = pa.Table.from_pylist(rows, schema=ROW_SCHEMA)
    store = Store(out)
    tracker = progress.Tracker(console, total=len(table), cached=0,
                               prices=config.remote.prices)
    with store.lock():
        store.commit(table, ctx.run_id, commit_meta(ctx.run_id))
        tracker.add_rows(table)
        from annotator.summary import write_summary

        summary = write_summary(replace(resolved, ctx=ctx), store, tracker, 0, started,
                                {"started": False, "batch_file": str(results)})
    progress.print_summary(console, summary)
    return summary


def read_results(path: Path, expected: list[str]) -> dict[str, dict]:
    """custom_id -> result line of a batch output file, or a ConfigError that names every
    missing, duplicated and foreign custom_id (nothing is stored then)."""
    if not path.is_file():
        raise ConfigError(f"{path} not found: pass the batch output file (JSONL)")
    found: dict[str, dict] = {}
    duplicated, foreign = [], []
    wanted = set(expected)
    with open(path) as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                result = json.loads(line)
                clip = result["custom_id"]
            except (ValueError, KeyError, TypeError):
                raise ConfigError(f"{path} line {number} is not a batch result (JSON with a "
                                  "custom_id); pass the file the batch job returned") from None
            if clip in found:
                duplicated.append(clip)
            elif clip not in wanted:
                foreign.append(clip)
            found.setdefault(clip, result)
    missing = [c for c in expected if c not in found]
    problems = [f"{name} {_few(ids)}" for name, ids in (
        ("missing", missing), ("duplicated", duplicated), ("foreign", foreign)) if ids]
    if problems:
        raise ConfigError(f"{path} does not answer the exported requests one to one: "
                          f"{'; '.join(problems)}; nothing was stored. Pass the complete "
                          "output of the job that was sent this folder's batch/requests.jsonl")
    return found


def _generation(result: dict, sent: dict) -> Generation:
    """The answer of one result line; a failed request or an unreadable answer is a failed
    Generation (a typed `engine` row), as in a live run."""
    response, error = result.get("response") or {}, result.get("error")
    code = response.get("status_code")
    if error or code != 200:
        detail = json.dumps(error or response.get("body"))[:300]
        return Generation(error=f"the batch request failed (status {code}): {detail}")
    try:
        return to_generation(response["body"], {**sent, "http_tries": None})
    except (ValueError, KeyError, IndexError, TypeError) as err:
        return Generation(error=f"an unreadable answer ({type(err).__name__}: {err})")


def _few(ids: list[str]) -> str:
    shown = ", ".join(ids[:5])
    return f"{len(ids)} ({shown}{', ...' if len(ids) > 5 else ''})"
