"""The stages declare what they read and write (StageSpec); the declarations chain, and what
the stages really produce matches them."""

import dataclasses

import pytest

from annotator.config import RunConfig
from annotator.resolve import resolve
from annotator.stages import generate, plan, prepare
from annotator.core.rows import ROW_SCHEMA
from tests.conftest import write_manifest


def test_declarations_chain_from_plan_to_rows():
    assert plan.STAGE.writes == tuple(plan.PLAN_SCHEMA.names)
    assert set(prepare.STAGE.reads) <= set(plan.STAGE.writes)
    assert set(generate.STAGE.reads) <= set(plan.STAGE.writes) | set(prepare.STAGE.writes)
    assert generate.STAGE.writes == tuple(ROW_SCHEMA.names)
    assert {"batch_size", "num_cpus"} <= set(prepare.STAGE.ray)


def test_plan_and_prepare_produce_what_they_declare(tmp_path, clips, tiny_omni):
    manifest = write_manifest(tmp_path / "m.csv", [
        {"path": str(clips["tone_220"]), "label": "sad"},
        {"path": str(clips["missing"]), "label": "sad"}])
    resolved = resolve(RunConfig(manifest=manifest, out=tmp_path, model=str(tiny_omni)), "cpu")
    planned = plan.plan_table(resolved.chosen, resolved.ctx)
    assert planned.column_names == list(plan.STAGE.writes)
    prepared = prepare.prepare_batch(planned, ctx=resolved.ctx)
    assert set(prepare.STAGE.writes) <= set(prepared.column_names)
    rows = prepared.to_pylist()
    assert rows[0]["error_kind"] is None and rows[0]["frames"] and rows[0]["later_prompts"]
    assert rows[1]["error_kind"] == "media" and rows[1]["frames"] is None


def test_prepare_blocks_divide_the_engine_batch():
    """Each engine task gets exactly one batch: its prepare blocks never straddle two."""
    from annotator.pipeline import prepare_block

    assert [prepare_block(b, 4) for b in (16, 8, 6, 5, 2, 1, 3)] == [4, 4, 3, 1, 2, 1, 3]


def test_planning_in_ray_tasks_equals_planning_in_the_driver(tmp_path, clips, tiny_omni,
                                                             monkeypatch):
    """Large runs and clusters plan in Ray tasks: the same plan, row for row and in order,
    as the driver's (an extra manifest column, a missing file, clips without a stream)."""
    from annotator import pipeline

    manifest = write_manifest(tmp_path / "m.csv", [
        {"clip_id": f"c{i:02d}", "path": str(clips[name]), "label": "sad", "fold": str(i % 2)}
        for i, name in enumerate(["tone_220", "missing", "silent_video", "audio_only"] * 3)])
    resolved = resolve(RunConfig(manifest=manifest, out=tmp_path, model=str(tiny_omni)), "cpu")
    in_driver = plan.plan_table(resolved.chosen, resolved.ctx)
    monkeypatch.setattr(pipeline, "PLAN_ON_RAY_AT", 1)
    monkeypatch.setattr(pipeline, "PLAN_ON_RAY_CPUS", 1)
    three_blocks = dataclasses.replace(plan.STAGE, ray={"batch_size": 5, "num_cpus": 1})
    monkeypatch.setattr(plan, "STAGE", three_blocks)
    on_ray = pipeline.plan_clips(resolved)
    assert on_ray.to_pylist() == in_driver.to_pylist()
    assert '"fold"' in on_ray["context_json"][0].as_py()


def test_planning_goes_to_ray_on_a_cluster_or_for_many_clips_on_many_cores(tmp_path,
                                                                          monkeypatch):
    from annotator import pipeline

    local = RunConfig(manifest=tmp_path / "m.csv", out=tmp_path)
    cluster = local.model_copy(update={"compute": local.compute.model_copy(
        update={"ray_address": "10.0.0.1:6379"})})
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 2)
    assert not pipeline.plan_on_ray(local, 100_000)  # threads match Ray on two cores
    assert pipeline.plan_on_ray(cluster, 10)  # each node reads its share
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 32)
    assert pipeline.plan_on_ray(local, 2000) and not pipeline.plan_on_ray(local, 1999)


