"""The heads trainer on cached features against a bare PyTorch loop of the same math (same
projector, losses, AdamW, schedule, clipping and batches; no logging, metrics file or
checkpoints), at N clips with memory-mapped features as the feature cache serves them.

    .venv/bin/python -m benchmarks.train_loop --clips 10000 --steps 300
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np


def synthetic_features(folder: Path, clips: int, va_dim: int, text_dim: int, labels: int):
    """Random features saved as .npy and read memory-mapped, like the feature cache's shards."""
    from injection.training.train import Features

    rng = np.random.default_rng(0)
    arrays = {}
    for name, dim in (("va", va_dim), ("text", text_dim)):
        path = folder / f"{name}.npy"
        np.save(path, rng.standard_normal((clips, dim), dtype=np.float32))
        arrays[name] = np.load(path, mmap_mode="r")
    label_text = rng.standard_normal((labels, text_dim), dtype=np.float32)
    return Features({"clip": arrays["va"]}, {"description": arrays["text"]},
                    rng.integers(0, labels, clips), label_text)


def bare_loop(features, config, steps: int) -> float:
    """steps/s of the same math without the trainer around it."""
    import torch

    from injection.training.train import (batch_rows, losses, lr_schedule, make_optimizer,
                                          new_projector, weighted_total)

    projector = new_projector(features, config)
    optimizer = make_optimizer(projector, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_schedule(config))
    label_text = torch.from_numpy(features.label_text)
    started = time.perf_counter()
    for step in range(steps):
        rows = batch_rows(len(features), config.batch_size, step, config.seed)
        va = {"clip": torch.from_numpy(np.asarray(features.va["clip"][rows], np.float32))}
        text = torch.from_numpy(np.asarray(features.text["description"][rows], np.float32))
        labels = torch.from_numpy(features.labels[rows])
        optimizer.zero_grad(set_to_none=True)
        weighted_total(losses(projector(va, text, label_text), labels, config),
                       config).backward()
        torch.nn.utils.clip_grad_norm_(projector.parameters(), config.clip_grad)
        optimizer.step()
        scheduler.step()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=10_000)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from injection.config import TrainConfig
    from injection.training.train import fit

    work = Path(tempfile.mkdtemp(prefix="vaemo-train-"))
    features = synthetic_features(work, args.clips, 768, 384, 7)
    config = TrainConfig(descriptions=work, encoder=work, out=work / "out", steps=args.steps,
                         batch_size=args.batch_size, checkpoint_every=10 ** 9)
    trainer, bare = [], []
    for i in range(args.repeats):
        run = config.model_copy(update={"out": work / f"out{i}"})
        started = time.perf_counter()
        fit(features, run, run.out)
        trainer.append(args.steps / (time.perf_counter() - started))
        bare.append(bare_loop(features, config, args.steps))
    result = {"clips": args.clips, "steps": args.steps, "batch_size": args.batch_size,
              "trainer_steps_per_s": round(float(np.median(trainer)), 1),
              "bare_steps_per_s": round(float(np.median(bare)), 1),
              "trainer_over_bare": round(float(np.median(trainer) / np.median(bare)), 3),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
