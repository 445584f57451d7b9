"""Nothing lost or doubled under concurrency, damage and crashes (fake engine: the model is
the only thing not real here). The kill -9 loops live in benchmarks/chaos.py; a short one
runs in the slow tier below."""

import json
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from annotator.cli import app
from annotator.core.store import Store
from tests.conftest import write_manifest

runner = CliRunner()
N = 6


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, clips):
    root = tmp_path_factory.mktemp("reliable")
    return write_manifest(root / "m.csv", [
        {"path": str(clips["tone_220" if i % 2 else "tone_440"]), "clip_id": f"c{i}",
         "label": "neutral"} for i in range(N)])


def annotate(manifest, out, model, *extra, code=0):
    result = runner.invoke(app, ["run", "--manifest", str(manifest), "--out", str(out),
                                 "--model", str(model), "--engine", "fake", "--labels",
                                 "anger,neutral", "--generation", "one-pass", *extra])
    assert result.exit_code == code, result.output
    return result.output


def one_row_per_clip(out) -> dict:
    table = Store(out).read().to_pylist()
    by_id = {r["clip_id"]: r for r in table}
    assert len(by_id) == len(table) == N
    return by_id


@pytest.fixture(scope="module")
def finished(tmp_path_factory, manifest, tiny_omni):
    """A finished run in three files (a file per 2-clip batch, so that damage to one file
    leaves the others' rows)."""
    out = tmp_path_factory.mktemp("finished") / "out"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("annotator.core.store.OPEN_FILE_ROWS", 2)
        annotate(manifest, out, tiny_omni, "--batch-size", "2")
    return out


def copy_of(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run, out)
    return out


def test_a_second_writer_is_refused_with_the_holder_named(finished, manifest, tiny_omni,
                                                           tmp_path):
    out = copy_of(finished, tmp_path)
    before = one_row_per_clip(out)
    with Store(out).lock():
        said = annotate(manifest, out, tiny_omni, "--force", code=1)
        assert "is being written by vaemo pid" in said and "another --out" in said
        retry = runner.invoke(app, ["retry-failed", str(out)])
        assert retry.exit_code in (0, 1)  # nothing failed, or refused: never a second writer
    assert one_row_per_clip(out) == before


def test_damaged_shards_are_named_quarantined_and_recomputed(finished, manifest, tiny_omni,
                                                             tmp_path):
    out = copy_of(finished, tmp_path)
    files = Store(out).files()
    lost = set(pq.read_table(files[0])["clip_id"].to_pylist())
    files[0].write_bytes(files[0].read_bytes()[:200])  # truncated
    zero = out / "descriptions" / "part-zero.parquet"
    zero.write_bytes(b"")  # zero bytes
    (out / "descriptions" / "notes.txt").write_text("not a shard")
    (out / "descriptions" / ".part-x.parquet.abc123.tmp").write_bytes(b"half a commit")
    mimic = out / "descriptions" / "part-mimic.parquet"  # our column names, other types
    pq.write_table(pa.table({"clip_id": [1, 2], "status": [True, False], "cache_key": [3, 4],
                             "created_at": ["x", "y"]}), mimic)
    audited = runner.invoke(app, ["audit", str(out)])
    assert audited.exit_code == 0, audited.output
    assert f"unreadable descriptions/{files[0].name}" in audited.output
    metrics = json.loads((out / "audit" / "metrics.json").read_text())
    assert set(metrics["store"]["unreadable"]) == {files[0].name, zero.name, mimic.name}
    assert "its clip_id is int64" in metrics["store"]["unreadable"][mimic.name]
    checked = runner.invoke(app, ["verify", str(out)])
    assert checked.exit_code == 1 and "needs a re-run" in checked.output
    said = annotate(manifest, out, tiny_omni)
    for name in (files[0].name, zero.name, "notes.txt", mimic.name):
        assert f"quarantined descriptions/{name}" in " ".join(said.split())
        assert (out / "quarantine" / name).exists()
        assert (out / "quarantine" / f"{name}.reason.txt").read_text().strip()
    run = json.loads((out / "run.json").read_text())
    assert run["counts"]["computed_now"] == len(lost)  # only the lost clips
    one_row_per_clip(out)
    assert not list((out / "descriptions").glob(".*"))
    healthy = runner.invoke(app, ["verify", str(out)])
    assert healthy.exit_code == 0 and "healthy" in healthy.output


