"""The README's commands and the `--help` examples are real and work."""

import json
import re
import shlex
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from annotator.engines import ENGINES
from annotator.cli import app
from tests.builders.cluster_answer import joined_or_said_why

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()
# help is laid out for the terminal (COLUMNS); what these tests read is its content
WIDE = {"COLUMNS": "200"}


def help_examples() -> list[list[str]]:
    text = runner.invoke(app, ["run", "--help"], env=WIDE).output
    lines = re.findall(r"vaemo-annotate (run [^\n]+)", text)
    return [shlex.split(line.strip()) for line in lines]


def test_readme_opens_with_the_two_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert blocks[0].split() == ["make", "demo"]
    assert blocks[1].split() == ["make", "test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci


def test_help_shows_examples_and_every_field():
    text = runner.invoke(app, ["run", "--help"], env=WIDE).output
    assert len(help_examples()) == 6
    for flag in ("--subset", "--template", "--ray-address", "--dry-run", "--max-tokens",
                 "--config", "--faults"):
        assert flag in text
    assert f"[{'|'.join(ENGINES)}]" in text  # choices survive rich's markup


@pytest.mark.slow
def test_help_examples_run(tmp_path, monkeypatch, clips):
    """Each example runs as written (engine-free: with --dry-run added) from a folder
    holding the demo corpus. The cluster one joins whatever cluster `auto` finds on this
    machine: with none it fails at once with one line naming `ray start --head`; with one
    (someone else's `ray start`) it plans there, or says in one line what is missing."""
    demo = tmp_path / "data" / "demo"
    demo.mkdir(parents=True)
    for name in ("real_astronaut", "real_grace_hopper"):
        shutil.copy(clips[name], demo / clips[name].name)
    (demo / "manifest.csv").write_text(
        "path,label,speaker\nreal_astronaut.mp4,neutral,a\nreal_grace_hopper.mp4,neutral,b\n")
    monkeypatch.chdir(tmp_path)
    recorded = tmp_path / "runs" / "demo" / "run.json"  # what a finished demo run leaves
    recorded.parent.mkdir(parents=True)
    recorded.write_text(json.dumps({"run_id": "r", "config": {
        "manifest": "data/demo/manifest.csv", "out": "runs/demo", "sampling": {"seed": 0}}}))
    for args in help_examples():
        result = runner.invoke(app, args + ([] if "--dry-run" in args else ["--dry-run"]),
                               env=WIDE)
        if "--ray-address" in args:
            assert joined_or_said_why(result), result.output
            continue
        assert result.exit_code == 0, result.output
        if "--endpoint" in args:  # planned without the server: its name, its media
            assert "Qwen/Qwen2.5-Omni-7B" in result.output and "describe_av" in result.output
            continue
        assert "SmolLM2-135M-Instruct" in result.output  # the shipped CPU default
        assert "describe_then_fuse@2" in result.output


@pytest.mark.parametrize("columns", [None, "60"])
def test_bad_values_are_named_on_one_line(tmp_path, columns):
    """Messages never wrap, whatever the terminal width and however long the path."""
    deep = tmp_path / ("a-rather-long-folder-name-" * 6) / "and-deeper"
    env = {"COLUMNS": columns} if columns else {}
    result = runner.invoke(app, ["run", "--manifest", "m.csv", "--out", str(deep),
                                 "--subset", "ten"], env=env)
    assert result.exit_code == 2 and "--subset" in result.output
    missing = deep / "none.csv"
    result = runner.invoke(app, ["run", "--manifest", str(missing), "--out", str(deep),
                                 "--dry-run"], env=env)
    assert result.exit_code == 1
    line = next(x for x in result.output.splitlines() if "error" in x)
    assert f"{missing}: manifest not found" in line  # path and message on one line


def test_config_file_with_flags_on_top(tmp_path):
    (tmp_path / "run.toml").write_text('manifest = "none.csv"\nsubset = "ten"\n')
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "run.toml"), "--out",
                                 str(tmp_path)])
    assert result.exit_code == 2 and "--subset" in result.output  # the file's value is used
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "run.toml"), "--out",
                                 str(tmp_path), "--subset", "2", "--dry-run"])
    assert result.exit_code == 1 and "none.csv: manifest not found" in result.output
    (tmp_path / "bad.yaml").write_text("manifest: [unclosed\n")
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 1 and "does not parse" in result.output
    (tmp_path / "run.txt").write_text("manifest = 'm.csv'\n")
    result = runner.invoke(app, ["run", "--config", str(tmp_path / "run.txt")])
    assert result.exit_code == 1 and "use a .toml" in result.output
    assert "does not parse" not in result.output


def test_a_bug_is_not_dressed_as_a_user_error(tmp_path, monkeypatch):
    """Only VaemoError becomes a one-line message; anything else keeps its traceback."""
    import annotator.pipeline

    def broken(config, console):
        raise KeyError("a programming error")

    monkeypatch.setattr(annotator.pipeline, "run", broken)
    result = runner.invoke(app, ["run", "--manifest", "m.csv", "--out", str(tmp_path)])
    assert isinstance(result.exception, KeyError)


