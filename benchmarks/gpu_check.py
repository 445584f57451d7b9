"""The injection path on whatever device this machine picks (a GPU where there is one), in
minutes: `make gpu-check`, or `python -m benchmarks.gpu_check --json OUT.json`.

1. features: the batched loader on the picked device (bf16 autocast on a GPU) against float32
   on the CPU, per architecture (cosine similarity per clip);
2. throughput: a VideoMAE-base-sized random encoder, batched with decoding workers vs the
   one-clip-per-forward loop, clips/s;
3. `vaemo-inject train` through the CLI in --mode heads, blocks and lora, then eval, export,
   and the export reloaded giving the features the trainer saw;
4. `torchrun --nproc-per-node 2 -m injection.cli train` where the machine has 2+ GPUs (NCCL),
   its losses against one process with the global batch.

Needs no model hub: every model is random from its config, the text encoder included; clips
are written here (real portraits from scikit-image, tones of several lengths).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from annotator.core.layout import InjectionFolder

ROOT = Path(__file__).resolve().parents[1]


def write_clips(folder: Path, count: int) -> list[str]:
    from skimage import data

    from annotator.demo import moving_portrait, write_clip

    faces = [data.astronaut(), data.chelsea(), data.coffee()]
    paths = []
    for i in range(count):
        seconds = 1.0 + (i % 4) * 0.75  # lengths differ: padding and masks matter
        t = np.arange(int(16_000 * seconds)) / 16_000
        wave = (0.3 * np.sin(2 * np.pi * (180 + 20 * i) * t)).astype(np.float32)
        frames = moving_portrait(faces[i % len(faces)], int(25 * seconds), side=112)
        paths.append(str(write_clip(folder / f"clip{i:03d}.mp4", frames, wave)))
    return paths


def check_features(media, folder: Path, device: torch.device) -> dict:
    from tests.builders.tiny_encoders import build_tiny_architecture
    from injection.encoders.va import load_encoder
    from injection.training.loader import extract

    found = {}
    for name in ("videomae+wav2vec2", "clip_vision+whisper", "ast", "hubert"):
        encoder = load_encoder(build_tiny_architecture(name, folder / name))
        here = extract(encoder, media, device=device, batch_size=8, workers=2)
        cpu = extract(encoder, media, device=torch.device("cpu"), batch_size=8, workers=2,
                      precision="fp32")
        cosine = (here * cpu).sum(1) / (np.linalg.norm(here, axis=1) *
                                        np.linalg.norm(cpu, axis=1))
        found[name] = {"min_cosine_vs_cpu_fp32": round(float(cosine.min()), 5)}
        print(f"features {name}: min cosine vs CPU fp32 {cosine.min():.5f}", flush=True)
    return found


def base_videomae(folder: Path) -> Path:
    """VideoMAE-base's shape (12 layers, 768 wide, 16 frames of 224), random weights."""
    from transformers import VideoMAEConfig, VideoMAEModel

    torch.manual_seed(0)
    VideoMAEModel(VideoMAEConfig(use_mean_pooling=False)).save_pretrained(folder)
    return folder


def throughput(media, folder: Path, device: torch.device, workers: int) -> dict:
    from injection.encoders.va import load_encoder
    from injection.training.loader import extract

    encoder = load_encoder(base_videomae(folder / "videomae-base"))
    extract(encoder, media[:4], device=device, batch_size=4, workers=0)  # warm-up
    timings = {}
    for label, batch, procs in (("one_clip_loop", 1, 0), ("batched_loader", 16, workers)):
        started = time.perf_counter()
        extract(encoder, media, device=device, batch_size=batch, workers=procs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        timings[label] = round(len(media) / (time.perf_counter() - started), 2)
        print(f"throughput {label}: {timings[label]} clips/s", flush=True)
    timings["ratio"] = round(timings["batched_loader"] / timings["one_clip_loop"], 2)
    return timings


def cli(*args: str, env=None) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args[:4])} failed:\n{done.stderr[-4000:]}")
    return done


