"""The endpoint engine against a real local HTTP server that misbehaves on purpose (429 with
Retry-After, 500, a hang past the read timeout, a reset connection, malformed JSON, a
schema-violating answer, a server that stays down): real media, real Ray, real Parquet."""

import csv
import json

import pytest
from typer.testing import CliRunner

from annotator.cli import app
from annotator.core.layout import RunFolder
from annotator.core.schema import description_model
from annotator.core.store import Store
from tests.builders.fault_server import PERSISTENT, TRANSIENT, FaultServer
from tests.conftest import write_manifest

LABELS = "anger,happy,neutral,sad"
KEY = "sk-vaemo-test-6f1d2c9e0b7a"
runner = CliRunner()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, clips):
    """Every clip of the shared set, and four more over the tones that differ in their
    dataset (which the text prompt shows): ten distinct prompts reach the server."""
    rows = [{"path": str(path), "clip_id": name, "label": LABELS.split(",")[i % 4],
             "dataset": ""} for i, (name, path) in enumerate(clips.items())]
    rows += [{"path": str(clips["tone_220"]), "clip_id": f"d{i}", "label": "neutral",
              "dataset": f"set{i}"} for i in range(4)]
    return write_manifest(tmp_path_factory.mktemp("endpoint") / "m.csv", rows)


def annotate(server, manifest, out, *args):
    return runner.invoke(app, [
        "run", "--manifest", str(manifest), "--out", str(out), "--engine", "openai",
        "--endpoint", server.url, "--model", server.model, "--api-key-env", "VAEMO_TEST_KEY",
        "--labels", LABELS, "--generation", "one-pass", "--read-timeout-s", "2",
        "--http-retries", "2", "--retries", "1", *args])


def test_faults_are_retried_then_typed_and_nothing_is_lost_or_leaked(
        corpus, tmp_path, monkeypatch):
    monkeypatch.setenv("VAEMO_TEST_KEY", KEY)
    out = tmp_path / "out"
    plan = (*TRANSIENT, *PERSISTENT, None, None)  # ten distinct prompts, one each
    with FaultServer(plan) as server:
        result = annotate(server, corpus, out)
        assert result.exit_code == 0, result.output
        assert sorted(server.dealt.values(), key=str) == sorted(plan, key=str)
        assert server.authorization == {f"Bearer {KEY}"}
        table = Store(out).read().to_pylist()
        rows = {r["clip_id"]: r for r in table}
        assert len(rows) == len(table) == 12, "one row per clip"
        kinds = sorted(str(r["error_kind"]) for r in rows.values())
        assert kinds == ["None"] * 8 + ["engine", "invalid_output", "media", "media"]
        model = description_model(LABELS.split(","))
        for row in rows.values():
            if row["error_kind"] == "invalid_output":  # violate: every attempt, then typed
                assert row["attempts"] == 2 and row["sent"]["enforced"] == "json_schema"
            elif row["error_kind"] == "engine":  # down: HTTP retries, attempts, then typed
                assert "HTTP 503" in row["error"] and "gave up after 3 tries" in row["error"]
            elif row["status"] == "ok":  # a transient fault was retried, or none happened
                model.model_validate({"reasoning": row["reasoning"], **row["description"]})
                fault = server.dealt[server.answered[row["raw_output"]]]
                assert fault in (*TRANSIENT, None)
                sent = row["sent"]
                if fault == "truncate":  # a new attempt with twice the budget
                    assert row["attempts"] == 2 and sent["http_tries"] == 1
                else:  # the same request again
                    assert sent["http_tries"] == (1 if fault is None else 2), fault
                assert sent["enforced"] == "json_schema" and sent["frames"] == 0
                assert sent["request_bytes"] > 1000
                assert row["num_input_tokens"] == 100 and row["num_output_tokens"] > 0
        assert KEY not in result.output
        for path in out.rglob("*"):
            assert not path.is_file() or KEY.encode() not in path.read_bytes(), path
        recorded = json.loads((out / "run.json").read_text())
        assert recorded["model"]["revision"] == "unpinned"

        sent_before = sum(server.requests.values())
        again = annotate(server, corpus, out)
        assert again.exit_code == 0, again.output
        assert json.loads((out / "run.json").read_text())["engine"]["started"] is False
        assert sum(server.requests.values()) == sent_before, "a cached re-run sends nothing"


def test_two_phase_sends_the_thought_back_and_samples_come_back(corpus, tmp_path):
    with FaultServer((None,)) as server:
        result = annotate(server, corpus, tmp_path, "--generation", "two-phase", "--samples",
                          "2", "--temperature", "0.5", "--subset", "3",
                          "--template", "describe_text")  # one thought, then the JSON
        assert result.exit_code == 0, result.output
        answers = [b for b in server.bodies if b.get("response_format")]
    rows = [r for r in Store(tmp_path).read().to_pylist() if r["status"] == "ok"]
    assert rows
    for row in rows:
        assert row["reasoning"].startswith("A short free thought")
        assert len(row["samples"]) == 1 and row["samples"][0]["primary_emotion"]
        turns = [b["messages"] for b in answers if any(
            m["role"] == "assistant" and m["content"][0]["text"] == row["reasoning"]
            if isinstance(m["content"], list) else m["content"] == row["reasoning"]
            for m in b["messages"])]
        assert len(turns) == 2  # the answer and its extra sample, each after the thought
        assert turns[0][-1]["role"] == "user" and all(b["seed"] == 0 for b in answers)


