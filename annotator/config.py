"""`vaemo-annotate run` settings: one pydantic model, validated at construction.

Each field's docstring is its documentation and its `--help` text: the CLI is generated from
this model (see annotator/cli.py), so the two cannot disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from annotator.engine import Sampling
from annotator.subset import parse_subset


class RunConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True,
                              protected_namespaces=())

    manifest: Path
    """Clip manifest: .csv, .jsonl, .parquet or a `datasets` folder with a `path` column."""
    out: Path
    """Output folder: descriptions/*.parquet, subset.parquet, run.json, README.md."""
    subset: str = "all"
    """How many clips: a count (2500, 10k), a fraction (0.1) or 'all'; stratified by label
    and speaker, deterministic for a seed, stable when the manifest grows."""
    seed: int = 0
    """Seed for the subset ranking and the engine."""
    model: str | None = None
    """Model folder or hub id. Default: SmolLM2-135M-Instruct (shipped, CPU) without a GPU,
    Qwen/Qwen2.5-Omni-7B with one."""
    model_revision: str | None = None
    """Hub revision of --model (local folders are identified by a content hash)."""
    engine: Literal["vllm", "transformers"] = "vllm"
    """vllm (fast, batched) or transformers (reference implementation)."""
    template: str = "auto"
    """Prompt template: a shipped name, a path to a .j2 file, or 'auto' (describe_av for
    video/audio models, describe_text for text-only models)."""
    labels: str | None = None
    """Label set for the primary emotion: a shipped set (crema-d, ravdess, dfew, mafw,
    mer2023), a comma-separated list, or 'open' (open vocabulary). Default: the manifest's
    labels (open vocabulary when it has none)."""
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where the engine runs: auto picks gpu when the Ray cluster has GPUs."""
    ray_address: str | None = None
    """Ray cluster to join ('auto' for a running one); default starts Ray locally."""
    num_frames: int = Field(8, ge=2, le=64)
    """Frames sampled uniformly per clip (even: Qwen2.5-Omni pairs frames)."""
    max_duration_s: float = Field(30.0, gt=0)
    """Only the first seconds of a longer clip are decoded."""
    max_side: int = Field(448, ge=28)
    """Decoded frames are downscaled so the longer side is at most this many pixels."""
    min_pixels: int = Field(28 * 28 * 4, ge=28 * 28)
    """Per-frame pixel floor handed to the model's processor."""
    max_pixels: int = Field(28 * 28 * 64, ge=28 * 28)
    """Per-frame pixel cap handed to the model's processor (bounds visual tokens)."""
    temperature: float = Field(0.0, ge=0.0)
    """Sampling temperature (0: greedy, the default for annotation)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(2048, ge=16)
    """Output token budget per clip; a row that hits it is 'truncated'."""
    repetition_penalty: float = Field(1.0, gt=0.0)
    """Penalty on tokens already seen (1: none; >1 discourages repetition loops)."""
    generation: Literal["auto", "one-pass", "two-phase"] = "auto"
    """one-pass: one guided JSON answer, reasoning field first. two-phase: free chain of
    thought, then the JSON with the thought in context (the template must read `phase`).
    auto: two-phase when the template supports it (measured: as valid, fewer tokens, no
    repetition loops; see the README), else one-pass."""
    think_tokens: int = Field(512, ge=16)
    """Token budget of the free chain of thought in two-phase generation."""
    samples: int = Field(1, ge=1, le=16)
    """Descriptions per clip (needs --temperature > 0): the extra ones are kept in the
    `samples` column, and the audit measures how much they agree."""
    batch_size: int = Field(16, ge=1)
    """Clips per engine call (vLLM batches them continuously)."""
    retries: int = Field(1, ge=0)
    """Extra attempts for a row that fails in the engine or gives invalid/truncated JSON."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Engine weights/activations dtype. auto: float32 on CPU (2.5x faster than bf16 for
    SmolLM2 on CPUs without bf16 instructions, measured), the model's own on GPU."""
    max_model_len: int | None = None
    """Context length for the engine (default: the model's)."""
    cpu_kv_cache_gib: int = Field(2, ge=1)
    """KV cache reserved by vLLM on CPU (vLLM's own default reserves ~21 GiB)."""
    force: bool = False
    """Recompute every selected clip even when a row with the same cache key exists."""
    dry_run: bool = False
    """Print the plan (strata, template, model, tokens, cache hits) and start no engine."""

    @field_validator("subset")
    @classmethod
    def _subset(cls, value: str) -> str:
        parse_subset(value)
        return value

    @model_validator(mode="after")
    def _pixels(self) -> RunConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError("--min-pixels must not exceed --max-pixels")
        if self.num_frames % 2:
            raise ValueError("--num-frames must be even (video models pair frames)")
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("--samples > 1 needs --temperature > 0 (greedy samples are "
                             "identical)")
        return self

    def sampling(self, generation: str) -> Sampling:
        """Decoding settings, with `generation` resolved for the template ('auto' is not)."""
        return Sampling(temperature=self.temperature, top_p=self.top_p,
                        max_tokens=self.max_tokens, seed=self.seed,
                        repetition_penalty=self.repetition_penalty,
                        generation=generation, think_tokens=self.think_tokens,
                        samples=self.samples)

    def label_set(self, manifest_labels: list[str]) -> list[str] | None:
        if self.labels == "open":
            return None
        from prompts import label_sets

        if self.labels and self.labels.lower() in label_sets():
            return label_sets()[self.labels.lower()]
        if self.labels:
            return [x.strip() for x in self.labels.split(",") if x.strip()]
        return sorted(set(manifest_labels)) or None
