"""Synthetic runs with known content: for the audit's tests and benchmark, and to try it out.

Clean rows are written the way a good annotator would: the emotion drives valence, arousal,
the measured cues (loudness, pitch, faces) and varied wording that quotes those cues. Planted
faults are each a single, known defect (`PLANTED`), so a test can ask whether the audit flags
exactly them.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from annotator.core import cues as cue_spec
from annotator.core.files import write_json

from annotator.core.store import Store

from annotator.core.rows import ROW_SCHEMA, make_row
from annotator.core.schema import SCHEMA_VERSION

LABELS = ["anger", "disgust", "fear", "happy", "neutral", "sad"]
# emotion: valence, arousal, loudness dB range
PROFILE = {"anger": (-0.6, 0.8, (-20, -13)), "disgust": (-0.5, 0.5, (-28, -20)),
           "fear": (-0.6, 0.75, (-24, -16)), "happy": (0.7, 0.6, (-22, -15)),
           "neutral": (0.0, 0.3, (-28, -20)), "sad": (-0.6, 0.3, (-33, -25))}
EXPRESSION = {"anger": {"brow_eye_gap": 0.14}, "fear": {"brow_eye_gap": 0.5},
              "happy": {"lip_corner_lift": 0.15},
              "sad": {"brow_eye_gap": 0.5, "lip_corner_lift": -0.12},
              "disgust": {"lip_corner_lift": -0.1}}
"""The face measures (annotator/core/expression.py) of each emotion's FACE wording: what it
claims is shown."""
FACE = {
    "anger": ["brows drawn together and lowered", "jaw clenched and lips pressed thin",
              "a hard stare with narrowed eyes", "nostrils flared, mouth tight"],
    "disgust": ["upper lip raised and nose wrinkled", "mouth pulled down on one side",
                "a grimace with the head turned slightly away", "eyes narrowed, lip curled"],
    "fear": ["eyes wide open and brows raised together", "lips stretched back tensely",
             "a frozen face with darting eyes", "raised upper eyelids, mouth slightly open"],
    "happy": ["a broad smile with raised cheeks", "eyes crinkled at the corners in a smile",
              "a relaxed open smile showing teeth", "lifted cheeks and a soft grin"],
    "neutral": ["a relaxed face with little movement", "an even expression, mouth at rest",
                "steady gaze and a still face", "no marked expression, brows level"],
    "sad": ["inner brows raised and mouth corners down", "downcast eyes and a slack face",
            "lips pressed with a slight tremble", "a drooping face looking down"],
}
VOICE = {
    "anger": ["a sharp, forceful voice", "loud and clipped speech", "a raised voice with hard "
              "onsets", "tense, fast speech"],
    "disgust": ["a flat voice with a drawn-out tone", "low, curt speech", "a clipped, cold "
                "tone", "slow speech with a sneering tone"],
    "fear": ["a shaky, fast voice", "breathy speech with a trembling pitch", "a tight voice "
             "that rises at the ends", "hurried speech with short pauses"],
    "happy": ["a bright, lively voice", "a warm tone with rising pitch", "animated speech with "
              "quick tempo", "a light voice with laughter in it"],
    "neutral": ["an even, moderate voice", "a steady tone at normal tempo", "calm speech "
                "without emphasis", "a level voice with regular pauses"],
    "sad": ["a soft, slow voice", "a quiet voice with long pauses", "low energy speech that "
            "trails off", "a subdued tone with a falling pitch"],
}
BODY = ["head held still, shoulders level", "leaning slightly forward", "small head shakes",
        "hands out of frame, posture upright", "shoulders raised and tense", "slumped posture",
        "frequent nods", "head tilted to one side"]
PLANTED = ("zz_valence_conflict", "zz_voice_without_audio", "zz_face_without_face",
           "zz_duplicate", "zz_near_duplicate", "zz_truncated", "zz_loud_but_quiet",
           "zz_smile_not_shown", "zz_audio_not_received")


def _description(rng: np.random.Generator, emotion: str, cues: dict) -> dict:
    valence, arousal, _ = PROFILE[emotion]
    loud, f0 = cues["audio"]["loudness_db"], cues["audio"]["f0_median_hz"]
    face = f"{rng.choice(FACE[emotion])}; a face in {cues['video']['face_frames_fraction']:.0%}" \
        f" of frames"
    voice = f"{rng.choice(VOICE[emotion])}, loudness near {loud:.0f} dB, pitch around " \
        f"{f0:.0f} Hz"
    others = [e for e in LABELS if e != emotion and np.sign(PROFILE[e][0]) == np.sign(valence)]
    return {
        "face": face, "body": str(rng.choice(BODY)), "voice": voice,
        "cross_modal": f"face and voice agree on {emotion} (clip {rng.integers(1e6)})",
        "primary_emotion": emotion,
        "secondary_emotions": [str(rng.choice(others))] if others and rng.random() < 0.3 else [],
        "valence": round(float(np.clip(valence + rng.normal(0, 0.1), -1, 1)), 2),
        "arousal": round(float(np.clip(arousal + rng.normal(0, 0.1), 0, 1)), 2),
        "intensity": round(float(rng.uniform(0.3, 0.9)), 2),
        "confidence": round(float(rng.uniform(0.4, 0.95)), 2),
        "evidence": [{"claim": face.split(";")[0][:120], "source": "face", "detail": "frames"},
                     {"claim": "loudness", "source": "cues", "detail": f"{loud:.1f} dB"}],
        "summary": f"The speaker shows {emotion} with intensity {rng.integers(3, 10)} of 10.",
    }


def _cues(rng: np.random.Generator, emotion: str) -> dict:
    """Typical cues (annotator/core/cues.py) with the emotion's loudness, a voice's F0, most
    frames holding a face and the emotion's facial expression."""
    low, high = PROFILE[emotion][2]
    return cue_spec.typical(
        audio={"loudness_db": round(float(rng.uniform(low, high)), 1),
               "f0_median_hz": round(float(rng.uniform(110, 230)), 1)},
        video={"face_frames_fraction": round(float(rng.uniform(0.75, 1)), 3)},
        face=EXPRESSION.get(emotion, {}))


