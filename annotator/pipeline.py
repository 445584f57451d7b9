"""`vaemo-annotate run` end to end: resolve -> resume -> plan -> Ray stages -> store.

The driver resolves the run once (annotator/resolve.py), finds what is already stored
(annotator/resume.py), plans the rest, and runs the stages that their declarations chain
(annotator/stages: prepare as Ray tasks, generate in one engine actor per engine) on the Ray
cluster (annotator/cluster.py). It reads the engine stage's output batches as they stream out
of Ray Data and commits each one atomically, so progress is durable from the first batch and
a re-run (or a resume after kill -9) computes only what is missing.
"""

from __future__ import annotations

import gc
import os
import shutil
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console

from annotator import progress
from annotator.cluster import (cluster_device, engine_resources, quiet_ray_data, ray_init,
                               ray_shutdown, root_cause)
from annotator.config import RunConfig
from annotator.core.errors import ConfigError
from annotator.core.interrupt import Interrupted, check, interruptible, polled
from annotator.core.layout import RunFolder
from annotator.core.rows import ErrorKind
from annotator.core.store import Store
from annotator.engines import ENGINES
from annotator.engines.factory import check_engine
from annotator.quiet import native_stderr_filtered
from annotator.resolve import Resolved, commit_meta, local_device, resolve
from annotator.resume import known_hits, split_cached, write_plan_index
from annotator.summary import engine_timeline, write_summary
from annotator.stages import StageSpec, chain
from annotator.stages import generate as generate_stage
from annotator.stages import plan as plan_stage
from annotator.stages import prepare as prepare_stage
from annotator.stages.context import with_chat
from annotator.stages.plan import PLAN_SCHEMA, plan_table
from annotator.stages.rows import failed_rows

PLAN_ON_RAY_AT = 2000
"""On one machine, clips to plan from which Ray tasks plan them (given PLAN_ON_RAY_CPUS):
fewer are planned by the driver's threads in less time than Ray's workers take to start."""
PLAN_ON_RAY_CPUS = 8
"""On one machine, cores from which Ray tasks plan: a plan costs about 1.2 ms of CPU per
clip, mostly under the GIL, and the driver's threads reach 1.4 cores' worth (measured on 2
cores, where Ray planning is no faster: 0.88 vs 0.84 ms/clip at 10k clips, hashes cached)."""
ENGINE_RESTARTS = 2
"""Further tries of the clips whose engine died, before they are stored as failures."""


def run(config: RunConfig, console: Console | None = None, only: set[str] | None = None
        ) -> dict:
    """`vaemo-annotate run`: annotate the selected clips of `config.manifest` into
    `config.out`, a batch committed at a time; returns the summary also written to run.json.

    A re-run computes only the clips whose cache key has no row yet (a fully cached re-run
    starts neither Ray nor an engine); with `only` (retry-failed), exactly those clips.
    Recomputed clips keep their old rows readable until the new ones commit.
    `config.dry_run` prints the plan and stops. One writer per folder: a second run on the
    same OUT fails at once."""
    console = console or Console(stderr=True, soft_wrap=True)
    store = Store(config.out)
    if config.dry_run:
        return _run(config, console, store, only)
    seen: dict = {}
    # signals are noted before the lock file exists: one that landed between the two (the
    # default handler then) ended the run with 130 and no word of what it kept (a clean-clone
    # flake, reproduced under load)
    with interruptible(), store.lock():
        try:
            quarantined = store.repair()
            for name, reason in quarantined.items():
                console.print(f"[yellow]quarantined[/yellow] descriptions/{name}: {reason} "
                              f"(moved to {RunFolder(config.out).quarantine}; its clips are "
                              "recomputed)")
            return _run(config, console, store, only, quarantined, seen)
        except Interrupted as stop:  # committed batches stay; the one in flight is dropped
            ray_shutdown()
            stop.summary = _interrupted_summary(seen.get("tracker"))
            raise


