"""The trainer: projection heads on cached frozen features (the fast path).

AdamW, warm-up then cosine, gradient clipping, gradient accumulation that keeps every clip of
the global batch as a negative (open_clip's feature cache), metrics to JSONL (and TensorBoard),
checkpoints every K steps with a `last` pointer, and an exact `--resume`: batches are a pure
function of (seed, step), so a resumed run draws the same batches as an uninterrupted one.
Under torchrun each rank takes its share of the global batch and the losses gather features
from all ranks (gloo on CPU, nccl on GPUs).
"""

from __future__ import annotations

import functools
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from annotator.core.layout import InjectionFolder
from annotator.core.errors import ConfigError
from injection.config import TrainConfig
from injection.training.checkpoint import load_checkpoint, save_checkpoint
from injection.training.finetune import Tuned, anchor_loss, apply_lora, unfreeze_last_blocks
from injection.training.loader import ClipDataset, clip_loader, pick_device
from injection.training.loader import autocast as mixed_precision
from injection.training.loss import description_loss, label_loss
from injection.training.model import Projector

SAMPLED_SOURCES = ("description", "summary", "reasoning")


@dataclass
class Features:
    """Everything training reads, per clip: frozen VA features per branch, text embeddings
    per source, the label index (-1: none); and one embedding per label text."""

    va: dict[str, np.ndarray]
    text: dict[str, np.ndarray]
    labels: np.ndarray
    label_text: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, rows: np.ndarray) -> Features:
        """The clips at `rows` (indices or a mask); VA and text stay views (no copy of a
        memory-mapped corpus), labels are copied."""
        return Features({k: RowView.of(v, rows) for k, v in self.va.items()},
                        {k: RowView.of(v, rows) for k, v in self.text.items()},
                        self.labels[rows], self.label_text)


class RowView:
    """Some rows of a matrix (often a memory map), read only when indexed: `view[rows]`
    reads those rows, `np.asarray(view)` all of them."""

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base, self.index = base, index

    @staticmethod
    def of(values, rows: np.ndarray) -> RowView:
        rows = np.flatnonzero(rows) if np.asarray(rows).dtype == bool else np.asarray(rows)
        if isinstance(values, RowView):
            return RowView(values.base, values.index[rows])
        return RowView(values, rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, rows) -> np.ndarray:
        return np.asarray(self.base[self.index[rows]])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        values = np.asarray(self.base[self.index])
        return values if dtype is None else values.astype(dtype)


def new_projector(features: Features, config: TrainConfig) -> Projector:
    torch.manual_seed(config.seed)
    text_dim = next(iter(features.text.values())).shape[1]
    branches = {k: v.shape[1] for k, v in features.va.items()}
    return Projector(branches, text_dim, config.dim, config.hidden or None)


def batch_rows(n: int, batch: int, step: int, seed: int) -> np.ndarray:
    """The rows of global batch `step` (0-based): epochs are seeded permutations."""
    per_epoch = max(1, n // batch)
    epoch, position = divmod(step, per_epoch)
    return _epoch_order(n, seed, epoch)[position * batch:(position + 1) * batch]


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """An epoch's permutation, drawn once (not once per step: at 100k clips that costs)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
    order = order.numpy()
    order.flags.writeable = False
    return order


def text_source(config: TrainConfig, step: int) -> str:
    if config.text != "sampled":
        return config.text
    pick = torch.randint(len(SAMPLED_SOURCES), (1,),
                         generator=torch.Generator().manual_seed(config.seed * 7919 + step))
    return SAMPLED_SOURCES[int(pick)]


def losses(out: dict, labels: torch.Tensor, config: TrainConfig,
           text_frozen: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Both paths on projected embeddings (per branch, averaged, for the per-branch path),
    and the anchor to the original features when the encoder itself trains; `text_frozen`
    (the batch's text-encoder embeddings) spares near-copy descriptions as negatives."""
    branches = out["va"]
    if config.dual_path == "fused" or len(branches) == 1:
        stacked = torch.stack(list(branches.values())).mean(0)
        branches = {"clip": torch.nn.functional.normalize(stacked, dim=-1)}
    found: dict[str, list[torch.Tensor]] = {}
    for clip in branches.values():
        parts = {}
        if config.description_weight:
            parts.update(description_loss(clip, out["text"], out["scale"], text_frozen,
                                          config.near_copy))
        if config.label_weight:
            parts.update(label_loss(clip, out["label_text"], labels, out["scale"]))
        for name, value in parts.items():
            found.setdefault(name, []).append(value)
    found = {name: torch.stack(values).mean() for name, values in found.items()}
    if "va_raw" in out and config.anchor_weight:
        found.update(anchor_loss(out["va_raw"], out["va_frozen"]))
    return found


def weighted_total(parts: dict[str, torch.Tensor], config: TrainConfig) -> torch.Tensor:
    weights = {"description_loss": config.description_weight,
               "label_loss": config.label_weight, "anchor_loss": config.anchor_weight}
    return sum(weights[name] * value for name, value in parts.items())


def _text(features: Features, rows: np.ndarray, source: str) -> torch.Tensor:
    return torch.from_numpy(np.asarray(features.text[source][rows], np.float32))


def _frozen(features: Features, rows: np.ndarray) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(v[rows], np.float32)) for k, v in features.va.items()}