def _row(clip_id: str, label: str, description: dict | None, cues: dict, path: str) -> dict:
    ok = description is not None
    return make_row(
        clip_id=clip_id, status="ok" if ok else "failed",
        error_kind=None if ok else "truncated",
        error=None if ok else "hit the output budget (2048 tokens)",
        description=description, samples=None,
        reasoning="Step by step: the cues and the face." if ok else None,
        raw_output=json.dumps(description) if ok else '{"face": "calm and',
        label=label, label_hint=None, speaker="s1", split="train", dataset="synthetic", path=path,
        audio_path=None, has_video=True, has_audio=cues["audio"] is not None, media_note="",
        num_frames=8, fps=4.0, duration_s=3.0, media_sha256=clip_id, cues=cues,
        model="synthetic", model_revision="0", engine="none",
        template="describe_av@4", template_sha256="0", prompt_sha256="0",
        schema_version=SCHEMA_VERSION, generation_mode="one-pass, reasoning field first",
        sampling="{}", cache_key=clip_id, num_input_tokens=500,
        num_output_tokens=300 if ok else 2048, video_tokens=128,
        audio_tokens=75 if cues["audio"] is not None else 0,
        turns=[{"phase": "one-pass", "text": None, "output_tokens": 300 if ok else 2048,
                "video_tokens": 128, "audio_tokens": 75 if cues["audio"] is not None else 0}],
        refinements=None, finish_reason="stop" if ok else "length",
        latency_s=1.0, attempts=1, sent=None, run_id="synthetic", created_at=datetime.now(UTC))


