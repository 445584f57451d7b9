"""Build a small demo corpus from real media that ships in registry packages, and write clips.

Faces: the astronaut portrait (scikit-image) and Grace Hopper (matplotlib's sample data), moved
over time (a slow pan and zoom) so the video is not a still. Voices: public-domain read speech
(LibriVox) and spoken card names from Debian's `pocketsphinx-testdata`. Labels: the speech is
calm read speech, so every demo clip is honestly labelled `neutral`.
"""

from __future__ import annotations

import csv
from fractions import Fraction
from pathlib import Path

import numpy as np

from annotator.core.errors import ConfigError
from annotator.core.media import SAMPLE_RATE, decode

SPEECH_DIR = Path("/usr/share/pocketsphinx/test/data")


def write_clip(path: str | Path, frames: np.ndarray | None, audio: np.ndarray | None,
               fps: int = 25, video_codec: str = "libx264", audio_codec: str = "aac",
               audio_rate: int = SAMPLE_RATE, frame_times: list[float] | None = None) -> Path:
    """Write a clip (H.264/AAC MP4 by default; the container follows the suffix), or an
    audio-only/video-only one. frames: uint8 [T, H, W, 3]; `frame_times` (seconds) gives a
    variable frame rate."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        vstream = astream = None
        if frames is not None:
            vstream = container.add_stream(video_codec, rate=fps)
            vstream.width, vstream.height = frames.shape[2], frames.shape[1]
            vstream.pix_fmt = "yuv420p"
            if video_codec == "libx264":
                vstream.options = {"preset": "ultrafast", "crf": "23"}
            if frame_times is not None:
                vstream.codec_context.time_base = Fraction(1, 1000)
        if audio is not None:
            astream = container.add_stream(audio_codec, rate=audio_rate, layout="mono")
        if vstream is not None:
            for i, image in enumerate(frames):
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
                if frame_times is not None:
                    frame.pts, frame.time_base = int(frame_times[i] * 1000), Fraction(1, 1000)
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode(None))
        if astream is not None:
            samples = np.clip(audio, -1, 1).astype(np.float32)
            if audio_rate != SAMPLE_RATE:
                samples = np.interp(np.arange(int(len(samples) * audio_rate / SAMPLE_RATE))
                                    * SAMPLE_RATE / audio_rate, np.arange(len(samples)),
                                    samples).astype(np.float32)
            step = astream.codec_context.frame_size or 1024
            fmt = astream.codec_context.format.name
            for start in range(0, len(samples), step):
                chunk = samples[start:start + step].reshape(1, -1)
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                if fmt != "flt":
                    frame = av.AudioFrame.from_ndarray(
                        _as_format(chunk, fmt), format=fmt, layout="mono")
                frame.sample_rate = audio_rate
                frame.pts = start
                frame.time_base = Fraction(1, audio_rate)
                container.mux(astream.encode(frame))
            container.mux(astream.encode(None))
    return path


def _as_format(chunk: np.ndarray, fmt: str) -> np.ndarray:
    """Float samples [-1, 1] in the sample format an encoder wants (fltp, s16p, s32p)."""
    if fmt.startswith("s16"):
        return (chunk * 32767).astype(np.int16)
    if fmt.startswith("s32"):
        return (chunk * 2147483647).astype(np.int32)
    return chunk.astype(np.float32)


def portraits() -> dict[str, np.ndarray]:
    """Real face photographs shipped with scikit-image and matplotlib (RGB uint8)."""
    import matplotlib.cbook
    import skimage.data
    from PIL import Image

    hopper = np.asarray(Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg"))
                        .convert("RGB"))
    return {"astronaut": skimage.data.astronaut(), "grace_hopper": hopper}


def moving_portrait(image: np.ndarray, num_frames: int, side: int = 224) -> np.ndarray:
    """A slow zoom and pan over a still portrait: real face pixels with real motion."""
    from PIL import Image

    h, w = image.shape[:2]
    base = min(h, w)
    frames = []
    for i in range(num_frames):
        p = i / max(num_frames - 1, 1)
        crop = int(base * (0.95 - 0.15 * p))
        top = int((h - crop) * (0.3 + 0.2 * p))
        left = int((w - crop) * (0.5 + 0.2 * np.sin(2 * np.pi * p)))
        tile = image[top:top + crop, left:left + crop]
        frames.append(np.asarray(Image.fromarray(tile).resize((side, side))))
    return np.stack(frames)


def speech_files() -> list[Path]:
    files = sorted((SPEECH_DIR / "librivox").glob("*.wav")) + sorted(
        (SPEECH_DIR / "cards").glob("*.wav"))
    if not files:
        raise ConfigError(
            f"no speech under {SPEECH_DIR}: install Debian's pocketsphinx-testdata "
            "(apt-get install pocketsphinx-testdata)")
    return files


def read_wav(path: Path, max_seconds: float = 6.0) -> np.ndarray:
    wave = decode(str(path), video=False, max_duration_s=max_seconds).audio
    assert wave is not None
    return wave


def build_demo_corpus(out_dir: str | Path, fps: int = 25) -> Path:
    """Write clips + manifest.csv; returns the manifest path. Idempotent."""
    out = Path(out_dir)
    faces = portraits()
    rows = []
    for i, wav in enumerate(speech_files()):
        face_name = list(faces)[i % len(faces)]
        speech = read_wav(wav)
        n = max(2, int(len(speech) / SAMPLE_RATE * fps))
        clip = out / "clips" / f"{wav.parent.name}_{wav.stem}.mp4"
        if not clip.exists():
            write_clip(clip, moving_portrait(faces[face_name], n), speech, fps=fps)
        rows.append({
            "clip_id": clip.stem, "path": f"clips/{clip.name}", "label": "neutral",
            "speaker": wav.parent.name, "split": "demo", "dataset": "vaemo-demo",
            "face_source": face_name, "speech_source": str(wav),
        })
    return write_manifest_csv(out / "manifest.csv", rows)


def write_manifest_csv(path: Path, rows: list[dict]) -> Path:
    """A CSV manifest of `rows` (the first row's keys are the columns)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