def test_an_endpoint_that_cannot_serve_the_run_fails_at_start_and_changes_nothing(
        corpus, tmp_path):
    with FaultServer((None,)) as server:
        result = runner.invoke(app, [
            "run", "--manifest", str(corpus), "--out", str(tmp_path), "--engine", "openai",
            "--endpoint", server.url, "--model", "no-such-model", "--labels", LABELS])
    assert result.exit_code == 1
    assert "does not serve 'no-such-model'" in result.output and "served-test" in result.output
    assert "nothing stored was changed" in result.output
    assert not Store(tmp_path).read(["clip_id"]).num_rows
    assert not RunFolder(tmp_path).subset.exists()  # refused before a clip was planned
    unreachable = runner.invoke(app, [
        "run", "--manifest", str(corpus), "--out", str(tmp_path), "--engine", "openai",
        "--endpoint", "http://127.0.0.1:9/v1", "--model", "m", "--labels", LABELS])
    assert unreachable.exit_code == 1 and "cannot reach" in unreachable.output


def test_the_endpoint_settings_are_checked_before_anything_runs(corpus, tmp_path):
    no_endpoint = runner.invoke(app, ["run", "--manifest", str(corpus), "--out",
                                      str(tmp_path), "--engine", "openai"])
    assert no_endpoint.exit_code != 0 and "--endpoint URL" in no_endpoint.output
    stray = runner.invoke(app, ["run", "--manifest", str(corpus), "--out", str(tmp_path),
                                "--engine", "fake", "--endpoint", "http://x/v1"])
    assert stray.exit_code != 0 and "--engine openai" in stray.output


def test_batch_files_round_trip_to_the_rows_of_a_live_run(corpus, clips, tmp_path):
    """Export, answer the file as a provider's batch job would (the same server's answers),
    import: the rows equal a live run's; a file that does not answer the export one to one
    is refused, its custom_ids named, and nothing is stored."""
    live, batch = tmp_path / "live", tmp_path / "batch"
    with FaultServer((None,)) as server:
        done = annotate(server, corpus, live)
        assert done.exit_code == 0, done.output
        exported = runner.invoke(app, [
            "export-requests", "--manifest", str(corpus), "--out", str(batch), "--engine",
            "openai", "--endpoint", server.url, "--model", server.model, "--labels", LABELS,
            "--generation", "one-pass"])
        assert exported.exit_code == 0, exported.output
        lines = [json.loads(x) for x in (batch / "batch" / "requests.jsonl").open()]
        assert all(x["url"] == "/v1/chat/completions" and x["method"] == "POST" for x in lines)
        results = [{"id": f"r{i}", "custom_id": x["custom_id"], "error": None,
                    "response": {"status_code": 200, "body": server.answer(x["body"])}}
                   for i, x in enumerate(lines)]
    stored_before = Store(batch).read().to_pylist()  # the media failures, typed at export
    assert sorted(r["clip_id"] for r in stored_before) == ["corrupt", "missing"]

    def write(name, items):
        path = tmp_path / name
        path.write_text("".join(json.dumps(x) + "\n" for x in items))
        return str(path)

    foreign = {**results[0], "custom_id": "not-exported"}
    for bad, named in ((results[1:], "missing 1"), (results + results[:1], "duplicated 1"),
                       (results + [foreign], "foreign 1 (not-exported)")):
        refused = runner.invoke(app, ["import-results", str(batch), write("bad.jsonl", bad)])
        assert refused.exit_code == 1 and named in refused.output, refused.output
        assert Store(batch).read().to_pylist() == stored_before
    imported = runner.invoke(app, ["import-results", str(batch), write("out.jsonl", results)])
    assert imported.exit_code == 0, imported.output
    got = {r["clip_id"]: r for r in Store(batch).read().to_pylist()}
    want = {r["clip_id"]: r for r in Store(live).read().to_pylist()}
    assert got.keys() == want.keys()
    same = ("status", "error_kind", "description", "reasoning", "raw_output", "cache_key",
            "prompt_sha256", "num_input_tokens", "num_output_tokens", "model", "engine")
    for clip, row in got.items():
        assert {k: row[k] for k in same} == {k: want[clip][k] for k in same}, clip
        if row["sent"]:
            assert row["sent"] == {**want[clip]["sent"], "http_tries": None}
    again = annotate_with_server_down(corpus, batch)
    assert again["engine"]["started"] is False and again["counts"]["cached"] == 12
    # a clip that needs the engine: the endpoint's refusal, after the cache was looked at
    with corpus.open() as f:
        grown = [*csv.DictReader(f), {"path": str(clips["tone_440"]), "clip_id": "new",
                                     "label": "sad", "dataset": "set9"}]
    before = Store(batch).read().to_pylist()
    result = runner.invoke(app, [
        "run", "--manifest", str(write_manifest(tmp_path / "grown.csv", grown)), "--out",
        str(batch), "--engine", "openai", "--endpoint", "http://127.0.0.1:9/v1", "--model",
        "served-test", "--labels", LABELS, "--generation", "one-pass"])
    assert result.exit_code == 1 and "cannot reach" in result.output, result.output
    assert "nothing stored was changed" in result.output
    assert Store(batch).read().to_pylist() == before


def annotate_with_server_down(manifest, out) -> dict:
    """A live `run` over an imported folder: every row is a cache hit, nothing is sent."""
    result = runner.invoke(app, [
        "run", "--manifest", str(manifest), "--out", str(out), "--engine", "openai",
        "--endpoint", "http://127.0.0.1:9/v1", "--model", "served-test", "--labels", LABELS,
        "--generation", "one-pass"])
    assert result.exit_code == 0, result.output
    return json.loads((out / "run.json").read_text())
