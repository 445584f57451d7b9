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


def test_an_unlabelled_run_trains_both_paths_from_the_descriptions(tmp_path, clips):
    """Without dataset labels, --label-source auto takes the descriptions' primary emotions
    (confident ones) for the label path: its loss is not zero, and the checkpoint says where
    the labels came from. Asking for dataset labels there fails at start, naming the fix."""
    from tests.builders.tiny_encoders import build_tiny_va_encoder

    run = write_synthetic_run(tmp_path / "run", 16, planted=False, labelled=False,
                              media=[str(clips["real_astronaut"]), str(clips["tone_440"])])
    encoder = build_tiny_va_encoder(tmp_path / "enc")
    common = ["train", "--descriptions", str(run), "--encoder", str(encoder), "--steps", "4",
              "--batch-size", "8", "--warmup", "0"]
    refused = runner.invoke(app, [*common, "--out", str(tmp_path / "a"), "--label-source",
                                  "dataset"])
    assert refused.exit_code == 1
    assert "no clip has a dataset label" in refused.output
    assert "--label-source auto" in refused.output
    assert not (tmp_path / "a" / "metrics.jsonl").exists()
    result = runner.invoke(app, [*common, "--out", str(tmp_path / "b")])
    assert result.exit_code == 0, result.output
    assert "label path (auto): 0 clips from dataset labels, " in result.output
    history = [json.loads(x) for x in (tmp_path / "b" / "metrics.jsonl").open()]
    assert all(r["label_loss"] > 0 for r in history if "label_loss" in r)
    assert any("label_loss" in r for r in history)
    exported = json.loads((tmp_path / "b" / "encoder" / "injection.json").read_text())
    path = exported["label_path"]
    assert path["source"] == "auto" and path["dataset"] == 0
    assert path["description"] + path["none"] == 16 and path["description"] >= 8


def test_features_of_a_manifest_feed_a_diverse_subset(tmp_path, clips):
    """`features` writes one L2-normalised vector per branch per readable clip, names the
    unreadable ones, computes nothing twice, and `run --select diverse` plans with it."""
    import numpy as np
    import pyarrow.parquet as pq

    from annotator.cli import app as annotate
    from tests.builders.tiny_encoders import build_tiny_va_encoder

    encoder = build_tiny_va_encoder(tmp_path / "enc")
    names = ["real_astronaut", "real_grace_hopper", "tone_220", "tone_440", "corrupt"]
    rows = [f"{clips[n]},{n},neutral" for n in names]
    (tmp_path / "m.csv").write_text("path,clip_id,label\n" + "\n".join(rows) + "\n")
    args = ["features", "--manifest", str(tmp_path / "m.csv"), "--encoder", str(encoder),
            "--out", str(tmp_path / "f.parquet"), "--workers", "0"]
    first = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert first.exit_code == 0, first.output
    assert "1 clips have no vector" in first.output and "corrupt" in first.output
    table = pq.read_table(tmp_path / "f.parquet")
    assert table["clip_id"].to_pylist() == names[:4]
    vectors = np.stack(table["features"].to_numpy(zero_copy_only=False))
    video = int(re.search(r"video (\d+)", first.output).group(1))
    assert np.allclose(np.linalg.norm(vectors[:, :video], axis=1), 1, atol=1e-4)
    assert np.allclose(np.linalg.norm(vectors[:, video:], axis=1), 1, atol=1e-4)
    cached = sorted((tmp_path / ".vaemo-features").rglob("*.npy"))
    again = runner.invoke(app, args, env={"COLUMNS": "200"})
    assert again.exit_code == 0 and sorted((tmp_path / ".vaemo-features").rglob("*.npy")) \
        == cached  # every vector from the cache
    planned = runner.invoke(annotate, [
        "run", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"),
        "--engine", "fake", "--subset", "2", "--select", "diverse", "--features",
        str(tmp_path / "f.parquet"), "--dry-run"], env={"COLUMNS": "200"})
    assert planned.exit_code == 0, planned.output
    assert "1 clips without a vector are never picked" in planned.output


def test_measured_features_need_no_encoder_and_tell_copies_from_new_clips(tmp_path, clips):
    """Without --encoder: cues, a frame thumbnail and MFCC statistics per clip; copies of one
    clip get one vector, so a diverse pick of two takes one of each pair."""
    import numpy as np
    import pyarrow.parquet as pq

    from annotator.core.diverse import load_features
    from annotator.core.manifest import load_manifest
    from annotator.core.subset import select_subset
    from injection.encoders.measured import BRANCHES

    pairs = ["real_astronaut", "real_astronaut", "tone_220", "tone_220", "real_astronaut",
             "tone_220"]
    rows = [f"{clips[n]},{n}-{i},neutral" for i, n in enumerate(pairs)]
    (tmp_path / "m.csv").write_text("path,clip_id,label\n" + "\n".join(rows) + "\n")
    done = runner.invoke(app, ["features", "--manifest", str(tmp_path / "m.csv"), "--out",
                               str(tmp_path / "f.parquet"), "--workers", "0"],
                         env={"COLUMNS": "200"})
    assert done.exit_code == 0, done.output
    sizes = ", ".join(f"{name} {size}" for name, size in BRANCHES.items())
    assert "measured (no encoder)" in done.output and f"({sizes})" in done.output
    vectors = np.stack(pq.read_table(tmp_path / "f.parquet")["features"].to_numpy(
        zero_copy_only=False))
    assert np.allclose(vectors[0], vectors[1]) and not np.allclose(vectors[0], vectors[2])
    manifest = load_manifest(tmp_path / "m.csv")
    features = load_features(tmp_path / "f.parquet", manifest["clip_id"].to_pylist())
    chosen = select_subset(manifest, 2, seed=0, features=features)["clip_id"].to_pylist()
    assert {c.split("-")[0] for c in chosen} == {"real_astronaut", "tone_220"}