def _interrupted_summary(tracker) -> str:
    if tracker is None:
        return "interrupted before any clip reached the engine; re-run to finish"
    kept = tracker.done + tracker.failed
    return (f"interrupted: {kept} rows committed, {tracker.total - kept} clips left; re-run "
            "to finish")


def _run(config: RunConfig, console: Console, store: Store, only: set[str] | None,
         quarantined: dict | None = None, seen: dict | None = None) -> dict:
    started = time.perf_counter()
    if ENGINES[config.compute.engine].served:  # the model runs on the server, not here
        device = "cpu"
    elif config.compute.ray_address:  # a cluster: what it has decides the device
        ray_init(config.compute.ray_address)
        device = cluster_device(config.compute)[0]
    else:  # local: decide without starting Ray, so a fully cached re-run never starts it
        device = local_device(config.compute.device)
    resolved = resolve(config, device)
    check()
    for note in resolved.notes:
        console.print(f"[yellow]note[/yellow] {note}")
    ctx = resolved.ctx
    quick = not (config.dry_run or config.force or only is not None)
    hits, prints = known_hits(resolved, store) if quick else ({}, {})
    refusal = None if len(hits) == len(resolved.chosen) or config.dry_run else _refusal(resolved)
    if refusal is not None and not store.files():  # no stored row can spare it the engine
        raise refusal
    plan = plan_clips(resolved, resolved.chosen.filter(pc.invert(pc.is_in(
        resolved.chosen["clip_id"], pa.array(sorted(hits), pa.string()))))
        if hits else None)
    timings = {"plan_s": round(time.perf_counter() - started, 2), "planned": len(plan)}
    check()
    cached, pending = split_cached(plan, store, config.force, only)
    if config.dry_run:
        progress.print_plan(console, resolved, plan, cached, pending)
        return {"dry_run": True, "selected": len(plan), "cached": len(cached)}
    if quick:
        write_plan_index(resolved, plan, hits, prints)
    cached_count = len(cached) + len(hits)

    pq.write_table(resolved.chosen.select(["clip_id", "stratum", "label", "speaker", "path"]),
                   RunFolder(config.out).subset)
    meta = commit_meta(ctx.run_id)
    early = pending.filter(pc.is_valid(pending["error_kind"]))
    to_engine = pending.filter(pc.is_null(pending["error_kind"]))
    tracker = progress.Tracker(console, total=len(pending), cached=cached_count,
                               prices=config.remote.prices)
    if seen is not None:
        seen["tracker"] = tracker
    early_rows = failed_rows(early, ctx)
    engine_info: dict = {"started": False}
    if not len(to_engine) and len(early):
        store.commit(early_rows, ctx.run_id, meta)
        tracker.add(failed=len(early))
    if len(to_engine):
        if refusal is not None:
            raise refusal
        ray_started = time.perf_counter()
        ray_init(config.compute.ray_address)
        timings["ray_init_s"] = round(time.perf_counter() - ray_started, 2)
        check()
        actors = engines_now(resolved)
        engine_info = {"started": True, "device": ctx.device, "actors": actors,
                       "dtype": ctx.options.dtype, "cpu_threads": resolved.engine_threads}
        engine_started = time.perf_counter()
        shutil.rmtree(RunFolder(config.out).engine_stats, ignore_errors=True)  # a killed run's
        try:
            with native_stderr_filtered(), tracker:
                _generate(resolved, to_engine, actors, store, meta, tracker, engine_info,
                          lambda: timings.setdefault(
                              "first_batch_s", round(time.perf_counter() - engine_started, 2)),
                          early_rows)
        finally:  # read and removed, also when the run failed: no folder is left behind
            engine_info["timeline"] = engine_timeline(RunFolder(config.out).engine_stats)
    engine_info["quarantined"] = quarantined or {}
    summary = write_summary(resolved, store, tracker, cached_count, started,
                      {**engine_info, **timings})
    progress.print_summary(console, summary)
    return summary