def test_nodes_plan_without_the_model_and_a_failed_plan_task_names_the_fix(
        tmp_path, clips, tiny_omni, monkeypatch):
    """Ray plan tasks get the driver's chat frames, so a node without the model folder still
    plans; a plan task that fails (here: its media library breaks) fails the run with one
    line that says what every node needs."""
    import shutil

    import pytest

    from annotator import pipeline
    from annotator.chat import chat_frames
    from annotator.core.errors import ConfigError

    model = shutil.copytree(tiny_omni, tmp_path / "model")
    manifest = write_manifest(tmp_path / "m.csv", [{"path": str(clips["tone_220"])}])
    resolved = resolve(RunConfig(manifest=manifest, out=tmp_path / "out", model=str(model)),
                       "cpu")
    chat_frames(resolved.spec)  # the driver's, made before the run plans
    shutil.rmtree(model)  # what a node without the folder sees
    monkeypatch.setattr(pipeline, "PLAN_ON_RAY_AT", 1)
    monkeypatch.setattr(pipeline, "PLAN_ON_RAY_CPUS", 1)
    assert pipeline.plan_clips(resolved)["error"].to_pylist() == [None]

    def broken_plan(batch, *, ctx):  # sent to the task by value
        raise OSError("libavformat.so: cannot open shared object file")

    monkeypatch.setattr(plan, "STAGE", dataclasses.replace(plan.STAGE, fn=broken_plan))
    with pytest.raises(ConfigError, match="every node needs the vaemo package and the media"):
        pipeline.plan_clips(resolved)


def test_chained_stages_must_find_their_inputs():
    """The driver's chain refuses a stage whose inputs no earlier stage writes, before any
    work (a stage wired out of order would otherwise fail as a KeyError inside Ray)."""
    from annotator.stages import chain

    start = list(plan.PLAN_SCHEMA.names)
    assert chain(start, prepare.STAGE, generate.STAGE) == (prepare.STAGE, generate.STAGE)
    with pytest.raises(RuntimeError, match="'generate' reads .*'frames'"):
        chain(start, generate.STAGE, prepare.STAGE)


def test_ray_prepares_at_idle_priority_and_leaves_its_task_thread_alone(tmp_path, clips,
                                                                       tiny_omni):
    """In a Ray task the cues are measured on the worker's SCHED_IDLE thread, so an engine
    never waits for a core behind them; the thread Ray runs tasks on (and may later run an
    engine actor on) keeps its normal policy, at niceness 0 on a local Ray (Ray's own
    default is 15)."""
    import os

    import ray

    from annotator.cluster import ray_init

    manifest = write_manifest(tmp_path / "m.csv", [
        {"path": str(clips["tone_220"]), "label": "sad"}])
    config = RunConfig(manifest=manifest, out=tmp_path, model=str(tiny_omni))
    resolved = resolve(config, "cpu")
    planned = plan.plan_table(resolved.chosen, resolved.ctx)
    ray_init(config.compute.ray_address)

    @ray.remote
    def prepare_in_a_task(table):
        measure, policies = prepare.cues.measure, []

        def measure_and_note(*args):
            policies.append(os.sched_getscheduler(0))
            return measure(*args)

        prepare.cues.measure = measure_and_note
        try:
            prepared = prepare.prepare_batch(table, ctx=resolved.ctx)
        finally:
            prepare.cues.measure = measure
        return (prepared["error_kind"].to_pylist(), policies, os.sched_getscheduler(0),
                os.getpriority(os.PRIO_PROCESS, 0))

    errors, measured_at, task_thread, niceness = ray.get(prepare_in_a_task.remote(planned))
    assert errors == [None] and measured_at == [os.SCHED_IDLE]
    assert (task_thread, niceness) == (os.SCHED_OTHER, 0)


def test_where_idle_priority_is_refused_clips_are_still_prepared(monkeypatch):
    """A platform without SCHED_IDLE, or a seccomp profile that refuses it, prepares at
    normal priority instead of failing every prepare task."""
    import os

    def refuse(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(prepare.os, "sched_setscheduler", refuse)
    fresh = prepare.idle_thread.__wrapped__()  # not the process's cached thread
    assert fresh.submit(os.sched_getscheduler, 0).result() == os.SCHED_OTHER
    fresh.shutdown()


def test_every_row_writer_builds_exactly_the_row_schema(tmp_path, monkeypatch):
    """Rows are made through make_row: a column added to ROW_SCHEMA and forgotten by a writer
    (the engine stage's build_row, the synthetic runs) fails instead of going missing."""
    import pyarrow as pa

    from annotator.core import rows
    from tests.builders.synthetic_runs import write_synthetic_run

    with pytest.raises(ValueError, match=r"missing \['label'\], unknown \['labl'\]"):
        rows.make_row(**{("labl" if n == "label" else n): None for n in ROW_SCHEMA.names})
    write_synthetic_run(tmp_path / "ok", 3)  # builds through make_row
    grown = ROW_SCHEMA.append(pa.field("mood", pa.string()))
    monkeypatch.setattr(rows, "ROW_SCHEMA", grown)
    with pytest.raises(ValueError, match=r"missing \['mood'\]"):
        write_synthetic_run(tmp_path / "grown", 3)
