"""How a clip becomes an encoder's inputs: decoding settings (`Preprocess`), the decoded
frames and waveform (`clip_tensors`), grouping by audio length, and the digest that names an
encoder's weights. Shared by every encoder kind."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from annotator.core.hashing import file_sha256
from annotator.core.media import SAMPLE_RATE

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def weights_digest(files: list[Path]) -> str:
    """Short digest of files' names and bytes: the part of an encoder's id that changes
    when its weights (or config) do, so caches never serve features of other weights."""
    digest = hashlib.sha256()
    for f in sorted(files):
        digest.update(f.name.encode() + bytes.fromhex(file_sha256(f)))  # hashed once
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class Preprocess:
    """How clips become the encoder's inputs; part of the feature cache key."""

    num_frames: int = 8
    size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    max_duration_s: float = 10.0
    audio_normalize: bool = True

    def key(self) -> str:
        return json.dumps(self.__dict__, sort_keys=True)


def by_length(forward, samples: torch.Tensor) -> torch.Tensor:
    """`forward(rows, length)` once per distinct audio length, results in batch order: a
    module that cannot take lengths never sees padding."""
    parts, order = [], []
    for length in torch.unique(samples).tolist():
        rows = torch.nonzero(samples == length).flatten()
        parts.append(forward(rows.to(samples.device), int(length)))
        order.append(rows)
    out = torch.cat(parts)
    return out[torch.argsort(torch.cat(order).to(out.device))]


def clip_tensors(path: str, preprocess: Preprocess, audio_path: str | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(frames [T, 3, size, size] float32 normalised, audio [S] float32 16 kHz) for one clip,
    with the annotator's PyAV decoding; a missing stream is zeros (and said in the row)."""
    import cv2

    from annotator.core.media import decode

    clip = decode(path, audio_path, num_frames=preprocess.num_frames,
                  max_duration_s=preprocess.max_duration_s, max_side=4 * preprocess.size)
    size = preprocess.size
    if clip.frames is not None:
        frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                           for f in clip.frames]).astype(np.float32) / 255.0
        frames = (frames - np.array(preprocess.mean, np.float32)) / np.array(preprocess.std,
                                                                               np.float32)
        frames = frames.transpose(0, 3, 1, 2)
        if len(frames) < preprocess.num_frames:  # short clip: repeat the last frame
            pad = np.repeat(frames[-1:], preprocess.num_frames - len(frames), 0)
            frames = np.concatenate([frames, pad])
    else:
        frames = np.zeros((preprocess.num_frames, 3, size, size), np.float32)
    audio = np.zeros(SAMPLE_RATE, np.float32)  # no audio: one second of silence
    if clip.audio is not None and len(clip.audio):
        audio = clip.audio.astype(np.float32)
        if preprocess.audio_normalize and audio.std() > 0:
            audio = (audio - audio.mean()) / audio.std()
    return np.ascontiguousarray(frames, np.float32), audio