def test_a_crash_between_commit_and_cleanup_shows_the_newer_row_once(finished, tmp_path):
    """Simulates a kill after a new row committed but before its old row was dropped."""
    out = copy_of(finished, tmp_path)
    store = Store(out)
    old = store.read()
    newer = old.slice(0, 2).to_pylist()
    for row in newer:
        row["raw_output"], row["created_at"] = "newer", row["created_at"].replace(year=2099)
    import pyarrow as pa

    from annotator.core.files import write_parquet

    from annotator.core.rows import ROW_SCHEMA

    write_parquet(pa.Table.from_pylist(newer, schema=ROW_SCHEMA),
                         out / "descriptions" / "part-crash-00000000.parquet")
    rows = one_row_per_clip(out)
    assert [rows[r["clip_id"]]["raw_output"] for r in newer] == ["newer", "newer"]
    assert "2 superseded rows" in runner.invoke(app, ["verify", str(out)]).output
    with store.lock():
        store.repair()  # what the next run does first: the pair is compacted on disk
    assert len(pq.read_table(out / "descriptions").to_pylist()) == N


def test_same_shape_weights_swapped_are_never_served_from_cache(finished, manifest, tiny_omni,
                                                                tmp_path):
    from safetensors.torch import load_file, save_file

    model = tmp_path / "copy" / tiny_omni.name  # same name and content: the same model
    shutil.copytree(tiny_omni, model)
    out = copy_of(finished, tmp_path)
    said = annotate(manifest, out, model, "--dry-run")
    assert f"{N} selected, {N} cached" in " ".join(said.split())
    weights = next(model.glob("*.safetensors"))
    state = load_file(weights)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name] + 1e-3  # fine-tuned: same names, shapes and file size
    save_file(state, weights, metadata={"format": "pt"})
    said = annotate(manifest, out, model, "--dry-run")
    assert f"{N} selected, 0 cached" in " ".join(said.split())


def test_truncation_retries_grow_the_budget_and_retry_failed_takes_a_new_one(
        manifest, tiny_omni, tmp_path):
    grown = tmp_path / "grown"  # answers need 227-274 tokens: 150 is cut, the retry's 300 fits
    annotate(manifest, grown, tiny_omni, "--max-tokens", "150", "--retries", "1")
    assert all(r["status"] == "ok" and r["attempts"] == 2
               for r in one_row_per_clip(grown).values())
    cut = tmp_path / "cut"
    annotate(manifest, cut, tiny_omni, "--max-tokens", "64", "--retries", "0")
    assert {r["error_kind"] for r in one_row_per_clip(cut).values()} == {"truncated"}
    result = runner.invoke(app, ["retry-failed", str(cut), "--kind", "truncated",
                                 "--max-tokens", "512"])
    assert result.exit_code == 0, result.output
    rows = one_row_per_clip(cut)
    assert all(r["status"] == "ok" for r in rows.values())
    assert {json.loads(r["sampling"])["max_tokens"] for r in rows.values()} == {512}


def test_an_engine_that_cannot_start_fails_with_a_message_and_keeps_every_row(
        finished, manifest, tiny_omni, tmp_path):
    out = copy_of(finished, tmp_path)
    before = one_row_per_clip(out)
    said = " ".join(annotate(manifest, out, tiny_omni, "--faults", "broken=1", "--force",
                             code=1).split())
    assert "engine failed before its first row" in said and "the weights cannot be loaded" \
        in said and "nothing stored was changed" in said
    assert one_row_per_clip(out) == before
    assert not (out / ".engine-stats").exists()  # nothing of the failed run is left behind


