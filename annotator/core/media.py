"""Decode clips with PyAV (bundled FFmpeg): N uniform frames and mono 16 kHz float32 audio.

No torchvision/torchaudio: resizing and resampling are FFmpeg's (swscale, swresample).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from annotator.core.errors import MediaError
from annotator.core.hashing import file_sha256

SAMPLE_RATE = 16_000
DEFAULT_FPS = 25.0
"""The frame rate of a video stream that states none (raw H.264), for timing its frames."""
MAX_FPS = 240
"""Frames decoded per second of the covered span at most, whatever the timestamps say."""


@dataclass(frozen=True)
class MediaInfo:
    has_video: bool
    has_audio: bool
    duration_s: float
    source_fps: float | None
    width: int | None
    height: int | None


@dataclass(frozen=True)
class ClipMedia:
    frames: np.ndarray | None
    """uint8 [T, H, W, 3], or None when the clip has no video stream."""
    fps: float | None
    """Rate of the sampled frames (T / covered seconds), what the model's time axis uses."""
    audio: np.ndarray | None
    """float32 mono at 16 kHz, or None when the clip has no audio."""
    duration_s: float


def media_sha256(path: str, audio_path: str | None = None) -> str:
    """Hash of the bytes the model will see: the video file and the separate audio, if any.
    A single file's hash is cached while the file is unchanged (hashing.file_sha256)."""
    for p in (path, audio_path):
        if p and not Path(p).is_file():
            raise MediaError(f"{p}: not a regular file" if Path(p).exists() else
                             f"{p}: a broken or looping symbolic link" if Path(p).is_symlink()
                             else f"{p}: file not found")
    try:
        if not audio_path:
            return file_sha256(path)
        digest = hashlib.sha256()
        for p in (path, audio_path):
            with open(p, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):  # noqa: B023
                    digest.update(chunk)
        return digest.hexdigest()
    except OSError as err:
        raise MediaError(f"{err.filename or path}: {err.strerror or err}") from err


def readable_hashes(media: list[tuple[str, str | None]], threads: int = 8
                    ) -> Iterator[str | MediaError]:
    """Each clip's `media_sha256`, or the MediaError that says why it cannot be read, in
    order; hashing and probing are I/O, so threads overlap them."""
    from concurrent.futures import ThreadPoolExecutor

    def hashed(paths: tuple[str, str | None]) -> str | MediaError:
        try:
            probe(*paths)
            return media_sha256(*paths)
        except MediaError as err:
            return err

    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(media), 4096):  # a million clips: not a million futures
            yield from pool.map(hashed, media[start:start + 4096])


@contextmanager
def _failing_as_media_error(path: str, what: str):
    """FFmpeg raises many exception types mid-stream; a clip's failure is a MediaError."""
    try:
        yield
    except MediaError:
        raise
    except Exception as err:
        raise MediaError(f"{path}: {what} failed ({type(err).__name__}: {err})") from err


def _open(path: str):
    import av

    if not Path(path).is_file():
        raise MediaError(f"{path}: file not found")
    try:
        return av.open(path)
    except Exception as err:  # FFmpeg reports many error types
        raise MediaError(f"{path}: cannot open ({type(err).__name__}: {err})") from err


def probe(path: str, audio_path: str | None = None) -> MediaInfo:
    """Stream facts without decoding, so the plan can shape prompts per clip."""
    with _open(path) as container:
        video = container.streams.video[0] if container.streams.video else None
        audio = container.streams.audio[0] if container.streams.audio else None
        duration = _duration(container, video or audio)
        info = MediaInfo(
            has_video=video is not None,
            has_audio=audio is not None,
            duration_s=duration,
            source_fps=float(video.average_rate) if video is not None and video.average_rate
            else None,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
        )
    if audio_path:
        with _open(audio_path) as container:
            if not container.streams.audio:
                raise MediaError(f"{audio_path}: no audio stream")
        info = MediaInfo(info.has_video, True, info.duration_s, info.source_fps, info.width,
                         info.height)
    if not (info.has_video or info.has_audio):
        raise MediaError(f"{path}: neither a video nor an audio stream")
    return info


def _duration(container, stream) -> float:
    if stream is not None and stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / 1_000_000
    return 0.0


def decode(path: str, audio_path: str | None = None, *, num_frames: int = 8,
           max_duration_s: float = 30.0, max_side: int = 448, video: bool = True,
           audio: bool = True, info: MediaInfo | None = None) -> ClipMedia:
    """Decode what the model accepts. Raises MediaError on unreadable input.

    `info`: the clip's probe when the caller has it (the plan does), which saves opening the
    container once more."""
    info = info or probe(path, audio_path)
    covered = min(info.duration_s, max_duration_s) if info.duration_s > 0 else max_duration_s
    frames = fps = None
    if video and info.has_video:
        frames = _frames(path, num_frames, covered, max_side)
        fps = len(frames) / covered if covered > 0 else None
    wave = None
    if audio and info.has_audio:
        wave = _audio(audio_path or path, covered)
    return ClipMedia(frames=frames, fps=fps, audio=wave, duration_s=covered)


def _frames(path: str, num_frames: int, covered: float, max_side: int) -> np.ndarray:
    targets = (np.arange(num_frames) + 0.5) * covered / num_frames
    picked: list[np.ndarray] = []
    with _failing_as_media_error(path, "video decode"), _open(path) as container:
        stream = container.streams.video[0]
        # one thread: a prepare task claims half a CPU, and many run side by side (FFmpeg's
        # frame threads cost more CPU per clip, about 10% here, for a shorter wall time)
        stream.thread_count = 1
        # a stream without timestamps (raw H.264) is timed by its frame count at its rate;
        # and no stream is decoded past MAX_FPS frames a second of what the clip covers
        rate = float(stream.average_rate or stream.guessed_rate or DEFAULT_FPS)
        budget = int(covered * MAX_FPS) + num_frames
        size = None
        for n, frame in enumerate(container.decode(stream)):
            t = float(frame.time) if frame.time is not None else n / rate
            if size is None:
                size = _fit(frame.width, frame.height, max_side)
            while len(picked) < num_frames and t >= targets[len(picked)] - 1e-6:
                picked.append(frame.to_ndarray(width=size[0], height=size[1], format="rgb24"))
            if len(picked) == num_frames or t > covered or n >= budget:
                break
    if not picked:
        raise MediaError(f"{path}: no decodable video frame")
    while len(picked) < num_frames:  # short or truncated stream: hold the last frame
        picked.append(picked[-1])
    return np.stack(picked)


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    scale = min(1.0, max_side / max(width, height))
    return max(2, int(width * scale) // 2 * 2), max(2, int(height * scale) // 2 * 2)


def _audio(path: str, covered: float) -> np.ndarray:
    import av

    chunks: list[np.ndarray] = []
    start: float | None = None
    samples, enough = 0, (covered + 1) * SAMPLE_RATE
    with _failing_as_media_error(path, "audio decode"), _open(path) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        for frame in container.decode(container.streams.audio[0]):
            if start is None:
                start = float(frame.time or 0.0)
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1))
                samples += len(chunks[-1])
            if samples > enough:
                break
        for out in resampler.resample(None):
            chunks.append(out.to_ndarray().reshape(-1))
    if not chunks:
        raise MediaError(f"{path}: no decodable audio")
    wave = np.concatenate(chunks).astype(np.float32)
    if start is not None and start < 0:  # encoder priming (AAC) sits before t=0
        wave = wave[int(round(-start * SAMPLE_RATE)):]
    return wave[: int(covered * SAMPLE_RATE)]
