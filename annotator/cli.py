"""`vaemo-annotate`: the CLI is generated from the typed configs, so `--help` is their docs."""

from __future__ import annotations

from pathlib import Path

import typer
from pydantic import ValidationError

from annotator.config import AuditConfig, RunConfig
from annotator.core.errors import VaemoError
from annotator.core.interrupt import Interrupted
from annotator.core.typed_cli import add_version_option, command_from, console, fail, stopped

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Annotate audio-visual clips with affective descriptions.")
add_version_option(app)

RUN_EXAMPLES = """
Examples (run from the repository after `make demo` built data/demo):

  vaemo-annotate run --manifest data/demo/manifest.csv --out runs/demo

  vaemo-annotate run --manifest data/demo/manifest.csv --out runs/half --subset 0.5 --seed 1

  vaemo-annotate run --manifest data/demo/manifest.csv --out runs/demo --dry-run

  vaemo-annotate run --manifest data/demo/manifest.csv --out runs/gpu --ray-address auto

  vaemo-annotate run --config runs/demo/run.json --dry-run

  vaemo-annotate run --manifest data/demo/manifest.csv --out runs/served --engine openai \
--endpoint http://localhost:8000/v1 --model Qwen/Qwen2.5-Omni-7B --send-media vllm
"""



@app.command(help="Annotate a subset of a manifest; resumable and cached.\n\n" + RUN_EXAMPLES)
@command_from(RunConfig, required=("manifest", "out"))
def run(config: RunConfig) -> None:
    from annotator.pipeline import run as run_pipeline

    run_pipeline(config, console)


@app.command("export-requests", help=(
    "Write the selected clips' requests as an OpenAI Batch file (OUT/batch/requests.jsonl, "
    "custom_id = clip id) for a provider's batch API or `vllm run-batch`, instead of sending "
    "them; `import-results` stores the answers. Takes the options of `run` (one-pass).\n\n"
    "Example: vaemo-annotate export-requests --manifest data/demo/manifest.csv --out "
    "runs/batch --engine openai --endpoint https://api.openai.com/v1 --model gpt-4o-mini "
    "--generation one-pass"))
@command_from(RunConfig, required=("manifest", "out"))
def export_requests(config: RunConfig) -> None:
    from annotator.batch import export_requests as export

    export(config, console)


@app.command("import-results")
def import_results(
    out: Path = typer.Argument(..., help="The folder `export-requests` wrote."),
    results: Path = typer.Argument(..., help="The batch job's output file (JSONL)."),
) -> None:
    """Store the answers of a batch job as rows: validated, typed and cache-keyed as in a
    live run. A file that does not answer the exported requests one to one is refused with
    the custom_ids named, and nothing is stored.

    Example: vaemo-annotate import-results runs/batch batch_output.jsonl
    """
    from annotator.batch import import_results as load

    try:
        load(out, results, console)
    except (VaemoError, ValidationError) as err:
        fail(err)


@app.command("retry-failed")
def retry_failed(
    out: Path = typer.Argument(..., help="A run's output folder (it holds run.json)."),
    kind: list[str] = typer.Option(None, help="Only retry these error kinds (repeatable)."),
    max_tokens: int = typer.Option(None, help="A new output budget for these rows (e.g. "
                                   "for truncated ones); recorded in each row's sampling."),
    think_tokens: int = typer.Option(None, help="A new chain-of-thought budget (two-phase)."),
) -> None:
    """Recompute the failed rows of a finished run with its recorded settings; all other
    rows are kept as they are.

    Example: vaemo-annotate retry-failed runs/demo --kind truncated --max-tokens 4096
    """
    from annotator.retry import retry_failed as retry

    overrides = {k: v for k, v in (("max_tokens", max_tokens), ("think_tokens", think_tokens))
                 if v is not None}
    try:
        retry(out, kinds=kind or None, console=console, overrides=overrides)
    except (VaemoError, ValidationError) as err:
        fail(err)
    except Interrupted as stop:
        stopped(stop)


AUDIT_EXAMPLES = """
Examples:

  vaemo-annotate audit runs/demo

  vaemo-annotate audit runs/demo --clean runs/demo/clean.parquet

  vaemo-annotate audit runs/demo --rules my_rules.toml
"""


@app.command(help="Measure, explain and filter a run's descriptions: metrics.json, "
                  "flags.parquet, an HTML report and optionally the clean set.\n\n"
                  + AUDIT_EXAMPLES)