@pytest.mark.slow
def test_prompt_preview_prints_placeholders_and_schema(tmp_path, clips, tiny_omni):
    shutil.copy(clips["real_astronaut"], tmp_path / "a.mp4")
    (tmp_path / "m.csv").write_text("path,label\na.mp4,sad\n")
    result = runner.invoke(app, ["prompt", "preview", "--manifest", str(tmp_path / "m.csv"),
                                 "--clip", "a", "--model", str(tiny_omni), "--labels", "dfew",
                                 "--generation", "one-pass"],
                           env=WIDE)
    assert result.exit_code == 0, result.output
    assert "<|vision_bos|><|VIDEO|><|vision_eos|>" in result.output
    assert "describe_av@4" in result.output and '"reasoning"' in result.output
    assert "happy, sad, neutral, angry, surprise, disgust, fear" in result.output
    assert "video.face_frames_fraction" in result.output and "audio.f0_median_hz" in result.output
    two = runner.invoke(app, ["prompt", "preview", "--manifest", str(tmp_path / "m.csv"),
                              "--clip", "a", "--model", str(tiny_omni)],  # auto: two-phase
                           env=WIDE)
    assert two.exit_code == 0, two.output
    first, second = two.output.split("# phase 2")
    assert "Do not write JSON yet" in first and "<reply to think>" in second
    schema = json.loads(second.split("# JSON schema enforced while decoding")[1])
    assert "reasoning" not in schema["properties"]  # the thought is the reasoning
    missing = runner.invoke(app, ["prompt", "preview", "--manifest", str(tmp_path / "m.csv"),
                                  "--clip", "nope", "--model", str(tiny_omni)])
    assert missing.exit_code == 1 and "'nope' is not in" in missing.output


def test_audit_help_examples_run(tmp_path, monkeypatch):
    """The `audit --help` examples run as written in a folder holding a run."""
    from importlib import resources

    from tests.builders.synthetic_runs import write_synthetic_run

    monkeypatch.chdir(tmp_path)
    write_synthetic_run(Path("runs/demo"), 12)
    shipped = resources.files("annotator.audit").joinpath("rules.toml").read_text()
    Path("my_rules.toml").write_text(shipped)
    text = runner.invoke(app, ["audit", "--help"], env=WIDE).output
    examples = [shlex.split(x) for x in re.findall(r"vaemo-annotate (audit [^\n]+)", text)]
    assert len(examples) == 3
    for args in examples:
        result = runner.invoke(app, args, env=WIDE)
        assert result.exit_code == 0, result.output
        assert "report: runs/demo/audit/index.html" in result.output
    assert Path("runs/demo/clean.parquet").is_file()


@pytest.mark.parametrize("payload", ["{{ 'a'|center(10**9) }}",  # the sandbox's size check
                                     "{% set y = ['x'*1000000]*1000000 %}{{ y }}"])  # the trial's
def test_a_template_that_would_exhaust_the_machine_is_refused_in_one_line(tmp_path, clips,
                                                                          payload):
    shutil.copy(clips["real_astronaut"], tmp_path / "a.mp4")
    (tmp_path / "m.csv").write_text("path,label\na.mp4,sad\n")
    (tmp_path / "evil.j2").write_text(payload)
    common = ["--manifest", str(tmp_path / "m.csv"), "--template", str(tmp_path / "evil.j2")]
    for args in (["prompt", "preview", "--clip", "a"], ["run", "--out", str(tmp_path / "o"),
                                                        "--dry-run"]):
        result = runner.invoke(app, args + common, env=WIDE)
        assert result.exit_code == 1 and "refused" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1 and "evil.j2" in result.output
    assert not (tmp_path / "o" / "descriptions").exists()


def test_a_diverse_subset_is_planned_with_its_coverage(tmp_path, clips, tiny_omni):
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [f"{clips['tone_220' if i % 2 else 'tone_440']},c{i},neutral" for i in range(12)]
    (tmp_path / "m.csv").write_text("path,clip_id,label\n" + "\n".join(rows) + "\n")
    vectors = np.random.default_rng(0).standard_normal((12, 16)).astype(np.float32)
    pq.write_table(pa.table({"clip_id": [f"c{i}" for i in range(12)],
                             "features": list(vectors)}), tmp_path / "f.parquet")
    common = ["run", "--manifest", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o"),
              "--model", str(tiny_omni), "--engine", "fake", "--subset", "4", "--dry-run"]
    planned = runner.invoke(app, common + ["--select", "diverse", "--features",
                                           str(tmp_path / "f.parquet")], env=WIDE)
    assert planned.exit_code == 0, planned.output
    assert re.search(r"--select diverse: mean distance .*\(a random pick of 4", planned.output)
    alone = runner.invoke(app, common + ["--select", "diverse"], env=WIDE)
    assert alone.exit_code == 2 and "--features" in alone.output
    short = pa.table({"clip_id": ["c0"], "features": [vectors[0]]})
    pq.write_table(short, tmp_path / "short.parquet")
    missing = runner.invoke(app, common + ["--select", "diverse", "--features",
                                           str(tmp_path / "short.parquet")], env=WIDE)
    assert missing.exit_code == 1 and "no vector for 11 of the manifest's 12 clips" in \
        " ".join(missing.output.split())
