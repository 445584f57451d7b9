"""Train heads on a fixed synthetic feature set (for the kill/resume test; distributed
training is tested through the real CLI under torchrun).

    python -m tests.injection.fit_script OUT [--resume] [--sleep S]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from injection.config import TrainConfig
from injection.training.train import Features, fit

STEPS = 40


def features(seed: int = 0) -> Features:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 256)
    va = rng.normal(size=(256, 24)).astype(np.float32) + labels[:, None]
    text = rng.normal(size=(256, 16)).astype(np.float32) + labels[:, None]
    return Features({"video": va[:, :12], "audio": va[:, 12:]}, {"description": text},
                    labels, rng.normal(size=(4, 16)).astype(np.float32))


def config(out: Path, **extra) -> TrainConfig:
    return TrainConfig(descriptions=out, encoder=out, out=out, steps=STEPS, batch_size=32,
                       checkpoint_every=5, warmup=5, dim=16, hidden=32, **extra)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = fit(features(), config(args.out, resume=args.resume), args.out,
                 log=lambda record: time.sleep(args.sleep))
    (args.out / "history.json").write_text(json.dumps(result["history"]))


if __name__ == "__main__":
    main()
