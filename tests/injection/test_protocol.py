"""`vaemo-inject eval --manifest`: a dataset's own split or folds, on clips never annotated,
through the CLI; and the errors that name what to fix."""

import json

import pytest
from typer.testing import CliRunner

from tests.builders.synthetic_runs import write_synthetic_run
from injection.cli import app
from tests.conftest import write_manifest

runner = CliRunner()
NAMES = ("real_astronaut", "real_grace_hopper", "tone_220", "tone_440", "silent_video")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, clips):
    from tests.builders.tiny_encoders import build_tiny_va_encoder

    root = tmp_path_factory.mktemp("protocol")
    media = [str(clips[n]) for n in NAMES[:3]]
    run = write_synthetic_run(root / "run", 12, media=media, planted=False)
    out = root / "inj"
    result = runner.invoke(app, ["train", "--descriptions", str(run), "--encoder",
                                 str(build_tiny_va_encoder(root / "va")), "--out", str(out),
                                 "--steps", "3", "--batch-size", "4", "--workers", "0"])
    assert result.exit_code == 0, result.output
    labels = json.loads((out / "encoder" / "injection.json").read_text())["label_names"]
    return out, labels


def labelled(tmp_path, clips, labels, column: str, values) -> str:
    """A manifest of clips nobody annotated, labels spelled as synonyms where there are."""
    synonyms = {"happiness": "happy", "sadness": "sad", "anger": "angry"}
    rows = [{"path": str(clips[NAMES[i % len(NAMES)]]), "clip_id": f"c{i}",
             "label": synonyms.get(labels[i % len(labels)], labels[i % len(labels)]),
             column: value} for i, value in enumerate(values)]
    return str(write_manifest(tmp_path / "protocol.csv", rows))


def test_the_test_split_is_scored_before_and_after(trained, tmp_path, clips):
    out, labels = trained
    manifest = labelled(tmp_path, clips, labels, "split", ["train"] * 14 + ["test"] * 6 +
                        ["val"] * 2)
    result = runner.invoke(app, ["eval", str(out), "--manifest", manifest])
    assert result.exit_code == 0, result.output
    protocol = json.loads((out / "eval.json").read_text())["protocol"]
    (name, scores), = protocol["sets"].items()
    assert name == "train -> test" and scores["clips"] == {"train": 14, "test": 6}
    for side in ("before", "after"):
        probe = scores[side]["linear_probe"]["100%"]
        assert 0 <= probe["uar"] <= 1 and 0 <= probe["war"] <= 1
        assert set(scores[side]["zero_shot"]) == {"uar", "war"}
    assert "protocol.csv: train -> test" in result.output
    assert "only 6 held-out clips" in result.output  # said, not hidden


def test_folds_give_each_fold_once_and_their_mean(trained, tmp_path, clips):
    out, labels = trained
    manifest = labelled(tmp_path, clips, labels, "fold", [1 + i % 3 for i in range(24)])
    result = runner.invoke(app, ["eval", str(out), "--manifest", manifest, "--folds", "3"])
    assert result.exit_code == 0, result.output
    protocol = json.loads((out / "eval.json").read_text())["protocol"]
    assert list(protocol["sets"]) == ["fold 1", "fold 2", "fold 3"]
    assert all(s["clips"] == {"train": 16, "test": 8} for s in protocol["sets"].values())
    uars = [s["after"]["linear_probe"]["100%"]["uar"] for s in protocol["sets"].values()]
    assert protocol["mean"]["after"]["linear_probe"]["100%"]["uar"] == pytest.approx(
        sum(uars) / 3)
    assert "mean of 3 folds" in result.output


@pytest.mark.parametrize("case,args,says", [
    ("no split", [], "needs rows with split 'train' and 'test'"),
    ("wrong folds", ["--folds", "5"], "--folds 5, but its `fold` column holds 0"),
    ("unknown label", [], "match none of the run's label set"),
])
def test_protocol_errors_name_the_fix(trained, tmp_path, clips, case, args, says):
    out, labels = trained
    values = ["dev"] * 6
    manifest = labelled(tmp_path, clips, labels, "split", values)
    if case == "unknown label":
        manifest = str(write_manifest(tmp_path / "bad.csv", [
            {"path": str(clips["tone_220"]), "clip_id": s, "label": "bored", "split": s}
            for s in ("train", "test")]))
    result = runner.invoke(app, ["eval", str(out), "--manifest", manifest, *args])
    assert result.exit_code == 1 and says in result.output, result.output
