"""`vaemo-inject` settings: pydantic models validated at construction; the CLI is generated
from them, so each field's docstring is its `--help` text."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

TEXT_SOURCES = ("description", "summary", "reasoning", "fields", "sampled")


class TrainConfig(BaseModel):
    """Everything `vaemo-inject train` is told; OUT/checkpoints record it."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True,
                              protected_namespaces=())

    descriptions: Path
    """A `vaemo-annotate run` folder, or a Parquet file of its rows (e.g. the audit's clean
    set)."""
    encoder: Path
    """The VA encoder: a transformers folder (video, audio, or video/ + audio/ subfolders), a
    .safetensors state dict (with --factory) or a torch.export .pt2 program."""
    out: Path
    """Output folder: checkpoints/, metrics.jsonl, cache/, and the exported encoder."""
    factory: str | None = None
    """module:function that builds the nn.Module of a bare state dict."""
    trust_remote_code: bool = False
    """Allow code from the encoder to run: a transformers folder's own modelling code, or the
    pickled payloads of a .pt2 (refused otherwise). Only for files you trust."""
    text_encoder: str = "all-MiniLM-L6-v2"
    """Text encoder: all-MiniLM-L6-v2 (shipped offline) or a sentence-transformers /
    transformers folder."""
    text: Literal[TEXT_SOURCES] = "description"
    """Which text is embedded: description (face, body, voice, cross-modal and summary),
    summary, reasoning, fields (face, body, voice each on its own, averaged), or sampled
    (one of description/summary/reasoning at random per step, as open_clip samples among
    caption sources)."""
    label_prompts: str = ("a person who feels {label}.|someone showing {label}.|"
                          "a face and a voice that express {label}.")
    """|-separated templates for the label texts; each label's embedding is the renormalised
    mean over the templates."""
    dual_path: Literal["fused", "per_branch"] = "fused"
    """fused: one clip embedding (the branches' mean); per_branch: visual<->text and
    audio<->text losses for an encoder with two branches."""
    mode: Literal["heads", "blocks", "lora"] = "heads"
    """heads: train the projection heads on cached frozen features (fast); blocks: also
    fine-tune the last --train-blocks blocks of each transformers branch; lora: also train
    LoRA adapters (peft) on every branch's attention, merged into the weights at export.
    blocks and lora decode the clips every step."""
    train_blocks: int = Field(1, ge=1)
    """How many of the last transformer blocks per branch train in --mode blocks."""
    encoder_lr: float = Field(1e-4, gt=0)
    """Learning rate of the encoder's trained weights (--mode blocks or lora)."""
    lora_rank: int = Field(8, ge=1)
    """--mode lora: adapter rank."""
    lora_alpha: float = Field(16.0, gt=0)
    """--mode lora: adapter scaling (alpha / rank)."""
    anchor_weight: float = Field(0.0, ge=0)
    """--mode blocks/lora: weight of the pull toward the original features (relative squared
    distance), so the encoder does not forget."""
    interpolate: float = Field(1.0, ge=0, le=1)
    """--mode blocks/lora: export alpha * tuned + (1 - alpha) * original weights (1: as
    tuned; WiSE-FT's weight-space ensemble)."""
    clip_seconds: float = Field(4.0, gt=0)
    """--mode blocks/lora: audio is cropped or padded to this length so a batch stacks."""
    workers: int = Field(2, ge=0)
    """Decoding worker processes (PyAV and the encoder's preprocessing) for feature
    extraction and --mode blocks/lora training; 0 decodes in the main process."""
    feature_batch: int = Field(32, ge=1)
    """Clips per forward pass when extracting features."""
    exclude_flagged: bool = True
    """Leave out rows the audit excluded (OUT/audit/flags.parquet), when the run has one."""
    dim: int = Field(256, ge=8)
    """Size of the shared embedding space."""
    hidden: int = Field(512, ge=0)
    """Hidden size of the projection MLPs (0: linear projections)."""
    description_weight: float = Field(1.0, ge=0)
    """Weight of path 1, clip <-> its description."""
    label_weight: float = Field(1.0, ge=0)
    """Weight of path 2, clip <-> its label text (supervised: same label, same positive)."""
    near_copy: float = Field(1.0, gt=0, le=1)
    """Path 1: another clip's description whose text embedding (the text encoder's own) has
    cosine similarity at least this with a clip's own description is not a negative for it;
    1 (default) spares exact copies only, lower spares near copies too (docs/inject.md)."""
    label_source: Literal["auto", "dataset", "description"] = "auto"
    """Where path 2 takes each clip's label: the dataset's (the manifest's `label`), the
    description's primary emotion, or auto: the dataset's where there is one, else the
    description's (an unlabelled corpus still gets both paths). Evaluation always uses the
    dataset's labels."""
    min_label_confidence: float = Field(0.5, ge=0, le=1)
    """A description's primary emotion is a label for path 2 only when the description's own
    confidence is at least this."""
    steps: int = Field(300, ge=1)
    """Optimizer steps."""
    batch_size: int = Field(64, ge=2)
    """Global batch: the negatives each clip is contrasted with."""
    accumulate: int = Field(1, ge=1)
    """Micro-batches per step; negatives still span the whole batch (feature cache)."""
    lr: float = Field(1e-3, gt=0)
    """Peak learning rate (AdamW)."""
    weight_decay: float = Field(0.1, ge=0)
    """AdamW weight decay (not applied to the temperature)."""
    warmup: int = Field(20, ge=0)
    """Linear warm-up steps before the cosine decay."""
    clip_grad: float = Field(1.0, ge=0)
    """Gradient-norm clipping (0: off)."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """auto: bf16 autocast on a CUDA GPU, float32 on CPU (bf16 is 2.5x slower on CPUs
    without bf16 instructions, measured); the losses are computed in float32."""
    seed: int = 0
    """Seed for initialisation, batches and the eval split."""
    checkpoint_every: int = Field(100, ge=1)
    """Save a checkpoint every K steps (and at the end)."""
    resume: bool = False
    """Continue from OUT/checkpoints/last exactly where it stopped."""
    tensorboard: bool = False
    """Also log to TensorBoard (needs `pip install tensorboard`)."""
    eval_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of clips held out (stratified by label) for `vaemo-inject eval`."""

    @model_validator(mode="after")
    def _batch(self) -> TrainConfig:
        if self.batch_size % self.accumulate:
            raise ValueError("--batch-size must be a multiple of --accumulate")
        if "{label}" not in self.label_prompts:
            raise ValueError("--label-prompts templates must contain {label}")
        return self