def _merge(outs: list[dict], j: int) -> dict:
    """The global batch from micro-batch outputs; only micro-batch j carries gradients, and
    the shared parts (label texts, temperature) carry them only in micro-batch 0."""
    fresh = outs[j]
    merged = {"va": {k: torch.cat([o["va"][k] for o in outs]) for k in fresh["va"]},
              "text": torch.cat([o["text"] for o in outs]),
              "label_text": fresh["label_text"] if j == 0 else fresh["label_text"].detach(),
              "scale": fresh["scale"] if j == 0 else fresh["scale"].detach()}
    for key in ("va_raw", "va_frozen"):
        if key in fresh:
            merged[key] = {k: torch.cat([o[key][k] for o in outs]) for k in fresh[key]}
    return merged


def _to(value, device: torch.device):
    """Tensors (in dicts) on `device`, as float32 where they are floating point (outputs
    of an autocast region are bf16; the losses are computed in float32)."""
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    value = value.to(device)
    return value.float() if value.is_floating_point() else value


def train_step(model, features: Features, rows: np.ndarray, config: TrainConfig, step: int,
               inputs=None, device: torch.device | None = None, autocast=nullcontext
               ) -> dict[str, torch.Tensor]:
    """Forward and backward for one global batch; returns the losses (detached).

    `inputs(rows)` is what the model takes for those clips: their cached frozen features
    (heads mode, the default) or their decoded media (blocks mode).
    With accumulation, every micro-batch is first embedded without gradients; then each is
    embedded again with gradients and scored against the whole cached batch, so negatives
    span the global batch. Shared parts (label texts, temperature) take their gradient from
    the first micro-batch only, which already sees the whole batch: the sum equals the
    un-accumulated gradient."""
    device = device or torch.device("cpu")
    inputs = inputs or (lambda r: _frozen(features, r))
    source = text_source(config, step)
    label_text = torch.from_numpy(features.label_text).to(device)
    labels = torch.from_numpy(features.labels[rows]).to(device)

    def forward(part: np.ndarray) -> dict:
        with autocast():
            out = model(_to(inputs(part), device), _text(features, part, source).to(device),
                        label_text)
        out = _to(out, device)
        if "va_raw" in out:
            out["va_frozen"] = _to(_frozen(features, part), device)
        return out

    frozen_text = _text(features, rows, source).to(device)
    if config.accumulate == 1:
        parts = losses(forward(rows), labels, config, frozen_text)
        weighted_total(parts, config).backward()
        return {k: v.detach() for k, v in parts.items()}
    micro = np.array_split(rows, config.accumulate)
    with torch.no_grad():
        cached = [forward(m) for m in micro]
    for j, m in enumerate(micro):
        outs = [forward(m) if i == j else c for i, c in enumerate(cached)]
        parts = losses(_merge(outs, j), labels, config, frozen_text)
        weighted_total(parts, config).backward()
    return {k: v.detach() for k, v in parts.items()}


def tune_encoder(encoder, config: TrainConfig) -> list[torch.nn.Parameter]:
    """Make the encoder's trained part trainable (the rest frozen); its parameters."""
    if config.mode == "lora":
        for parameter in encoder.module.parameters():
            parameter.requires_grad_(False)
        return apply_lora(encoder, config.lora_rank, config.lora_alpha)
    return unfreeze_last_blocks(encoder, config.train_blocks)


def lr_schedule(config: TrainConfig):
    def factor(step: int) -> float:
        if step < config.warmup:
            return (step + 1) / config.warmup
        span = max(1, config.steps - config.warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - config.warmup) / span)))

    return factor


