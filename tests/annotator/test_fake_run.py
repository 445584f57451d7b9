"""The whole annotate path on the fake engine, fast: real media, real Ray, real Parquet, the
real plan/prepare/generate/rows stages and store; only the model is fake. Typed faults,
retries, two-phase with samples, `--config run.json`, and kill -9 then resume."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from annotator.cli import app
from annotator.core.schema import answer_model, description_model
from annotator.core.store import Store
from tests.conftest import write_manifest

LABELS = "anger,happy,neutral,sad"
FAULTS = "error=0.25,invalid=0.25,truncate=0.25"
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, clips):
    """The shared clips (real faces and speech, tones, one-stream, corrupt, missing) and
    eight more ids over the tones, for more fault draws."""
    rows = [{"path": str(path), "clip_id": name, "label": LABELS.split(",")[i % 4]}
            for i, (name, path) in enumerate(clips.items())]
    rows += [{"path": str(clips["tone_220" if i % 2 else "tone_440"]), "clip_id": f"t{i}",
              "label": "neutral"} for i in range(8)]
    return write_manifest(tmp_path_factory.mktemp("fake") / "m.csv", rows)


def annotate(*args: str) -> None:
    result = runner.invoke(app, ["run", "--engine", "fake", "--labels", LABELS, *args])
    assert result.exit_code == 0, result.output


def rows(out) -> dict[str, dict]:
    table = Store(out).read().to_pylist()
    by_id = {r["clip_id"]: r for r in table}
    assert len(by_id) == len(table), "one row per clip"
    return by_id


@pytest.fixture(scope="module")
def faulty(tmp_path_factory, corpus, tiny_omni):
    out = tmp_path_factory.mktemp("faulty")
    annotate("--manifest", str(corpus), "--out", str(out), "--model", str(tiny_omni),
             "--faults", FAULTS, "--retries", "0", "--generation", "one-pass")
    return out


def test_faults_become_typed_rows_and_good_rows_validate(faulty):
    table = rows(faulty)
    assert len(table) == 16
    assert table["missing"]["error_kind"] == "media" and table["corrupt"]["error_kind"] == "media"
    kinds = {r["error_kind"] for r in table.values()}
    assert {"engine", "invalid_output", "truncated", None} <= kinds
    assert kinds <= {"media", "engine", "invalid_output", "truncated", None}
    model = description_model(LABELS.split(","))
    for row in table.values():
        assert row["attempts"] == 1 and row["engine"] == "fake"
        if row["status"] == "ok":
            model.model_validate({"reasoning": row["reasoning"], **row["description"]})
        elif row["error_kind"] == "truncated":
            assert row["finish_reason"] == "length" and "budget" in row["error"]
    assert table["tone_220"]["cues"]["audio"]["f0_median_hz"] == pytest.approx(220, rel=0.03)
    assert table["silent_video"]["media_note"] == "no audio stream"


def test_a_stream_that_never_reaches_the_model_is_counted_flagged_and_warned(
        faulty, corpus, tiny_omni, tmp_path):
    """The rows count each stream's placeholder tokens in what the engine was given; an
    engine that drops every clip's audio (the fake's drop_audio fault, as vLLM #47788 did
    with Qwen-Omni) leaves audio_tokens at 0 where the file has audio: the run warns once
    and the audit flags exactly those clips."""
    fed = rows(faulty)
    for row in fed.values():
        if row["error_kind"] != "media":
            assert (row["video_tokens"] > 0) == row["has_video"], row["clip_id"]
            assert (row["audio_tokens"] > 0) == row["has_audio"], row["clip_id"]
    result = runner.invoke(app, ["run", "--engine", "fake", "--labels", LABELS, "--manifest",
                                 str(corpus), "--out", str(tmp_path), "--model",
                                 str(tiny_omni), "--faults", "drop_audio=1",
                                 "--generation", "one-pass"])
    assert result.exit_code == 0, result.output
    dropped = rows(tmp_path)
    with_audio = {c for c, r in dropped.items() if r["has_audio"] and r["error_kind"] is None}
    assert with_audio and all(dropped[c]["audio_tokens"] == 0 for c in with_audio)
    assert all(r["video_tokens"] > 0 for r in dropped.values() if r["has_video"]
               and r["error_kind"] is None)
    warning = f"{len(with_audio)} clips have audio that reached the model as no audio tokens"
    assert result.output.count(warning) == 1, result.output
    audited = runner.invoke(app, ["audit", str(tmp_path)])
    assert audited.exit_code == 0, audited.output
    import pyarrow.parquet as pq

    flags = pq.read_table(tmp_path / "audit" / "flags.parquet").to_pylist()
    assert {f["clip_id"] for f in flags if "media_not_received" in f["flags"]} == with_audio


def test_retries_recover_engine_side_failures(faulty, corpus, tiny_omni, tmp_path):
    annotate("--manifest", str(corpus), "--out", str(tmp_path), "--model", str(tiny_omni),
             "--faults", FAULTS, "--retries", "4", "--generation", "one-pass")
    before, after = rows(faulty), rows(tmp_path)
    ok = lambda table: sum(r["status"] == "ok" for r in table.values())  # noqa: E731
    assert ok(after) > ok(before)
    recovered = [r for r in after.values() if r["status"] == "ok" and r["attempts"] > 1]
    assert recovered and all(r["attempts"] <= 5 for r in after.values())
    assert {c for c, r in after.items() if r["error_kind"] == "media"} == {"missing", "corrupt"}


def test_two_phase_samples_and_a_rerun_from_run_json(corpus, tiny_omni, tmp_path):
    annotate("--manifest", str(corpus), "--out", str(tmp_path), "--model", str(tiny_omni),
             "--generation", "two-phase", "--samples", "3", "--temperature", "0.5",
             "--subset", "6")
    table = rows(tmp_path)
    answer = answer_model(description_model(LABELS.split(",")))
    done = [r for r in table.values() if r["status"] == "ok"]
    assert done
    for row in done:
        assert row["reasoning"].startswith(f"Thinking about clip {row['clip_id']}")
        assert "reasoning" not in json.loads(row["raw_output"])
        answer.model_validate_json(row["raw_output"])
        assert len(row["samples"]) == 2 and all(s["primary_emotion"] for s in row["samples"])
        assert json.loads(row["sampling"])["generation"] == "two-phase"
    recorded = json.loads((tmp_path / "run.json").read_text())
    assert recorded["config"]["sampling"]["samples"] == 3
    files = {f.name: f.stat().st_mtime_ns for f in Store(tmp_path).files()}
    again = runner.invoke(app, ["run", "--config", str(tmp_path / "run.json")])
    assert again.exit_code == 0, again.output
    rerun = json.loads((tmp_path / "run.json").read_text())
    assert rerun["engine"]["started"] is False
    assert rerun["counts"]["cached"] == rerun["counts"]["selected"] == len(table)
    assert {f.name: f.stat().st_mtime_ns for f in Store(tmp_path).files()} == files
    assert rerun["config"] == recorded["config"]
    # as typed, in a fresh process: a fully cached re-run loads neither torch (nor vLLM,
    # transformers) nor the audit package, which it never uses
    probe = ("import json, sys\nfrom annotator.cli import app\n"
             f"app(['run', '--config', {str(tmp_path / 'run.json')!r}], standalone_mode=False)\n"
             "heavy = ('torch', 'vllm', 'transformers', 'annotator.audit', 'duckdb')\n"
             "print(json.dumps(sorted(m for m in sys.modules if m.startswith(heavy))))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert "cached" in done.stderr




def test_a_chain_of_phases_shows_each_turn_its_own_stream_and_keeps_every_reply(
        corpus, tiny_omni, tmp_path):
    """describe_then_fuse: face (frames only), voice (soundtrack only), fuse, then the JSON;
    each turn's prompt adds only its own stream's tokens, and every reply is kept."""
    annotate("--manifest", str(corpus), "--out", str(tmp_path), "--model", str(tiny_omni),
             "--template", "describe_then_fuse", "--subset", "8")
    table = rows(tmp_path)
    done = [r for r in table.values() if r["status"] == "ok"]
    assert done
    for row in done:
        turns = row["turns"]
        assert [t["phase"] for t in turns] == ["face", "voice", "fuse", "answer"]
        assert row["generation_mode"] == "4 turns: face, voice, fuse, then JSON"
        face, voice, fuse, answer = turns
        assert face["video_tokens"] == (128 if row["has_video"] else 0)  # 8 frames x 16
        assert face["audio_tokens"] == 0 and voice["video_tokens"] == 0
        assert (voice["audio_tokens"] > 0) == row["has_audio"]
        assert fuse["video_tokens"] == fuse["audio_tokens"] == 0 == answer["audio_tokens"]
        assert row["video_tokens"] == face["video_tokens"]
        assert row["audio_tokens"] == voice["audio_tokens"]
        for name, turn in zip(("face", "voice", "fuse"), turns):
            assert f"{name}: Thinking about clip {row['clip_id']}" in row["reasoning"]
            assert turn["text"].startswith("Thinking about clip") and turn["output_tokens"]
        assert answer["text"] is None
        assert row["num_output_tokens"] == sum(t["output_tokens"] for t in turns)


def test_label_hints_are_shown_recorded_and_kept_out_of_agreement(corpus, tiny_omni, tmp_path):
    """--label-hint: the label is in the first turn, on the row and in its cache key; the
    audit leaves hinted rows out of agreement and counts those that contradict their hint."""
    from annotator.stages.prompt import HINT

    shown = runner.invoke(app, ["prompt", "preview", "--manifest", str(corpus), "--clip",
                                "tone_220", "--model", str(tiny_omni), "--label-hint"])
    assert shown.exit_code == 0, shown.output
    first_turn = shown.output.split("# phase 2")[0]
    assert HINT.split('"')[0] in first_turn and "Take it as a hint" in first_turn
    plain, hinted = tmp_path / "plain", tmp_path / "hinted"
    for out, extra in ((plain, []), (hinted, ["--label-hint"])):
        annotate("--manifest", str(corpus), "--out", str(out), "--model", str(tiny_omni),
                 "--subset", "4", *extra)
    before, after = rows(plain), rows(hinted)
    done = [r for r in after.values() if r["status"] == "ok"]
    assert done
    for row in done:
        assert row["label_hint"] == row["label"] and before[row["clip_id"]]["label_hint"] is None
        assert row["cache_key"] != before[row["clip_id"]]["cache_key"]
    audited = runner.invoke(app, ["audit", str(hinted)])
    assert audited.exit_code == 0, audited.output
    agreement = json.loads((hinted / "audit" / "metrics.json").read_text())["agreement"]
    assert agreement["n"] == 0  # every labelled row was hinted
    contradicted = sum(r["description"]["primary_emotion"] != r["label"] for r in done)
    assert agreement["hinted"] == {**agreement["hinted"], "rows": len(done),
                                   "contradicted": contradicted}
    assert "label hints (--label-hint)" in (hinted / "audit" / "index.html").read_text()


def test_the_gate_sends_back_exactly_the_ungrounded_answers_and_keeps_every_round(
        corpus, tiny_omni, tmp_path):
    """--refine 2 on answers that claim a smile and shouting whatever the clip shows (the
    fake's `ungrounded` fault, drawn per clip and round; a refinement turn is its scripted
    correction unless drawn again): the clips whose first answer a gate rule fires on, and
    only they, get refinement turns, at most two, every round kept; the others' rows are
    the same as without the gate; the audit excludes fewer rows."""
    import pyarrow.parquet as pq

    from annotator.audit.rules import load_rules
    from prompts.refine import REFINE_INTRO

    gated_rules = {r.name for r in load_rules() if r.exclude and r.refine}
    runs = {}
    for refine in ("0", "2"):
        out = tmp_path / f"refine{refine}"
        annotate("--manifest", str(corpus), "--out", str(out), "--model", str(tiny_omni),
                 "--faults", "ungrounded=0.6", "--refine", refine)
        audited = runner.invoke(app, ["audit", str(out)])
        assert audited.exit_code == 0, audited.output
        flags = {r["clip_id"]: set(r["flags"]) for r in pq.read_table(
            out / "audit" / "flags.parquet").to_pylist()}
        metrics = json.loads((out / "audit" / "metrics.json").read_text())
        runs[refine] = (rows(out), flags, metrics)
    (plain, plain_flags, plain_metrics), (gated, gated_flags, metrics) = runs["0"], runs["2"]
    expected = {c for c, r in plain.items()
                if r["status"] == "ok" and plain_flags[c] & gated_rules}
    sent_back = {c for c, r in gated.items() if r["refinements"]}
    assert expected and sent_back == expected
    for clip_id, row in gated.items():
        if clip_id not in sent_back:
            assert row["description"] == plain[clip_id]["description"]
            assert row["refinements"] is None
            continue
        rounds = row["refinements"]
        assert 1 <= len(rounds) <= 2 and [r["round"] for r in rounds] == [1, 2][:len(rounds)]
        assert set(rounds[0]["fired"]) == plain_flags[clip_id] & gated_rules
        for r in rounds:
            assert set(r["fired"]) <= gated_rules and r["told"].startswith(REFINE_INTRO)
            assert r["valid"] and r["changed"]
        if len(rounds) < 2:  # the gate passed the kept answer, and so does the audit
            assert not gated_flags[clip_id] & gated_rules
            assert row["description"]["face"] != plain[clip_id]["description"]["face"]
        phases = [t["phase"] for t in row["turns"]]
        assert phases[-len(rounds) - 1:] == ["answer"] + [f"refine{n}" for n in
                                                          range(1, len(rounds) + 1)]
    assert any(len(gated[c]["refinements"]) == 2 for c in sent_back)  # the cap reached
    assert metrics["refinement"]["rows"] == len(sent_back)
    assert metrics["refinement"]["rounds"] == sum(len(gated[c]["refinements"])
                                                  for c in sent_back)
    assert metrics["clean"]["excluded_ok_rows"] < plain_metrics["clean"]["excluded_ok_rows"]
    assert plain_metrics["refinement"]["rows"] == 0
