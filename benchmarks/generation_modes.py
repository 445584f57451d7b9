"""One-pass vs two-phase vs describe-then-fuse generation (and repetition penalty), through
the real `run`.

For each setting, annotates the demo corpus (real read speech over real portraits; every clip
is calm read speech, so 'neutral' is the expected label) and prints: rows ok, failures by kind,
output tokens and wall seconds per clip, the labels it chose, label agreement, how
repetitive the reasoning is (share of repeated word 4-grams), how often the reasoning cites a
measured cue value, and per turn: output tokens and the video and audio tokens it added.

    .venv/bin/python -m benchmarks.generation_modes                 # tiny random Qwen2.5-Omni
    .venv/bin/python -m benchmarks.generation_modes --model smollm2 # the CPU default
"""

from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

SETTINGS = {
    "one-pass": {"generation": "one-pass"},
    "two-phase": {"generation": "two-phase"},
    "one-pass rp1.15": {"generation": "one-pass", "repetition_penalty": 1.15},
    "two-phase rp1.15": {"generation": "two-phase", "repetition_penalty": 1.15},
    "describe-then-fuse": {"generation": "two-phase", "template": "describe_then_fuse"},
}
LABELS = "anger,disgust,fear,happy,neutral,sad"


def repeated_4grams(text: str) -> float:
    """Share of word 4-grams that already occurred earlier in the text (0: no loops)."""
    words = text.lower().split()
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    if not grams:
        return 0.0
    return 1 - len(set(grams)) / len(grams)


def cites_a_cue(text: str, cue_values: dict) -> bool:
    """Whether the text quotes any measured number (to the precision the prompt showed)."""
    numbers = {str(v) for v in cue_values.values() if isinstance(v, int | float)}
    found = set(re.findall(r"-?\d+(?:\.\d+)?", text))
    return bool(numbers & found)


def summarise(rows: list[dict], seconds: float) -> dict:
    from annotator.core.cues import for_template

    ok = [r for r in rows if r["status"] == "ok"]
    texts = [r["reasoning"] for r in ok]
    return {
        "clips": len(rows), "ok": len(ok),
        "failed": dict(Counter(r["error_kind"] for r in rows if r["status"] != "ok")),
        "tokens_per_clip": round(sum(r["num_output_tokens"] for r in rows) / len(rows), 1),
        "seconds_per_clip": round(seconds / len(rows), 1),
        "label_agreement": round(sum(r["description"]["primary_emotion"] == r["label"]
                                     for r in ok) / max(len(ok), 1), 2),
        "repeated_4grams": round(sum(map(repeated_4grams, texts)) / max(len(texts), 1), 2),
        "cites_cue": round(sum(cites_a_cue(t, for_template(r["cues"]))
                               for t, r in zip(texts, ok)) / max(len(ok), 1), 2),
        "reasoning_chars": round(sum(map(len, texts)) / max(len(texts), 1)),
        "labels": dict(Counter(r["description"]["primary_emotion"] for r in ok)),
        "per_turn": per_turn(rows),
    }


def per_turn(rows: list[dict]) -> dict:
    """{phase: mean output tokens, video and audio tokens added} over the rows' turns."""
    turns: dict[str, list[dict]] = {}
    for row in rows:
        for turn in row["turns"] or []:
            turns.setdefault(turn["phase"], []).append(turn)
    return {phase: {key: round(sum(t[key] or 0 for t in ts) / len(ts), 1)
                    for key in ("output_tokens", "video_tokens", "audio_tokens")}
            for phase, ts in turns.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder, 'smollm2', or default: tiny random Omni")
    parser.add_argument("--clips", type=int, default=10)
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated subset of: {', '.join(SETTINGS)}")
    args = parser.parse_args()

    from annotator.config import RunConfig
    from annotator.demo import build_demo_corpus
    from annotator.models import smollm2_folder
    from annotator.pipeline import run
    from annotator.core.store import Store
    from tests.builders.tiny_models import build_tiny_omni

    work = Path(tempfile.mkdtemp(prefix="vaemo-modes-"))
    model = (str(smollm2_folder()) if args.model == "smollm2" else args.model
             or str(build_tiny_omni(work / "tiny-omni")))
    manifest = build_demo_corpus(work / "demo")
    results = {}
    for name in args.settings.split(","):
        config = RunConfig(manifest=manifest, out=work / name.replace(" ", "_"), model=model,
                           subset=str(args.clips), labels=LABELS, batch_size=args.clips,
                           **SETTINGS[name])
        started = time.perf_counter()
        run(config)
        results[name] = summarise(Store(config.out).read().to_pylist(),
                                  time.perf_counter() - started)
        print(name, json.dumps(results[name]), flush=True)
    print(json.dumps({"model": Path(model).name, "results": results}, indent=1))


if __name__ == "__main__":
    main()
