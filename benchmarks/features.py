"""Feature extraction: the batched loader (decoding workers, batched forwards) against the
one-clip-per-forward loop it replaced, on the device this machine picks, alternating runs.

    .venv/bin/python -m benchmarks.features --clips 48 --workers 2 --rounds 2

Encoders: the tiny VideoMAE + wav2vec2 pair (decoding dominates: what workers buy) and a
VideoMAE-base-sized random encoder (the forward dominates: what batching buys on a GPU).
And the measured features (no encoder: cues, thumbnail, MFCCs), CPU seconds per clip and
clips/s in one process and in --workers processes.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.gpu_check import base_videomae, write_clips


def clips_per_s(encoder, media, device, batch: int, workers: int) -> float:
    from injection.training.loader import extract

    started = time.perf_counter()
    extract(encoder, media, device=device, batch_size=batch, workers=workers)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(media) / (time.perf_counter() - started)


def measured(media, folder: Path, workers: int) -> dict:
    """`vaemo-inject features` without an encoder, cold cache each time."""
    import resource

    from injection.commands import measured_features
    from injection.training.features import FeatureCache

    def cpu_s() -> float:
        used = [resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                    resource.RUSAGE_CHILDREN)]
        return sum(u.ru_utime + u.ru_stime for u in used)

    found = {}
    for processes in (0, workers):
        hashes = [f"{processes}{i:063x}" for i in range(len(media))]  # nothing cached
        cpu, started = cpu_s(), time.perf_counter()
        measured_features(FeatureCache(folder / f"measured{processes}", "m"), media, hashes,
                          processes)
        wall = time.perf_counter() - started
        found[f"workers_{processes}"] = {"clips_per_s": round(len(media) / wall, 2),
                                         "cpu_s_per_clip": round((cpu_s() - cpu) / len(media), 3)}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--base-clips", type=int, default=8,
                        help="clips for the VideoMAE-base-sized encoder (slow on a CPU)")
    args = parser.parse_args()

    from tests.builders.tiny_encoders import build_tiny_va_encoder
    from injection.encoders.va import load_encoder
    from injection.training.loader import pick_device

    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(1)
    report = {"device": str(device), "workers": args.workers}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        media = [(p, None) for p in write_clips(folder / "clips", args.clips)]
        encoders = {"tiny_pair": (load_encoder(build_tiny_va_encoder(folder / "pair")), media),
                    "videomae_base": (load_encoder(base_videomae(folder / "base")),
                                      media[:args.base_clips])}
        for name, (encoder, clips) in encoders.items():
            clips_per_s(encoder, clips[:2], device, 2, 0)  # warm-up
            runs = {"one_clip_loop": [], "batched_loader": []}
            for _ in range(args.rounds):  # alternating: the machine's noise hits both
                runs["one_clip_loop"].append(clips_per_s(encoder, clips, device, 1, 0))
                runs["batched_loader"].append(
                    clips_per_s(encoder, clips, device, 16, args.workers))
            best = {k: round(max(v), 2) for k, v in runs.items()}
            best["ratio"] = round(best["batched_loader"] / best["one_clip_loop"], 2)
            report[name] = best
            print(name, best, flush=True)
        report["measured"] = measured(media, folder, args.workers)
        print("measured", report["measured"], flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