@command_from(AuditConfig, arguments=("out",))
def audit(config: AuditConfig) -> None:
    from annotator.audit import audit as run_audit

    metrics = run_audit(config)
    v, c = metrics["validity"], metrics["clean"]
    console.print(f"audit: {metrics['rows']} rows ({v['ok']} ok, {v['failed']} failed); "
                  f"{c['rows']} clean; flags {metrics['flags']['counts'] or 'none'}")
    agreement = metrics["agreement"]
    if agreement.get("n"):
        console.print(f"agreement with labels (n={agreement['n']}): accuracy "
                      f"{agreement['accuracy']:.3f}, macro-F1 {agreement['macro_f1']:.3f}, "
                      f"kappa {agreement['cohen_kappa']:.3f}")
    health = metrics["store"]
    for name, reason in health["unreadable"].items():
        console.print(f"[yellow]unreadable[/yellow] descriptions/{name}: {reason} (skipped; "
                      "the next `run` quarantines it and recomputes its clips)")
    if health["quarantined"]:
        console.print(f"quarantined earlier: {', '.join(health['quarantined'])} (see "
                      f"{config.out}/quarantine/)")
    console.print(f"report: {metrics['report']}")


@app.command()
def verify(out: Path = typer.Argument(..., help="A run's output folder.")) -> None:
    """Check a run folder without changing it: rows, unique clips, unreadable or quarantined
    files, leftover temp files, and rows whose cache key no longer matches the recorded
    settings and the media as they are now. Exit code 1 when something needs a re-run.

    Example: vaemo-annotate verify runs/demo
    """
    from annotator.verify import verify as check

    try:
        report = check(out)
    except (VaemoError, ValidationError) as err:
        fail(err)
    for line in report["lines"]:
        console.print(line)
    raise typer.Exit(0 if report["healthy"] else 1)


prompt_app = typer.Typer(no_args_is_help=True, help="Inspect prompts before a run.")
app.add_typer(prompt_app, name="prompt")


@prompt_app.command("preview")
def prompt_preview(
    manifest: Path = typer.Option(..., help="The manifest the clip is in."),
    clip: str = typer.Option(..., help="The clip_id to render the prompt for."),
    template: str = typer.Option("auto", help="Template name or .j2 file (as for `run`)."),
    model: str = typer.Option(None, help="Model folder (default: as for `run`)."),
    labels: str = typer.Option(None, help="Label set (as for `run`)."),
    generation: str = typer.Option("auto", help="auto, one-pass or two-phase (as for `run`)."),
    label_hint: bool = typer.Option(False, help="Show the clip's label as a hint (as for "
                                                "`run`)."),
) -> None:
    """Print the exact prompt the engine gets for one clip (chat template, media
    placeholders) and the JSON schema it must follow.

    Example: vaemo-annotate prompt preview --manifest data/demo/manifest.csv --clip cards_001
    """
    import json

    from annotator.pipeline import preview

    try:
        config = RunConfig(manifest=manifest, out=Path("."), template=template, model=model,
                           labels=labels, generation=generation, label_hint=label_hint)
        planned, schema = preview(config, clip)
    except (ValidationError, VaemoError) as err:
        fail(err)
    from annotator.chat import shown_with_slots

    typer.echo(f"# template {planned['template']}  clip {clip}  model {planned['model']}")
    names = planned["phases"]
    for turn, prompt in enumerate([planned["prompt"], *planned["later_prompts"]]):
        if len(names) > 1:
            typer.echo(f"# phase {turn + 1}: {names[turn]}, "
                       + ("the JSON answer, with the earlier replies as the model's turns"
                          if turn == len(names) - 1 else "free text (unconstrained)"))
        typer.echo(shown_with_slots(prompt, names))
    typer.echo("# JSON schema enforced while decoding")
    typer.echo(json.dumps(schema, indent=2))


@app.command("demo-corpus")
def demo_corpus(out: Path = typer.Argument(Path("data/demo"), help="Where to write it.")) -> None:
    """Build the demo corpus (real portraits + real read speech) and its manifest.csv."""
    from annotator.demo import build_demo_corpus

    try:
        manifest = build_demo_corpus(out)
    except VaemoError as err:
        fail(err)
    console.print(f"demo corpus: {manifest}")


if __name__ == "__main__":
    app()
