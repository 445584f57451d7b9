"""Decode + cues per clip on one core (what a prepare task does before the engine sees a
clip): decoding, voice cues, face/video cues and facial-expression cues timed apart, over the
demo corpus (real read speech and portraits). Times are the process's CPU time (all its
threads), so a library that spreads over several cores cannot pass for fast on one;
wall-clock clips/s is printed too.

    .venv/bin/python -m benchmarks.prepare --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--corpus", type=Path, help="a demo corpus folder (default: build one)")
    args = parser.parse_args()

    import csv

    from annotator.core.cues import CUES_VERSION, audio_cues, video_and_faces
    from annotator.core.expression import face_cues
    from annotator.demo import build_demo_corpus
    from annotator.core.media import decode
    from annotator.settings import MediaSettings

    corpus = args.corpus or build_demo_corpus(Path(tempfile.mkdtemp()) / "demo").parent
    manifest = corpus / "manifest.csv" if corpus.is_dir() else corpus
    with open(manifest) as f:
        paths = [str(manifest.parent / row["path"]) for row in csv.DictReader(f)]
    media = MediaSettings()
    decode(paths[0], num_frames=media.num_frames)  # imports and first-call set-up
    audio_cues(decode(paths[0]).audio)
    first = decode(paths[0], num_frames=media.num_frames).frames
    face_cues(*video_and_faces(first)[1:])  # loads the landmark model
    parts = {"decode": 0.0, "audio_cues": 0.0, "video_cues": 0.0, "expression_cues": 0.0}
    seconds_of_audio = 0.0
    wall = time.perf_counter()
    for _ in range(args.rounds):
        for path in paths:
            t0 = time.process_time()
            clip = decode(path, num_frames=media.num_frames,
                          max_duration_s=media.max_duration_s, max_side=media.max_side)
            t1 = time.process_time()
            if clip.audio is not None:
                audio_cues(clip.audio)
                seconds_of_audio += len(clip.audio) / 16_000
            t2 = time.process_time()
            if clip.frames is not None:
                _, gray, faces = video_and_faces(clip.frames)
            t3 = time.process_time()
            if clip.frames is not None:
                face_cues(gray, faces)
            t4 = time.process_time()
            parts["decode"] += t1 - t0
            parts["audio_cues"] += t2 - t1
            parts["video_cues"] += t3 - t2
            parts["expression_cues"] += t4 - t3
    wall = time.perf_counter() - wall
    clips = len(paths) * args.rounds
    total = sum(parts.values())
    print(json.dumps({"cues_version": CUES_VERSION, "clips": clips,
                      "mean_audio_s": round(seconds_of_audio / clips, 2),
                      "clips_per_cpu_s": round(clips / total, 2),
                      "expression_clips_per_cpu_s": round(
                          clips / max(parts["expression_cues"], 1e-9), 1),
                      "clips_per_s_wall": round(clips / wall, 2),
                      **{f"{k}_ms": round(1000 * v / clips, 1) for k, v in parts.items()}}))


if __name__ == "__main__":
    main()