def make_optimizer(projector: Projector, config: TrainConfig, encoder_params=()
               ) -> torch.optim.AdamW:
    decay = [p for n, p in projector.named_parameters() if p.ndim > 1]
    rest = [p for n, p in projector.named_parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": rest, "weight_decay": 0.0}]
    if encoder_params:
        groups.append({"params": list(encoder_params), "lr": config.encoder_lr,
                       "weight_decay": config.weight_decay})
    return torch.optim.AdamW(groups, lr=config.lr)


def fit(features: Features, config: TrainConfig, out: Path, log=None, encoder=None,
        media: list[tuple[str, str | None]] | None = None) -> dict:
    """Train the heads on `features` (the training rows); checkpoints and metrics in `out`.

    In blocks mode, `encoder` and the clips' `media` (file, separate audio or None; aligned
    with `features`) are needed:
    its last blocks train with the heads on decoded media."""
    import torch.distributed as dist

    # a process group of one (vLLM's own, when it ran in this process) is not a DDP job
    distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if config.batch_size % world:
        raise ConfigError(f"--batch-size {config.batch_size} must divide among {world} ranks")
    projector = new_projector(features, config)
    tuned, inputs, encoder_params, steps_media = None, None, [], None
    batch = min(config.batch_size, len(features))
    device = pick_device()
    if config.mode != "heads":
        if encoder is None or media is None:
            raise ValueError(f"--mode {config.mode} trains the encoder: fit() needs it and "
                             "the clips")
        encoder_params = tune_encoder(encoder, config)
        tuned = Tuned(encoder, projector)
        decoded: dict[int, dict] = {}  # this step's clips: row -> its encoder inputs

        def inputs(rows):
            return encoder.inputs.collate([decoded[int(i)] for i in rows])

    def autocast():
        return mixed_precision(device, config.precision)

    (tuned or projector).to(device)  # before the optimizer, so its state follows the params
    optimizer = make_optimizer(projector, config, encoder_params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config))
    folder = InjectionFolder(out)
    start = 0
    if config.resume:
        start = load_checkpoint(folder, projector, optimizer, scheduler, tuned)
    if tuned is not None:  # each step's clips, decoded by the workers while earlier steps train
        steps_media = iter(clip_loader(
            ClipDataset(media, encoder, config.clip_seconds),
            (_shard(batch_rows(len(features), batch, step, config.seed), rank, world).tolist()
             for step in range(start, config.steps)), config.workers))
    model = tuned or projector
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            # accumulation's cached pass, and encoder parts a branch never runs (Whisper's
            # decoder under LoRA), leave parameters without a gradient in a step
            find_unused_parameters=config.accumulate > 1 or config.mode != "heads")
    metrics_path = folder.metrics
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        _truncate_log(metrics_path, start)
    writer = _tensorboard(out) if config.tensorboard and rank == 0 else None
    # opened once, line-buffered: every record is on disk as soon as it is written
    metrics = open(metrics_path, "a", buffering=1) if rank == 0 else None  # noqa: SIM115
    history, started = [], time.perf_counter()
    for step in range(start, config.steps):
        rows = _shard(batch_rows(len(features), batch, step, config.seed), rank, world)
        if steps_media is not None:
            decoded = dict(zip(rows.tolist(), next(steps_media)))
        optimizer.zero_grad(set_to_none=True)
        parts = train_step(model, features, rows, config, step, inputs, device, autocast)
        if config.clip_grad:
            torch.nn.utils.clip_grad_norm_([*projector.parameters(), *encoder_params],
                                           config.clip_grad)
        optimizer.step()
        scheduler.step()
        record = {"step": step + 1, **{k: float(v) for k, v in parts.items()},
                  "loss": float(weighted_total(parts, config)),
                  "lr": optimizer.param_groups[0]["lr"],
                  "logit_scale": float(projector.logit_scale().detach()),
                  "samples_per_s": round(batch * (step + 1 - start)
                                         / (time.perf_counter() - started), 1)}
        history.append(record)
        if rank == 0:
            metrics.write(json.dumps(record) + "\n")
            if writer is not None:
                for key, value in record.items():
                    if key != "step":
                        writer.add_scalar(key, value, step + 1)
            if log is not None:
                log(record)
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                save_checkpoint(folder, step + 1, projector, optimizer, scheduler, config,
                                tuned)
    if writer is not None:
        writer.close()
    if metrics is not None:
        metrics.close()
    (tuned or projector).cpu()  # evaluation and export read it on the CPU
    return {"projector": projector, "history": history, "start": start, "tuned": tuned}


def _shard(rows: np.ndarray, rank: int, world: int) -> np.ndarray:
    """This rank's part of a global batch (rank order: the gathered losses see the batch
    as one process would)."""
    return np.array_split(rows, world)[rank]


def _truncate_log(path: Path, step: int) -> None:
    """Keep the records up to `step`: a resumed run appends after them, not after the ones
    the killed run wrote past its last checkpoint."""
    if not path.is_file():
        return
    kept = [line for line in path.read_text().splitlines()
            if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ConfigError("--tensorboard needs the tensorboard package: "
                          "pip install tensorboard") from err
    return SummaryWriter(str(out / "tensorboard"))
