"""Clip features without an encoder, for `vaemo-inject features` when you have none yet: the
measured voice and face cues, a thumbnail of the sampled frames, and the voice's MFCC
statistics, each a branch (no torch, no model).

Cheap and coarse: enough to tell a new speaker, room or voice from another segment of the
same one (what `--select diverse` needs), not to recognise an emotion. Branches are z-scored
over the corpus and L2-normalised by the `features` command, so each weighs alike.
"""

from __future__ import annotations

import numpy as np

from annotator.core.cues import CUES_VERSION, STREAMS, measure
from annotator.core.media import SAMPLE_RATE, decode

ID = f"measured-v1-cues{CUES_VERSION}"
"""The cache key's encoder id: a change to what is measured needs a new one (a new cue
version is one)."""
THUMBNAIL = 8
"""Frames are averaged and shrunk to THUMBNAIL x THUMBNAIL grey pixels."""
MFCCS = 20

CUE_NAMES = [(stream, cue.name) for stream, cues in STREAMS.items() for cue in cues
             if cue.type != "frames"]
BRANCHES = {"cues": len(CUE_NAMES) + len(STREAMS), "image": THUMBNAIL ** 2 + 6,
            "audio": 2 * MFCCS}
"""Branch sizes: each cue plus a has-stream flag per stream; grey thumbnail plus each colour
channel's mean and spread; MFCC means and spreads."""


def clip_vector(path: str, audio_path: str | None = None) -> np.ndarray:
    """One clip's features, the BRANCHES side by side (float32)."""
    media = decode(path, audio_path, num_frames=8, max_side=64)
    cues = measure(media.frames, media.audio)
    values = [float((cues[stream] or {}).get(name) or 0.0) for stream, name in CUE_NAMES]
    values += [float(cues[stream] is not None) for stream in STREAMS]
    image = np.zeros(BRANCHES["image"], np.float32)
    if media.frames is not None:
        frames = media.frames.astype(np.float32) / 255
        grey = frames.mean(axis=(0, 3))
        rows = np.array_split(np.arange(grey.shape[0]), THUMBNAIL)
        cols = np.array_split(np.arange(grey.shape[1]), THUMBNAIL)
        thumb = [grey[np.ix_(r, c)].mean() for r in rows for c in cols]
        image = np.array([*thumb, *frames.mean(axis=(0, 1, 2)), *frames.std(axis=(0, 1, 2))],
                         np.float32)
    audio = np.zeros(BRANCHES["audio"], np.float32)
    if media.audio is not None and len(media.audio) >= 2048:
        import librosa

        mfcc = librosa.feature.mfcc(y=media.audio, sr=SAMPLE_RATE, n_mfcc=MFCCS)
        audio = np.concatenate([mfcc.mean(axis=1), mfcc.std(axis=1)]).astype(np.float32)
    return np.concatenate([np.array(values, np.float32), image, audio])
