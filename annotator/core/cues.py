"""Measured per-clip cues that ground a description: voice from the waveform, face and motion
from the frames.

Field libraries rather than hand-rolled DSP: Praat's pitch tracker (praat-parselmouth, the
standard of prosody research) gives F0 with a voicing decision, about 10x faster than
librosa's pYIN here (version 1 of the cues used pYIN); librosa's RMS and onset strength and its
peak-picking rule (computed in numpy, `spectral`: the same numbers without numba's start-up)
give loudness and a tempo proxy; OpenCV's
Haar cascade (shipped inside the opencv wheel, no download) finds frontal faces on frames
scaled down to DETECT_SIDE: its 24-pixel window then finds faces from 15% of the frame's
shorter side up (a talking head is larger), 2.4x faster than on 224-pixel frames, with the
same detections on the demo corpus. Between full-frame searches a face is followed near where
it was (`_faces`): 2.5x less CPU again, the same faces counted on every frame. All values are
plain floats/ints so that they fit a Parquet struct and a Jinja template.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from annotator.core import spectral
from annotator.core.media import SAMPLE_RATE

CUES_VERSION = "4"
"""Part of every cache key: 2 = Praat pitch and face detection on downscaled frames; 3 = faces
followed between full-frame searches (boxes may differ by a few pixels from version 2's);
4 = facial-expression measures from landmarks (`cues.face`)."""
HOP = 256  # samples between analysis frames (16 ms at 16 kHz)
FRAME = 1024
SILENCE_DB = -50.0  # dBFS below which a frame is silent whatever the clip's level
ACTIVE_BELOW_PEAK_DB = 35.0  # a frame is active within this many dB of the clip's loudest
MIN_PAUSE_S = 0.25
DETECT_SIDE = 160  # faces are looked for on frames whose shorter side is at most this
FULL_SEARCH_EVERY = 4  # frames 0, 4, ...: a whole-frame search, which finds faces that enter
TRACK_SIZE = 1.3  # a followed face is looked for at 1/1.3-1.3x its size in the last frame


@dataclass(frozen=True)
class Cue:
    """One measured cue: its name in the `cues` struct, the prompt and the audit's rules."""

    name: str
    type: str
    """"float", "int" or "frames" (a list of frame indices)."""
    typical: float | int | list | None
    """A plausible value for a talking head (synthetic runs are written from these)."""
    silent: float | int | None = None
    """Its value for a clip whose audio is too short to measure (audio cues only)."""


AUDIO = (
    Cue("duration_s", "float", 3.0),
    Cue("active_fraction", "float", 0.8, 0.0),
    Cue("voiced_fraction", "float", 0.6, 0.0),
    Cue("loudness_db", "float", -20.0),
    Cue("loudness_range_db", "float", 18.0),
    Cue("f0_median_hz", "float", 170.0),
    Cue("f0_range_semitones", "float", 6.0),
    Cue("onset_rate_per_s", "float", 3.5, 0.0),
    Cue("pause_count", "int", 1, 0),
    Cue("pause_total_s", "float", 0.4, 0.0),
)
"""The voice cues (`cues.audio.*`), in the order `audio_cues` measures them."""
VIDEO = (
    Cue("num_frames", "int", 8),
    Cue("face_frames_fraction", "float", 1.0),
    Cue("frames_without_face", "frames", []),
    Cue("max_faces", "int", 1),
    Cue("face_area_fraction", "float", 0.12),
    Cue("face_centre_x", "float", 0.5),
    Cue("face_centre_y", "float", 0.4),
    Cue("motion_energy", "float", 0.02),
    Cue("brightness", "float", 0.5),
)
"""The face and video cues (`cues.video.*`), in the order `video_cues` measures them."""
FACE = (
    Cue("landmarked_frames", "int", 8),
    Cue("lip_corner_lift", "float", 0.02),
    Cue("mouth_open", "float", 0.12),
    Cue("brow_eye_gap", "float", 0.3),
    Cue("eye_openness", "float", 0.3),
    Cue("peak_frame", "int", None),
)
"""The facial-expression cues (`cues.face.*`) of the largest face, in the order
`expression.face_cues` measures them (what each means: annotator/core/expression.py)."""
STREAMS = {"audio": AUDIO, "video": VIDEO, "face": FACE}
STREAM_LABELS = {"audio": "voice", "video": "face/video", "face": "facial expression"}
"""How a template names each stream when it was not measured."""


def typical(**overrides) -> dict:
    """A whole `cues` value of typical numbers, `overrides` as {"audio": {...}, ...}."""
    return {"version": CUES_VERSION,
            **{stream: {**{c.name: c.typical for c in cues}, **overrides.get(stream, {})}
               for stream, cues in STREAMS.items()}}


def audio_cues(wave: np.ndarray, sample_rate: int = SAMPLE_RATE) -> dict:
    """Duration, speech activity, loudness, F0 (Praat), onset rate and pauses."""
    wave = np.asarray(wave, dtype=np.float32)
    duration = len(wave) / sample_rate
    cues: dict = {"duration_s": round(duration, 3)}
    if len(wave) < FRAME:
        return {**cues, **_empty_audio()}
    rms = spectral.rms(wave, FRAME, HOP)
    db = 20 * np.log10(np.maximum(rms, 1e-10))
    active = (db > SILENCE_DB) & (db > db.max() - ACTIVE_BELOW_PEAK_DB)
    f0 = praat_f0(wave, sample_rate, len(rms))
    voiced = (f0 > 0) & active
    pitches = f0[voiced]
    envelope = spectral.onset_strength(wave, sample_rate, HOP)
    onsets = pick_onsets(envelope, sample_rate)
    pauses = _pauses(active, sample_rate)
    cues.update(
        active_fraction=round(float(active.mean()), 3),
        voiced_fraction=round(float(voiced.mean()), 3),
        loudness_db=round(float(np.median(db[active])), 1) if active.any() else None,
        loudness_range_db=round(float(np.percentile(db[active], 95)
                                      - np.percentile(db[active], 5)), 1)
        if active.any() else None,
        f0_median_hz=round(float(np.median(pitches)), 1) if len(pitches) else None,
        f0_range_semitones=round(float(12 * np.log2(np.percentile(pitches, 90)
                                                    / np.percentile(pitches, 10))), 1)
        if len(pitches) >= 5 else None,
        onset_rate_per_s=round(len(onsets) / duration, 2) if active.any() else 0.0,
        pause_count=len(pauses),
        pause_total_s=round(float(sum(pauses)), 2),
    )
    return cues


def pick_onsets(envelope: np.ndarray, sample_rate: int) -> np.ndarray:
    """Onset frames of an onset-strength envelope, by librosa's peak-picking rule with its
    `onset_detect` defaults (a local maximum over the last 30 ms, at least 0.07 above the
    mean of +-100 ms, 30 ms apart), in numpy: librosa's own peak picker is a numba gufunc
    whose on-disk cache, written by concurrent worker processes, was seen to segfault."""
    from scipy.ndimage import maximum_filter1d, uniform_filter1d

    if not len(envelope):
        return np.zeros(0, int)
    x = envelope - envelope.min()
    x = x / x.max() if x.max() > 0 else x
    frames = lambda seconds: max(1, int(round(seconds * sample_rate / HOP)))  # noqa: E731
    pre_max, pre_avg, wait = frames(0.03), frames(0.10), frames(0.03)
    # the window [n - pre_max, n]: a maximum filter centred so that it looks back only
    local_max = maximum_filter1d(x, size=pre_max + 1, origin=pre_max // 2, mode="nearest")
    mean = uniform_filter1d(x, size=2 * pre_avg + 1, mode="nearest")
    candidates = np.flatnonzero((x >= local_max) & (x >= mean + 0.07))
    picked, last = [], -wait - 1
    for n in candidates:
        if n - last > wait:
            picked.append(n)
            last = n
    return np.array(picked, int)


def praat_f0(wave: np.ndarray, sample_rate: int, frames: int) -> np.ndarray:
    """F0 in Hz at each analysis frame (HOP apart, centred like librosa's), 0 where Praat
    finds no voice: its autocorrelation tracker, 60-500 Hz."""
    import parselmouth

    pitch = parselmouth.Sound(wave.astype(np.float64), sampling_frequency=sample_rate
                              ).to_pitch_ac(time_step=HOP / sample_rate, pitch_floor=60.0,
                                            pitch_ceiling=500.0)
    values = pitch.selected_array["frequency"]
    times = np.arange(frames) * HOP / sample_rate
    index = np.round((times - pitch.x1) / pitch.dx).astype(int)
    inside = (index >= 0) & (index < len(values))
    f0 = np.zeros(frames)
    f0[inside] = values[index[inside]]
    return f0


def _empty_audio() -> dict:
    return {c.name: c.silent for c in AUDIO if c.name != "duration_s"}


def _pauses(active: np.ndarray, sample_rate: int) -> list[float]:
    """Silent stretches of at least MIN_PAUSE_S between the first and last active frame."""
    idx = np.flatnonzero(active)
    if len(idx) < 2:
        return []
    inner = ~active[idx[0]: idx[-1] + 1]
    edges = np.diff(np.concatenate([[0], inner.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    lengths = (ends - starts) * HOP / sample_rate
    return [round(float(s), 3) for s in lengths if s >= MIN_PAUSE_S]


_detector = None


def _face_detector():
    global _detector
    if _detector is None:
        import cv2

        # one thread: a prepare task claims half a CPU, and OpenCV's default pool (every
        # core) would take its time from the engine's thread
        cv2.setNumThreads(1)
        _detector = cv2.CascadeClassifier(
            cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    return _detector


def _faces(small: list[np.ndarray], side: int) -> list[list[tuple]]:
    """Face boxes (x, y, w, h) per frame. The whole frame is searched every
    FULL_SEARCH_EVERY frames and whenever a followed face is lost; in between, each face of
    the last frame is looked for in a window around it, at about its size: the cascade then
    scans a few small windows at a few scales instead of the frame at every scale."""
    found: list[list[tuple]] = []
    for i, frame in enumerate(small):
        boxes = None
        if i % FULL_SEARCH_EVERY and found and found[-1]:
            boxes = _follow(frame, found[-1], side)
        if boxes is None:
            boxes = _detect(frame, side)
        found.append(boxes)
    return found


def _follow(frame: np.ndarray, last: list[tuple], side: int) -> list[tuple] | None:
    """Each of `last`'s faces found again near it (the largest match per window), or None
    when one is lost."""
    height, width = frame.shape
    boxes = []
    for x, y, w, h in last:
        reach = max(w, h)  # how far a face may have moved between two sampled frames
        x0, y0 = max(0, x - reach // 2), max(0, y - reach // 2)
        x1, y1 = min(width, x + w + reach // 2), min(height, y + h + reach // 2)
        hits = _detect(frame[y0:y1, x0:x1], max(side, int(reach / TRACK_SIZE)),
                       int(reach * TRACK_SIZE) + 1)
        if not hits:
            return None
        fx, fy, fw, fh = max(hits, key=lambda r: r[2] * r[3])
        boxes.append((fx + x0, fy + y0, fw, fh))
    return boxes


def _detect(image: np.ndarray, smallest: int, largest: int | None = None) -> list[tuple]:
    """The cascade's face boxes (x, y, w, h) in `image`, from `smallest` pixels up (to
    `largest`): one set of detection settings for full searches and followed faces alike."""
    limit = {"maxSize": (largest, largest)} if largest else {}
    return [tuple(int(v) for v in box) for box in _face_detector().detectMultiScale(
        image, scaleFactor=1.1, minNeighbors=5, minSize=(smallest, smallest), **limit)]


def video_cues(frames: np.ndarray) -> dict:
    """Faces (presence, count, size and position per frame), motion energy and brightness.

    frames: uint8 [T, H, W, 3] RGB.
    """
    return video_and_faces(frames)[0]


def video_and_faces(frames: np.ndarray) -> tuple[dict, np.ndarray, list[tuple | None]]:
    """`video_cues`, the grey frames and each frame's largest face box in them (or None):
    what the expression cues measure the face in."""
    import cv2

    frames = np.asarray(frames)
    t, h, w = frames.shape[:3]
    gray = np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames])
    scale = min(1.0, DETECT_SIDE / min(h, w))
    dw, dh = max(1, round(w * scale)), max(1, round(h * scale))
    side = max(24, int(0.1 * min(dh, dw)))  # the cascade's own window is 24 pixels
    small = [cv2.resize(g, (dw, dh), interpolation=cv2.INTER_AREA) if scale < 1 else g
             for g in gray]
    counts, sizes, centres, largest = [], [], [], []
    for found in _faces(small, side):
        counts.append(len(found))
        largest.append(None)
        if len(found):  # sizes and positions as fractions of the frame: scale-free
            x, y, fw, fh = max(found, key=lambda r: r[2] * r[3])  # the largest face
            sizes.append(fw * fh / (dw * dh))
            centres.append(((x + fw / 2) / dw, (y + fh / 2) / dh))
            largest[-1] = tuple(round(v / scale) for v in (x, y, fw, fh))
    counts = np.array(counts)
    motion = np.abs(np.diff(gray.astype(np.int16), axis=0)).mean() / 255 if t > 1 else 0.0
    return {
        "num_frames": int(t),
        "face_frames_fraction": round(float((counts > 0).mean()), 3),
        "frames_without_face": [int(i) for i in np.flatnonzero(counts == 0)],
        "max_faces": int(counts.max()) if t else 0,
        "face_area_fraction": round(float(np.mean(sizes)), 4) if sizes else None,
        "face_centre_x": round(float(np.mean([c[0] for c in centres])), 3) if centres else None,
        "face_centre_y": round(float(np.mean([c[1] for c in centres])), 3) if centres else None,
        "motion_energy": round(float(motion), 4),
        "brightness": round(float(gray.mean() / 255), 3),
    }, gray, largest


def arrow_type():
    """The Parquet struct of the `cues` column (null members when a stream is absent)."""
    import pyarrow as pa

    types = {"float": pa.float64(), "int": pa.int32(), "frames": pa.list_(pa.int32())}
    return pa.struct([("version", pa.string()), *(
        (stream, pa.struct([(c.name, types[c.type]) for c in cues]))
        for stream, cues in STREAMS.items())])


def measure(frames: np.ndarray | None, audio: np.ndarray | None) -> dict:
    """All cues of a clip, shaped like `arrow_type()`."""
    video = face = None
    if frames is not None:
        from annotator.core.expression import face_cues

        video, gray, largest = video_and_faces(frames)
        face = face_cues(gray, largest)
    return {"version": CUES_VERSION,
            "audio": audio_cues(audio) if audio is not None else None,
            "video": video, "face": face}


def for_template(cues: dict) -> dict:
    """Flat `name: value` pairs a template can list; absent streams are said, not hidden."""
    from annotator.core.expression import in_words

    flat: dict = {}
    for stream, label in STREAM_LABELS.items():
        values = cues.get(stream)
        if values is None:
            flat[f"{label}"] = "not measured (no stream)"
            continue
        for name, value in values.items():
            if value is not None and name != "frames_without_face":
                flat[f"{stream}.{name}"] = value
        if stream == "video" and values["frames_without_face"]:
            flat["video.frames_without_face"] = values["frames_without_face"]
        if stream == "face" and values["landmarked_frames"]:  # what the measures amount to
            flat["face.expressions_shown"] = in_words(values)
    return flat