def check_modes(media, folder: Path, device: torch.device) -> dict:
    from tests.builders.synthetic_runs import write_synthetic_run
    from tests.builders.tiny_encoders import build_tiny_architecture, build_tiny_text_encoder
    from injection.commands import restore
    from injection.training.export import load_injected
    from injection.training.loader import extract

    run = write_synthetic_run(folder / "run", 48, media=media, planted=False)
    encoder = build_tiny_architecture("videomae+wav2vec2", folder / "pair")
    text = build_tiny_text_encoder(folder / "text")
    found = {}
    for mode in ("heads", "blocks", "lora"):
        out = folder / f"inj-{mode}"
        started = time.perf_counter()
        cli("-m", "injection.cli", "train", "--descriptions", str(run), "--encoder",
            str(encoder), "--text-encoder", str(text), "--out", str(out), "--mode", mode,
            "--steps", "20", "--batch-size", "16", "--encoder-lr", "1e-2")
        cli("-m", "injection.cli", "eval", str(out))
        cli("-m", "injection.cli", "export", str(out))
        exported, _, _ = load_injected(InjectionFolder(out).encoder)
        _, prep, _, _ = restore(out, lambda *_: None)
        # on the device (and in the precision) the trainer's features were extracted with
        again = extract(exported, prep.corpus.media, device=device, workers=0)
        seen = np.concatenate([np.asarray(v) for v in prep.features.va.values()], 1) \
            if mode == "heads" else extract(prep.encoder, prep.corpus.media, device=device,
                                            workers=0)
        metrics = [json.loads(x) for x in InjectionFolder(out).metrics.read_text().splitlines()]
        found[mode] = {"seconds": round(time.perf_counter() - started, 1),
                       "first_loss": round(metrics[0]["loss"], 4),
                       "last_loss": round(metrics[-1]["loss"], 4),
                       "export_matches_trainer": bool(np.allclose(again, seen, atol=1e-4))}
        print(f"train --mode {mode}: {found[mode]}", flush=True)
    return found


def check_torchrun(media, folder: Path) -> dict:
    if torch.cuda.device_count() < 2:
        return {"skipped": f"{torch.cuda.device_count()} GPU(s): needs 2"}
    from tests.builders.synthetic_runs import write_synthetic_run
    from tests.builders.tiny_encoders import build_tiny_architecture, build_tiny_text_encoder

    run = write_synthetic_run(folder / "run2", 32, media=media, planted=False)
    encoder = build_tiny_architecture("videomae+wav2vec2", folder / "pair2")
    text = build_tiny_text_encoder(folder / "text2")
    args = ["-m", "injection.cli", "train", "--descriptions", str(run), "--encoder",
            str(encoder), "--text-encoder", str(text), "--steps", "6", "--batch-size", "8",
            "--precision", "fp32"]
    cli(*args, "--out", str(folder / "one"))
    cli("-m", "torch.distributed.run", "--nproc-per-node", "2", *args, "--out",
        str(folder / "two"))
    curves = [[json.loads(x)["loss"] for x in InjectionFolder(folder / n).metrics.read_text()
               .splitlines()] for n in ("one", "two")]
    return {"max_loss_difference": float(np.abs(np.subtract(*curves)).max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, (os.cpu_count() or 2) - 1))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    from injection.training.loader import pick_device

    device = pick_device()
    if device.type == "cpu":
        torch.set_num_threads(1)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        media = [(p, None) for p in write_clips(folder / "clips", args.clips)]
        report["features"] = check_features(media[:16], folder, device)
        report["throughput_videomae_base"] = throughput(media, folder, device, args.workers)
        report["modes"] = check_modes([p for p, _ in media[:16]], folder, device)
        report["torchrun"] = check_torchrun([p for p, _ in media[:16]], folder)
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