@pytest.mark.slow
def test_an_engine_dying_on_every_clip_fails_with_a_message_and_keeps_every_row(
        finished, manifest, tiny_omni, tmp_path):
    out = copy_of(finished, tmp_path)
    before = one_row_per_clip(out)
    said = annotate(manifest, out, tiny_omni, "--faults", "crash=1", "--subset", "2", code=1)
    assert "engine produced no row in 3 tries" in " ".join(said.split())
    assert one_row_per_clip(out) == before


@pytest.mark.slow
def test_three_kills_at_random_moments_lose_and_double_nothing(tmp_path, tiny_omni):
    from tests.builders.chaos import run_chaos

    result = run_chaos(tmp_path, tiny_omni, kills=3, clips=8, seed=1, inline=True)
    assert result["lost"] == result["doubled"] == result["temp_files"] == 0
    assert result["rows_differing_from_uninterrupted"] == 0 and result["rows_on_disk"] == 8


@pytest.mark.slow
def test_two_concurrent_runs_one_refuses_and_no_row_doubles(manifest, tiny_omni, tmp_path):
    import subprocess
    import sys
    import time

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "annotator.cli", "run", "--manifest", str(manifest), "--out",
           str(out), "--model", str(tiny_omni), "--engine", "fake", "--faults", "latency=0.5",
           "--batch-size", "1", "--generation", "one-pass"]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out / ".lock").is_file():
        time.sleep(0.05)
    time.sleep(0.5)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 1
    assert f"is being written by vaemo pid {first.pid}" in " ".join(second.stderr.split())
    assert first.wait(timeout=300) == 0, first.stderr.read()[-2000:]
    one_row_per_clip(out)


@pytest.mark.slow
def test_an_engine_dying_on_some_clips_is_restarted_and_only_those_fail(manifest, tiny_omni,
                                                                        tmp_path):
    from annotator.engines.fake import FakeEngine

    # the fake's crash draw is a hash: at rate 0.1, c5 kills the engine every time
    draw = FakeEngine.__new__(FakeEngine)._unit
    poison = {f"c{i}" for i in range(N) if draw(f"c{i}:1", "crash") < 0.1}
    assert poison == {"c5"}
    out = tmp_path / "out"
    said = annotate(manifest, out, tiny_omni, "--faults", "crash=0.1", "--retries", "0")
    rows = one_row_per_clip(out)
    run = json.loads((out / "run.json").read_text())
    assert run["engine"]["retry_rounds"] == 2  # two more rounds for the clips lost with it
    died = {c for c, r in rows.items() if r["status"] == "failed"}
    assert died == poison
    assert all(rows[c]["error_kind"] == "engine" and "died on this clip 3 times" in rows[c]["error"]
               for c in died)
    assert "done 6/6 clips: ok 5, failed 1 (engine 1)" in " ".join(said.split())


def test_a_full_disk_at_commit_is_one_line_and_every_committed_row_stays(
        manifest, tiny_omni, tmp_path, monkeypatch):
    import errno

    from annotator.core import store

    written = []
    real = store.write_parquet

    def fills_up(table, path):  # the disk fills after the first batch
        if written:
            raise OSError(errno.ENOSPC, "No space left on device")
        written.append(path)
        return real(table, path)

    monkeypatch.setattr(store, "write_parquet", fills_up)
    out = tmp_path / "out"
    said = annotate(manifest, out, tiny_omni, "--batch-size", "2", code=1)
    errors = [x for x in said.splitlines() if x.startswith("error")]
    assert len(errors) == 1 and "Traceback" not in said, said
    assert "No space left on device" in said and "another --out" in said
    assert not (out / ".engine-stats").exists()  # the failed run leaves no folder behind
    monkeypatch.undo()
    kept = Store(out).read().to_pylist()
    assert len(kept) == 2 and all(r["status"] == "ok" for r in kept)
    annotate(manifest, out, tiny_omni, "--batch-size", "2")  # space again: it finishes
    one_row_per_clip(out)
