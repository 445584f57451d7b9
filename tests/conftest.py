"""Shared fixtures: a tiny random Qwen2.5-Omni built at test time, and real + synthetic clips.

Real media: faces from scikit-image/matplotlib, read speech from Debian's pocketsphinx-testdata.
Synthetic media: tones of known pitch, moving patterns, silence.
"""

from __future__ import annotations

import os

# CPU runs here use one thread (two are erratic on this machine), and vLLM runs in-process
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path

import numpy as np
import pytest

from annotator.demo import (moving_portrait, portraits, read_wav, speech_files, write_clip,
                            write_manifest_csv)
from annotator.core.media import SAMPLE_RATE


def tone(freq: float, seconds: float, amplitude: float = 0.3) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def pattern_frames(n: int, size: int = 96, seed: int = 0) -> np.ndarray:
    """A bright square moving over a textured background."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
    frames = np.repeat(base[None], n, axis=0)
    for i in range(n):
        x = int((size - 24) * i / max(n - 1, 1))
        frames[i, 30:54, x:x + 24] = 230
    return frames


@pytest.fixture(scope="session")
def tiny_omni(tmp_path_factory) -> Path:
    import torch

    torch.set_num_threads(1)
    from tests.builders.tiny_models import build_tiny_omni

    return build_tiny_omni(tmp_path_factory.mktemp("models") / "tiny-omni")


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, Path]:
    """Named clips: real faces with real speech, synthetic ones, and broken files."""
    root = tmp_path_factory.mktemp("clips")
    faces = portraits()
    speech = speech_files()
    made = {}
    for i, (name, image) in enumerate(faces.items()):
        wave = read_wav(speech[i], max_seconds=2.0)
        made[f"real_{name}"] = write_clip(root / f"real_{name}.mp4",
                                          moving_portrait(image, 25, side=112), wave)
    made["tone_220"] = write_clip(root / "tone_220.mp4", pattern_frames(25), tone(220, 1.0))
    made["tone_440"] = write_clip(root / "tone_440.mp4", pattern_frames(25, seed=1),
                                  tone(440, 1.0))
    made["silent_video"] = write_clip(root / "silent_video.mp4", pattern_frames(20, seed=2), None)
    made["audio_only"] = write_clip(root / "audio_only.m4a", None, tone(330, 1.0))
    corrupt = root / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2048))
    made["corrupt"] = corrupt
    made["missing"] = root / "missing.mp4"
    return made


write_manifest = write_manifest_csv
"""A CSV manifest of `rows` (the demo corpus's own writer)."""


def kill_after_rows(cmd: list[str], out: Path, rows: int = 2, timeout: float = 300) -> None:
    """Start `cmd` (a `vaemo-annotate run`) in its own process group and kill -9 the group
    once `rows` rows are committed in `out`."""
    import signal
    import subprocess
    import time

    from annotator.core.store import Store

    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while time.time() < deadline and len(Store(out).read(["clip_id"])) < rows:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
