"""The whole chain on CPU: `vaemo-annotate run` (tiny Omni, real and synthetic clips) ->
`audit` -> `vaemo-inject train` (tiny random VideoMAE + wav2vec2) -> `eval` -> export ->
reload, and the reloaded encoder gives the same embeddings."""

import json
import shutil

import pytest
import torch
from typer.testing import CliRunner

from annotator.cli import app as annotate
from injection.cli import app as inject
from tests.conftest import write_manifest

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_annotate_audit_inject_eval_export_reload(tmp_path, clips, tiny_omni):
    from injection.encoders.va import load_encoder
    from tests.injection.conftest import clip_features
    from injection.training.export import load_injected
    from tests.builders.tiny_encoders import build_tiny_va_encoder

    names = ["real_astronaut", "real_grace_hopper", "tone_220", "tone_440", "silent_video",
             "audio_only"]
    rows = []
    for i, name in enumerate(names):
        shutil.copy(clips[name], tmp_path / clips[name].name)
        rows.append({"path": clips[name].name, "clip_id": name,
                     "label": ["happy", "sad"][i % 2]})
    manifest = write_manifest(tmp_path / "m.csv", rows)
    run = tmp_path / "run"
    result = runner.invoke(annotate, ["run", "--manifest", str(manifest), "--out", str(run),
                                      "--model", str(tiny_omni), "--think-tokens", "24",
                                      "--max-tokens", "512"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(annotate, ["audit", str(run)])
    assert result.exit_code == 0, result.output

    encoder_dir = build_tiny_va_encoder(tmp_path / "va")
    out = tmp_path / "inj"
    result = runner.invoke(inject, ["train", "--descriptions", str(run), "--encoder",
                                    str(encoder_dir), "--out", str(out), "--steps", "12",
                                    "--batch-size", "4", "--checkpoint-every", "6",
                                    "--no-exclude-flagged", "--eval-fraction", "0.34"])
    assert result.exit_code == 0, result.output
    train = json.loads((out / "train.json").read_text())
    assert train["final"]["step"] == 12 and train["train_clips"] >= 2
    assert (out / "checkpoints" / "last").read_text() == "step-000012"

    result = runner.invoke(inject, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "eval.json").read_text())
    assert {"linear_probe", "zero_shot", "clip_to_text"} <= set(evaluation["after"])
    assert "| clip->text r@1 |" in result.output

    original = load_encoder(encoder_dir)
    again, projector, meta = load_injected(out / "encoder")
    assert meta["format"] == "hf" and meta["label_names"] == ["happy", "sad"]
    before = clip_features(original, clips["real_astronaut"])
    after = clip_features(again, clips["real_astronaut"])
    with torch.no_grad():
        for branch in before:
            torch.testing.assert_close(before[branch], after[branch])
        embedding = projector.clip_embedding(after)
    assert embedding.shape == (1, meta["dim"])
    # a second export from the checkpoint is the same encoder
    result = runner.invoke(inject, ["export", str(out)])
    assert result.exit_code == 0, result.output
