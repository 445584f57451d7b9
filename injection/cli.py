"""`vaemo-inject`: align description embeddings with a VA encoder and write it back."""

from __future__ import annotations

import typer

from annotator.core.typed_cli import add_version_option, command_from, console
from injection.config import EvalConfig, FeaturesConfig, FolderConfig, TrainConfig

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Inject affective descriptions into a VA encoder (VAEmo stage 2).")
add_version_option(app)

TRAIN_EXAMPLES = """
Examples:

  vaemo-inject train --descriptions runs/demo --encoder enc/ --out inj/

  vaemo-inject train --descriptions runs/demo/clean.parquet --encoder enc/ --out inj/ --resume

  vaemo-inject train --config inject.toml --steps 100
"""



@app.command(help="Train the projection heads (both contrastive paths) on cached frozen "
                  "features, checkpoint, and export the injected encoder to OUT/encoder.\n\n"
                  + TRAIN_EXAMPLES)
@command_from(TrainConfig, required=("descriptions", "encoder", "out"))
def train(config: TrainConfig) -> None:
    from injection.commands import train as run_train

    summary = run_train(config, log=console.print)
    if "exported" in summary:  # rank 0 of a torchrun job, or the only process
        console.print(f"exported: {summary['exported']}")


@app.command("features")
@command_from(FeaturesConfig, required=("manifest", "out"))
def features(config: FeaturesConfig) -> None:
    """Per-clip embeddings of any manifest (the encoder's branches, each L2-normalised, side
    by side) as Parquet, e.g. for `vaemo-annotate run --select diverse --features OUT`;
    cached by media hash and encoder id.

    Example: vaemo-inject features --manifest data/demo/manifest.csv --encoder enc/ --out
    features.parquet
    """
    from injection.commands import features as run_features

    run_features(config, log=console.print)


@app.command("eval")
@command_from(EvalConfig, arguments=("out",))
def evaluate(config: EvalConfig) -> None:
    """Before vs after on the held-out clips: few-label linear probe (UAR, WAR), zero-shot
    via label texts, clip<->description retrieval; with --manifest, also on a dataset's own
    labelled split or folds. Writes OUT/eval.json.

    Examples:

      vaemo-inject eval inj/

      vaemo-inject eval inj/ --manifest crema-d.csv --split test

      vaemo-inject eval inj/ --manifest dfew.csv --folds 5
    """
    from injection.commands import evaluate as run_eval

    run_eval(config, log=lambda text: typer.echo(text))


@app.command("export")
@command_from(FolderConfig, arguments=("out",))
def export(config: FolderConfig) -> None:
    """Write OUT/encoder again from the last checkpoint, in the encoder's own format.

    Example: vaemo-inject export inj/
    """
    from injection.commands import export_checkpoint

    console.print(f"exported: {export_checkpoint(config.out, log=console.print)}")


if __name__ == "__main__":
    app()
