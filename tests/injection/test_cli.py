"""The `vaemo-inject --help` examples run as written."""

import json
import re
import shlex
from pathlib import Path

from typer.testing import CliRunner

from annotator.audit import AuditConfig, audit
from tests.builders.synthetic_runs import write_synthetic_run
from injection.cli import app

runner = CliRunner()


def test_train_help_examples_run(tmp_path, monkeypatch, clips):
    from tests.builders.tiny_encoders import build_tiny_va_encoder

    monkeypatch.chdir(tmp_path)
    media = [str(clips["real_astronaut"]), str(clips["tone_440"])]
    run = write_synthetic_run(Path("runs/demo"), 16, media=media)
    audit(AuditConfig(out=run, clean=run / "clean.parquet"))
    build_tiny_va_encoder(Path("enc"))
    Path("inject.toml").write_text(  # the --config example: settings from a file
        'descriptions = "runs/demo"\nencoder = "enc/"\nout = "inj-config/"\nsteps = 300\n')
    text = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    examples = [shlex.split(x) for x in re.findall(r"vaemo-inject (train [^\n]+)", text)]
    assert len(examples) == 3
    for args in examples:
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        assert "exported:" in result.output
    assert (Path("inj") / "encoder" / "injection.json").is_file()
    # flags override the file: 100 steps, not the file's 300
    last = Path("inj-config/metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["step"] == 100
    for command in ("eval", "export"):
        assert runner.invoke(app, [command, "inj/"]).exit_code == 0
