"""Clips into an encoder, in batches: the device, the data loader, and feature extraction.

Decoding (PyAV) and the encoder's own preprocessing run in DataLoader worker processes, one
torch thread each; the main process only runs batched forwards on the device, in bf16
autocast on a GPU. The same loader feeds `--mode blocks/lora` training, a step's clips
decoded by the workers while the previous step trains.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from annotator.core.media import SAMPLE_RATE
from injection.encoders.preprocess import clip_tensors

Media = tuple[str, str | None]
"""(clip file, separate audio file or None)."""


def pick_device() -> torch.device:
    """cuda:LOCAL_RANK on a GPU node (torchrun sets LOCAL_RANK; alone it is 0), else the
    CPU. The one place a device is chosen, made current so NCCL and caches agree."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))
                          % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def autocast(device: torch.device, precision: str = "auto"):
    """bf16 autocast on a GPU (or when asked); float32 on CPUs, where bf16 is 2.5x slower
    without bf16 instructions (measured here)."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


class ClipDataset(Dataset):
    """Clip i decoded and made into its encoder's inputs (in whichever process reads it)."""

    def __init__(self, media: list[Media], encoder, max_seconds: float | None = None):
        self.media, self.inputs, self.preprocess = media, encoder.inputs, encoder.preprocess
        self.max_samples = int(max_seconds * SAMPLE_RATE) if max_seconds else None

    def __len__(self) -> int:
        return len(self.media)

    def __getitem__(self, i: int) -> dict:
        path, audio_path = self.media[i]
        frames, audio = clip_tensors(path, self.preprocess, audio_path)
        if self.max_samples:
            audio = audio[:self.max_samples]
        return self.inputs(frames, audio)


def _one_thread(_worker: int) -> None:
    torch.set_num_threads(1)


def clip_loader(dataset: ClipDataset, batches: Iterable[list[int]], workers: int,
                collate: Callable | None = None) -> DataLoader:
    """Batches of `dataset` in the order given; `collate` None keeps each batch a list of
    per-clip inputs (the trainer splits a step into micro-batches itself)."""
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers,
                      collate_fn=collate or (lambda items: items),
                      worker_init_fn=_one_thread if workers else None,
                      pin_memory=torch.cuda.is_available(),
                      prefetch_factor=4 if workers else None)


def extract(encoder, media: list[Media], device: torch.device | None = None,
            batch_size: int = 16, workers: int = 2, precision: str = "auto",
            progress: Callable[[int, float], None] | None = None) -> np.ndarray:
    """Features of `media` in order, branches side by side: [N, sum of branch sizes].
    `progress(done, clips_per_s)` is told after every batch."""
    device = device or pick_device()
    encoder.module.to(device)  # in eval mode since it loaded (a .pt2 module cannot be told)
    dataset = ClipDataset(media, encoder)
    order = [list(range(i, min(i + batch_size, len(media))))
             for i in range(0, len(media), batch_size)]
    out, done, started = [], 0, time.perf_counter()
    with torch.inference_mode(), autocast(device, precision):
        for batch in clip_loader(dataset, order, workers, encoder.inputs.collate):
            features = encoder(to_device(batch, device))
            out.append(torch.cat([features[n].float() for n in encoder.branches], 1).cpu())
            done += len(out[-1])
            if progress is not None:
                progress(done, done / (time.perf_counter() - started))
    width = sum(encoder.branches.values())
    return torch.cat(out).numpy() if out else np.zeros((0, width), np.float32)