def _refusal(resolved: Resolved) -> ConfigError | None:
    """Why the engine cannot serve this run at all (a served model's endpoint unreachable,
    refusing the key, not serving the model), asked before any clip is planned, so a bad
    --endpoint or --model fails in a second rather than after hashing the corpus and starting
    Ray; None when it can, or on a cluster, where the engine's node asks (it may reach what
    the driver cannot)."""
    config = resolved.config
    if config.compute.ray_address:
        return None
    try:
        check_engine(config.compute.engine, resolved.spec, resolved.ctx.options,
                     config.remote.api_key())
    except ConfigError as err:
        return err
    return None


def engines_now(resolved: Resolved) -> int:
    """Engine actors the Ray cluster can hold now on the run's device (decided once, in
    resolve: the cache keys were made for it); never waits for a resource."""
    compute = resolved.config.compute.model_copy(update={"device": resolved.device})
    return cluster_device(compute, prepare_stage.STAGE.ray["num_cpus"])[1]


def plan_on_ray(config: RunConfig, clips: int) -> bool:
    """Plan in Ray tasks: always on a cluster (each node reads its share of the corpus), on
    one machine only for many clips and many cores."""
    return bool(config.compute.ray_address) or (
        clips >= PLAN_ON_RAY_AT and (os.cpu_count() or 1) >= PLAN_ON_RAY_CPUS)


def plan_clips(resolved: Resolved, rows: pa.Table | None = None) -> pa.Table:
    """Plan the selected clips (or `rows` of them), in input order: in Ray tasks on the
    nodes (`plan_on_ray`), else in the driver's threads."""
    rows = resolved.chosen if rows is None else rows
    if not len(rows):
        return PLAN_SCHEMA.empty_table()
    if plan_on_ray(resolved.config, len(rows)):
        ray_init(resolved.config.compute.ray_address)
        return _plan_on_ray(resolved, rows)
    return plan_table(rows, resolved.ctx)


def _plan_on_ray(resolved: Resolved, rows: pa.Table) -> pa.Table:
    """The plan stage as Ray tasks: blocks of clips spread over the cluster's CPUs, each
    task's plan streamed back as it ends, put back in input order."""
    import ray.data
    import ray.exceptions

    quiet_ray_data()
    # every clip must be planned: a failed task fails the plan (the engine stage, in the same
    # process, lets a died engine's batch be skipped, and the context is process-wide)
    ray.data.DataContext.get_current().max_errored_blocks = 0
    stages = chain(rows.column_names, plan_stage.STAGE)
    # every manifest column goes: a clip's extra columns are part of its prompt context
    ds = ray.data.from_arrow(rows).repartition(
        target_num_rows_per_block=stages[0].ray["batch_size"])
    ds = _map(ds, stages[0], with_chat(resolved.ctx))
    try:
        plan = pa.concat_tables([PLAN_SCHEMA.empty_table(), *polled(ds.iter_batches(
            batch_format="pyarrow", batch_size=None))])
    except ray.exceptions.RayError as err:  # e.g. a node without the package or the media
        raise ConfigError(
            f"planning failed in a Ray task ({root_cause(err)}); every node needs the vaemo "
            "package and the media at the paths the manifest gives; nothing stored was "
            "changed") from err
    if len(plan) != len(rows):  # never a run that silently drops clips
        raise RuntimeError(f"Ray planned {len(plan)} of {len(rows)} clips")
    order = pc.index_in(plan["clip_id"], rows["clip_id"])
    return plan.take(pc.sort_indices(order))


