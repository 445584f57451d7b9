"""--mode blocks: the last blocks of each branch train with the heads, pulled toward the
original features, interpolated at export; nothing else in the encoder moves."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from tests.builders.synthetic_runs import write_synthetic_run
from injection.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, clips):
    from tests.builders.tiny_encoders import build_tiny_va_encoder

    root = tmp_path_factory.mktemp("ft")
    media = [str(clips[n]) for n in ("real_astronaut", "real_grace_hopper", "tone_220")]
    run = write_synthetic_run(root / "run", 12, media=media, planted=False)
    encoder = build_tiny_va_encoder(root / "va")
    out = root / "inj"
    result = runner.invoke(app, ["train", "--descriptions", str(run), "--encoder", str(encoder),
                                 "--out", str(out), "--mode", "blocks", "--train-blocks", "1",
                                 "--anchor-weight", "0.5", "--interpolate", "0.5",
                                 "--steps", "4", "--batch-size", "4", "--encoder-lr", "1e-2",
                                 "--checkpoint-every", "2"])
    assert result.exit_code == 0, result.output
    return encoder, out


def test_only_the_last_block_moves_and_is_interpolated(trained):
    from transformers import AutoModel

    encoder, out = trained
    original = AutoModel.from_pretrained(encoder / "video").state_dict()
    exported = AutoModel.from_pretrained(out / "encoder" / "video").state_dict()
    tuned = load_file(out / "checkpoints" / "step-000004" / "encoder_blocks.safetensors")
    assert tuned and all(".layer.1." in k for k in tuned if k.startswith("encoder.video"))
    moved = {k for k in original if not torch.equal(original[k], exported[k])}
    assert moved and all(".layer.1." in k for k in moved)
    for key in moved:
        expected = 0.5 * tuned[f"encoder.video.model.{key}"] + 0.5 * original[key]
        torch.testing.assert_close(exported[key], expected)


def test_anchor_is_logged_and_eval_uses_the_tuned_encoder(trained):
    _, out = trained
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("anchor_loss" in r for r in records) and len(records) == 4
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 0, result.output
    evaluation = json.loads((out / "eval.json").read_text())
    assert evaluation["after"]["clip_to_text"] and evaluation["before"]["clip_to_text"]


def test_blocks_mode_needs_a_transformers_encoder(tmp_path, clips):
    from tests.injection.factories import tiny

    run = write_synthetic_run(tmp_path / "run", 6, media=[str(clips["tone_220"])],
                              planted=False)
    save_file(tiny().state_dict(), tmp_path / "w.safetensors")
    result = runner.invoke(app, ["train", "--descriptions", str(run), "--encoder",
                                 str(tmp_path / "w.safetensors"), "--factory",
                                 "tests.injection.factories:tiny", "--out", str(tmp_path / "o"),
                                 "--mode", "blocks", "--steps", "2", "--batch-size", "2"])
    assert result.exit_code == 1 and "--mode heads" in result.output


def test_lora_adapters_merge_back_into_the_same_class(trained, tmp_path, clips):
    from transformers import AutoModel, VideoMAEModel

    encoder, _ = trained
    run = write_synthetic_run(tmp_path / "run", 8, media=[str(clips["real_astronaut"])],
                              planted=False)
    out = tmp_path / "lora"
    result = runner.invoke(app, ["train", "--descriptions", str(run), "--encoder", str(encoder),
                                 "--out", str(out), "--mode", "lora", "--lora-rank", "2",
                                 "--steps", "3", "--batch-size", "4", "--encoder-lr", "5e-2",
                                 "--checkpoint-every", "3"])
    assert result.exit_code == 0, result.output
    merged = AutoModel.from_pretrained(out / "encoder" / "video")
    assert type(merged) is VideoMAEModel
    original = AutoModel.from_pretrained(encoder / "video").state_dict()
    moved = {k for k, v in merged.state_dict().items() if not torch.equal(v, original[k])}
    assert moved and all(k.endswith(("query.weight", "value.weight")) for k in moved)
    result = runner.invoke(app, ["eval", str(out)])
    assert result.exit_code == 0, result.output