def write_synthetic_run(out: str | Path, n: int, seed: int = 0, planted: bool = True,
                        media: list[str] | None = None, agreement: float = 0.7,
                        samples: int = 1, stable: float = 0.8, labelled: bool = True) -> Path:
    """Write `n` clean rows (and the PLANTED faults) as a run in `out`; returns `out`.

    Dataset labels match the described emotion for a share `agreement` of clean rows. With
    `samples` > 1, each row has samples - 1 extra samples that keep its emotion with
    probability `stable` each (as `run --samples` would store). `labelled=False`: a corpus
    without dataset labels (the descriptions still use the label set)."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    media = media or [str(out / "media" / "missing.mp4")]
    has_video = {m: _has_video(m) for m in media}
    rows = []
    for i in range(n):
        emotion = LABELS[i % len(LABELS)]
        label = emotion if rng.random() < agreement else str(rng.choice(LABELS))
        label = label if labelled else None
        cues = _cues(rng, emotion)
        path = media[i % len(media)]
        row = _row(f"c{i:07d}", label, _description(rng, emotion, cues), cues, path)
        if not has_video[path]:  # an audio-only clip: nothing seen, and the text says so
            row["has_video"], row["cues"]["video"], row["cues"]["face"] = False, None, None
            row["video_tokens"] = 0
            row["description"].update(face="no video, so not observable",
                                      body="no video, so not observable")
            row["description"]["evidence"] = row["description"]["evidence"][1:]
        if samples > 1:
            row["samples"] = [_sample(rng, row["description"], stable)
                              for _ in range(samples - 1)]
        rows.append(row)
    if planted:
        rows += [{**row, "label": row["label"] if labelled else None}
                 for row in _planted(rng, rows[0], media)]
    store = Store(out)
    for start in range(0, len(rows), 50_000):
        store.commit(pa.Table.from_pylist(rows[start:start + 50_000], schema=ROW_SCHEMA),
                     "synthetic", {"run_id": "synthetic"})
    # a real run records its manifest, and the report links media under its folder only
    manifest = str(Path(media[0]).parent / "manifest.csv") if media else None
    write_json(out / "run.json", {"run_id": "synthetic", "labels": LABELS,
                                  "config": {"manifest": manifest}})
    return out


def _sample(rng: np.random.Generator, description: dict, stable: float) -> dict:
    emotion = description["primary_emotion"] if rng.random() < stable else \
        str(rng.choice(LABELS))
    return {"primary_emotion": emotion,
            "valence": round(float(np.clip(description["valence"] + rng.normal(0, 0.1), -1, 1)),
                             2),
            "arousal": description["arousal"], "confidence": description["confidence"],
            "summary": description["summary"].replace("shows", str(rng.choice(
                ["shows", "displays", "expresses"])))}


def _has_video(path: str) -> bool:
    from annotator.core.media import MediaError, probe

    try:
        return probe(path, None).has_video
    except MediaError:  # no file: the row still describes a video clip
        return True


def _planted(rng: np.random.Generator, original: dict, media: list[str]) -> list[dict]:
    def make(clip_id: str, emotion: str, change) -> dict:
        cues = _cues(rng, emotion)
        description = _description(rng, emotion, cues)
        row = _row(clip_id, emotion, description, cues, media[0])
        change(row)
        return row

    def silent(row):
        row["cues"]["audio"], row["has_audio"] = None, False
        row["description"]["voice"] = "a loud, trembling voice that speeds up"

    def faceless(row):
        row["cues"]["video"]["face_frames_fraction"] = 0.0
        row["cues"]["face"] = {c.name: None for c in cue_spec.FACE} | {"landmarked_frames": 0}
        row["description"]["face"] = "smiling broadly, cheeks raised"

    def near(row):
        summary = original["description"]["summary"].replace("shows", "displays")
        row["description"] = {**original["description"], "summary": summary}

    def loud_but_quiet(row):
        row["cues"]["audio"]["loudness_db"] = -45.0
        row["description"]["voice"] = "shouting at the top of the voice"

    return [
        make("zz_valence_conflict", "happy",
             lambda r: r["description"].update(valence=-0.8)),
        make("zz_voice_without_audio", "fear", silent),
        make("zz_face_without_face", "happy", faceless),
        make("zz_duplicate", original["description"]["primary_emotion"],
             lambda r: r.update(description=dict(original["description"]))),
        make("zz_near_duplicate", original["description"]["primary_emotion"], near),
        _row("zz_truncated", "sad", None, _cues(rng, "sad"), media[0]),
        make("zz_loud_but_quiet", "anger", loud_but_quiet),
        make("zz_smile_not_shown", "happy",
             lambda r: r["cues"]["face"].update(lip_corner_lift=0.01)),
        make("zz_audio_not_received", "neutral", lambda r: r.update(audio_tokens=0)),
    ]
