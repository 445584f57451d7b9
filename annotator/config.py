"""`vaemo-annotate run` settings: one pydantic model, validated at construction.

The run's own fields sit here; decoding, sampling and the engine are one model each
(annotator/settings.py), held as they are. The CLI is generated from this model, flattened
(`--num-frames` sets `media.num_frames`), and each field's docstring is its `--help` text, so
the two cannot disagree. A config file (`--config`, TOML, YAML or JSON, flat or nested like
`run.json`) gives the same fields; flags override it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from annotator.engines import ENGINES
from annotator.settings import (EndpointSettings, EngineSettings, MediaSettings,
                                SamplingSettings)
from annotator.core.subset import parse_subset


class RunConfig(BaseModel):
    """Everything `vaemo-annotate run` is told; `run.json` records it as it is."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True,
                              protected_namespaces=())

    manifest: Path
    """Clip manifest: .csv, .jsonl, .parquet or a `datasets` folder with a `path` column."""
    out: Path
    """Output folder: descriptions/*.parquet, subset.parquet, run.json, README.md."""
    subset: str = "all"
    """How many clips: a count (2500, 10k), a fraction (0.1) or 'all'; stratified by label
    and speaker, deterministic for a seed, stable when the manifest grows."""
    select: Literal["stratified", "diverse"] = "stratified"
    """How each label x speaker stratum's share is picked: 'stratified' by a hash of (seed,
    clip id); 'diverse' to cover the --features space (one clip per k-means cell), so that
    near-identical clips do not take the annotation budget."""
    features: Path | None = None
    """Per-clip feature vectors for --select diverse: Parquet with `clip_id` and `features`
    (a list of floats), e.g. your encoder's clip embeddings."""
    model: str | None = None
    """Model folder or hub id (with --endpoint: the served model's name). Default:
    SmolLM2-135M-Instruct (shipped, CPU) without a GPU, Qwen/Qwen2.5-Omni-7B with one."""
    model_revision: str | None = None
    """Hub revision of --model (local folders are identified by a content hash); for a
    served model, the version you vouch for (it is in the cache key; nothing can hash it)."""
    template: str = "auto"
    """Prompt template: a shipped name, a path to a .j2 file, or 'auto' (describe_av for
    video/audio models; describe_then_fuse for text-only models: on SmolLM2 its labels
    follow the measured face where describe_text's were one label for every clip)."""
    labels: str | None = None
    """Label set for the primary emotion: a shipped set (crema-d, ravdess, dfew, mafw,
    mer2023), a comma-separated list, or 'open' (open vocabulary). Default: the manifest's
    labels (open vocabulary when it has none)."""
    label_hint: bool = False
    """Show each clip's dataset label in its first turn as a hint, as MERR, EMER and
    MER-Caption condition their descriptions; the row records it (`label_hint`). The audit
    never counts hinted rows in label agreement (it would be circular) and reports how often
    they contradict their hint."""
    retries: int = Field(1, ge=0)
    """Extra attempts for a row that fails in the engine or gives invalid/truncated JSON."""
    force: bool = False
    """Recompute every selected clip even when a row with the same cache key exists."""
    dry_run: bool = False
    """Print the plan (strata, template, model, tokens, cache hits) and start no engine."""
    media: MediaSettings = MediaSettings()
    """How clips are decoded."""
    sampling: SamplingSettings = SamplingSettings()
    """How the engine decodes text."""
    compute: EngineSettings = EngineSettings()
    """Which engine runs where."""
    remote: EndpointSettings = EndpointSettings()
    """How a served model is reached (--engine openai)."""

    @field_validator("subset")
    @classmethod
    def _subset(cls, value: str) -> str:
        parse_subset(value)
        return value

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_keys(cls, data):
        """Accept flat keys (`num_frames = 8` in a config file) beside nested tables."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for part, model in (("media", MediaSettings), ("sampling", SamplingSettings),
                            ("compute", EngineSettings), ("remote", EndpointSettings)):
            flat = {k: data.pop(k) for k in list(data) if k in model.model_fields}
            if flat:
                nested = data.get(part) or {}
                if isinstance(nested, BaseModel):
                    nested = nested.model_dump()
                data[part] = {**nested, **flat}
        return data

    @model_validator(mode="after")
    def _endpoint_engine(self) -> RunConfig:
        served, endpoint = ENGINES[self.compute.engine].served, self.remote.endpoint
        if served and not endpoint:
            raise ValueError(f"--engine {self.compute.engine} needs --endpoint URL (e.g. "
                             "http://localhost:8000/v1) and --model, the served model's name")
        if endpoint and not served:
            names = ", ".join(n for n, e in ENGINES.items() if e.served)
            raise ValueError(f"--endpoint is read by --engine {names} only")
        return self

    @model_validator(mode="after")
    def _diverse_needs_features(self) -> RunConfig:
        if (self.select == "diverse") != (self.features is not None):
            raise ValueError("--select diverse picks by --features FILE.parquet (a `clip_id` "
                             "and a `features` vector per clip): give both, or neither")
        return self

    def label_set(self, manifest_labels: list[str]) -> list[str] | None:
        if self.labels == "open":
            return None
        from annotator.core.emotions import label_sets

        if self.labels and self.labels.lower() in label_sets():
            return label_sets()[self.labels.lower()]
        if self.labels:
            return [x.strip() for x in self.labels.split(",") if x.strip()]
        return sorted(set(manifest_labels)) or None


class AuditConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    out: Path
    """A run's output folder (it holds descriptions/ and run.json)."""
    report: Path | None = None
    """Where to write the HTML report (default OUT/audit/index.html)."""
    clean: Path | None = None
    """Also write the clean set here: the ok rows no excluding flag hit, ready for injection."""
    keep: Literal["uncertain", "trusted"] = "uncertain"
    """Which rows the clean set keeps: 'uncertain' (every row no excluding flag hit) or only
    'trusted' ones (no warning either, not truncated, consistent samples, confident)."""
    rules: Path | None = None
    """A rules file (TOML) to use instead of the shipped annotator/audit/rules.toml."""
    manifest: Path | None = None
    """Take dataset labels from this manifest (default: the run's, if it still exists)."""
    near_duplicate: float = Field(0.8, gt=0.0, le=1.0)
    """Estimated Jaccard similarity of word 3-shingles above which two descriptions are
    near-duplicates (1.0: exact duplicates only)."""
    report_rows: int = Field(5000, ge=1)
    """Most rows listed in the report's table: every flagged row first, then the others."""