def _map(ds, stage: StageSpec, ctx, **overrides):
    """`ds` with `stage` applied as its declaration says: a Ray task given the run's context,
    or an actor built with it; `overrides` are the driver's own `map_batches` arguments."""
    args = {**stage.ray, **overrides}
    if stage.actor:
        return ds.map_batches(stage.fn, batch_format="pyarrow",
                              fn_constructor_kwargs={"ctx": ctx,
                                                     **args.pop("fn_constructor_kwargs", {})},
                              **args)
    return ds.map_batches(stage.fn, batch_format="pyarrow", fn_kwargs={"ctx": ctx}, **args)


def _generate(resolved: Resolved, to_engine: pa.Table, actors: int, store: Store, meta: dict,
              tracker, engine_info: dict, first_batch, early: pa.Table) -> None:
    """Stream the engine stage's batches into the store; survive an engine that dies.

    A batch whose engine died is skipped by the stream (Ray restarts the actor), and its
    clips are tried again, one per batch (the last time one at a time in each engine) so that
    only the culprit fails, ENGINE_RESTARTS more times; what still does not come back is
    stored as `engine` failures. An engine that never produced a row in this run is a
    configuration error (a broken model, a wrong device): reported with nothing stored
    changed, which is why the `early` rows (clips that failed before reaching the engine)
    are committed with its first batch."""
    import ray.exceptions

    remaining, committed_any, last = to_engine, False, "the engine process died"
    for attempt in range(ENGINE_RESTARTS + 1):
        engine_info["retry_rounds"] = attempt
        if attempt:
            # Ray Data lets go of a finished stream's engines by dropping its references,
            # and some sit in reference cycles: the engine Ray restarted after the death
            # held its CPU until Python's collector ran, and the next round could not
            # place its engine and a prepare task beside it (40-80 s of nothing on 2 cores)
            gc.collect()
        try:
            # polled: a signal is seen within a fraction of a second, also while the engine
            # starts or works on a batch; it stops the run between two commits
            for batch in polled(_engine_stream(resolved, remaining, actors, attempt)):
                first_batch()
                if not committed_any and len(early):
                    store.commit(early, resolved.ctx.run_id, meta)
                    tracker.add_rows(early)
                store.commit(batch, resolved.ctx.run_id, meta)
                tracker.add_rows(batch)
                committed_any = True
                done = pa.array(batch["clip_id"].to_pylist(), pa.string())
                remaining = remaining.filter(pc.invert(pc.is_in(remaining["clip_id"], done)))
        except (ray.exceptions.RayError, RuntimeError) as err:
            lines = [x for x in str(err).strip().splitlines() if x.strip()]
            last = f"{type(err).__name__}: {lines[-1][:200] if lines else ''}"
            if not committed_any:
                raise ConfigError(
                    f"the {resolved.ctx.engine} engine failed before its first row ({last}); "
                    f"nothing stored was changed. {_check(resolved)}, then run again"
                    ) from err
        if not len(remaining):
            return
    if not committed_any:
        raise ConfigError(f"the {resolved.ctx.engine} engine produced no row in "
                          f"{ENGINE_RESTARTS + 1} tries ({last}); nothing stored was changed. "
                          f"{_check(resolved)}, then run again")
    message = (f"the engine died on this clip {ENGINE_RESTARTS + 1} times ({last}); "
               "`vaemo-annotate retry-failed OUT --kind engine` runs it again")
    store.commit(failed_rows(remaining, resolved.ctx, ErrorKind.ENGINE, message),
                 resolved.ctx.run_id, meta)
    tracker.add(failed=len(remaining))


def _check(resolved: Resolved) -> str:
    """What to check when an engine never produced a row."""
    if resolved.spec.served:
        return f"Check --endpoint {resolved.spec.path} and --model {resolved.spec.name}"
    return f"Check --model {resolved.spec.path} (and --device, --dtype)"


def prepare_block(batch_size: int, most: int) -> int:
    """Clips per prepare block: the largest divisor of the engine batch up to `most`."""
    return max(d for d in range(1, min(most, batch_size) + 1) if batch_size % d == 0)