class FolderConfig(BaseModel):
    """`vaemo-inject export`: it reads everything else from the train folder."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    out: Path
    """A `vaemo-inject train` output folder."""


class EvalConfig(BaseModel):
    """`vaemo-inject eval`: the held-out annotated clips, and optionally a dataset's own
    labelled protocol (clips that were never annotated)."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    out: Path
    """A `vaemo-inject train` output folder."""
    manifest: Path | None = None
    """A labelled manifest to evaluate on (CSV/JSONL/Parquet, with `path`, `label` and a
    `split` or `fold` column), e.g. the dataset's official split; its clips need no
    descriptions. Labels are mapped onto the run's label set through the synonyms."""
    split: str = "test"
    """With --manifest: rows whose `split` is this are the test set."""
    train_split: str = "train"
    """With --manifest: rows whose `split` is this train the probe (others, e.g. val, are
    left out)."""
    folds: int | None = Field(None, ge=2)
    """With --manifest: a K-fold protocol from the manifest's `fold` column (CREMA-D, DFEW):
    each fold is the test set once, the others train; mean and std over folds."""


# the encoder and extraction fields `features` shares with `train`, declared there once
_EXTRACTION = ("factory", "trust_remote_code", "workers", "feature_batch", "precision")


class _FeaturesOwn(BaseModel):
    """`vaemo-inject features`: per-clip embeddings of any manifest, e.g. for
    `vaemo-annotate run --select diverse --features`."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True,
                              protected_namespaces=())

    manifest: Path
    """Clip manifest (as `vaemo-annotate run` reads it); every clip gets a vector."""
    out: Path
    """The Parquet file to write: `clip_id` and `features` (the encoder's branches, each
    L2-normalised, side by side)."""
    cache: Path | None = None
    """Feature cache folder, keyed by media hash and encoder id: a re-run or a grown
    manifest computes only the new clips (default: OUT's folder, `.vaemo-features/`)."""
    encoder: Path | None = None
    """The VA encoder (as `train` takes it). Without one: cheap measured features, the voice
    and face cues, a frame thumbnail and MFCC statistics (no model; coarse, but enough to
    tell one speaker, room or voice from another for --select diverse)."""


FeaturesConfig = create_model(
    "FeaturesConfig", __base__=_FeaturesOwn, __doc__=_FeaturesOwn.__doc__,
    **{name: (TrainConfig.model_fields[name].annotation, TrainConfig.model_fields[name])
       for name in _EXTRACTION})