def _engine_stream(resolved: Resolved, plan: pa.Table, actors: int, attempt: int = 0):
    """The engine stage's output batches (a batch whose engine died is skipped, and its clips
    are missing from the output). A retry (`attempt` > 0) gives each engine batch one clip;
    the last one also gives each engine one clip at a time: a clip in flight beside the one
    that kills the engine dies with it, and only the culprit may fail the last try."""
    import ray.data

    quiet_ray_data()
    data = ray.data.DataContext.get_current()
    # engines start while the first clips are prepared (a constructor that raises still
    # fails the run at once: Ray Data tolerates no actor death at start-up by default)
    data.wait_for_min_actors_s = 0
    data.max_errored_blocks = -1  # a batch whose engine died: skipped, the driver retries it
    ctx = with_chat(resolved.ctx)
    prepare, generate = chain(plan.column_names, prepare_stage.STAGE, generate_stage.STAGE)
    compute, device = ctx.compute, ctx.device
    batch_size = 1 if attempt else compute.batch_size
    in_flight = (compute.in_flight(device) if not attempt else
                 compute.sequences(device) if attempt < ENGINE_RESTARTS else 1)
    # blocks of a few clips, dividing the engine batch: prepare tasks spread over the free
    # CPUs and the first clips reach the engine early, while every engine task still gets
    # exactly one batch (blocks that straddled two batches would run them one after the other)
    block = prepare_block(batch_size, prepare.ray["batch_size"])
    ds = ray.data.from_arrow(plan).repartition(target_num_rows_per_block=block, strict=True)
    ds = _map(ds, prepare, ctx, batch_size=block)
    ds = _map(
        # with the chat frames: a refinement turn's prompt is made in the engine actor (from
        # the tokenizer there, its first took 5.5 s of the engine thread)
        ds, generate, ctx, batch_size=batch_size,
        # several batches in each engine at once (threads of one actor; one engine thread)
        compute=ray.data.ActorPoolStrategy(
            size=actors, max_tasks_in_flight_per_actor=in_flight,
            max_concurrent_calls_per_actor=in_flight, enable_true_multi_threading=True),
        **engine_resources(compute, device),
        # a dead engine is restarted by Ray, but its batch is not retried there: the driver
        # retries those clips a bounded number of times, one per batch
        max_restarts=-1, max_task_retries=0,
        # each thread's OpenMP team from the start (Ray sets 1, the actor's CPU; vLLM's CPU
        # attention fails when a thread's team and torch's threads differ: "1 vs. 2")
        **({"runtime_env": {"env_vars": {"OMP_NUM_THREADS": str(resolved.engine_threads)}}}
           if resolved.engine_threads else {}),
        fn_constructor_kwargs=dict(
            torch_threads=resolved.engine_threads,
            stats_dir=str(RunFolder(resolved.config.out).engine_stats),
            # in memory only: the engine's node may not have the driver's environment
            api_key=resolved.config.remote.api_key() if resolved.spec.served else ""))
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def preview(config: RunConfig, clip_id: str) -> tuple[dict, dict]:
    """(the planned clip with its rendered prompt, the JSON schema) for one clip."""
    resolved = resolve(config.model_copy(update={"subset": "all"}))
    rows = resolved.chosen.filter(pc.equal(resolved.chosen["clip_id"], clip_id))
    if not len(rows):
        raise ConfigError(f"clip {clip_id!r} is not in {config.manifest}")
    plan = plan_table(rows, resolved.ctx)
    planned = prepare_stage.prepare_batch(plan, ctx=resolved.ctx).to_pylist()[0]  # + cues
    if planned["error"]:
        raise ConfigError(f"clip {clip_id!r}: {planned['error']}")
    planned.update(template=resolved.ctx.template.tag, model=resolved.spec.name,
                   phases=resolved.ctx.phase_names)
    return planned, resolved.ctx.options.schema
