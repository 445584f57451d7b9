"""kill -9 a run N times at random moments, then check the invariants (see
tests/builders/chaos.py): 0 lost, 0 doubled, every file readable, rows equal to an
uninterrupted run, no temp files.

    .venv/bin/python -m benchmarks.chaos --kills 10 --clips 24
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--clips", type=int, default=24)
    parser.add_argument("--latency", type=float, default=0.5,
                        help="fake engine seconds per request (how long a run lasts)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", help="model folder (default: a tiny random Qwen2.5-Omni)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from tests.builders.chaos import run_chaos
    from tests.builders.tiny_models import build_tiny_omni

    work = Path(tempfile.mkdtemp(prefix="vaemo-chaos-"))
    model = Path(args.model) if args.model else build_tiny_omni(work / "tiny-omni")
    result = run_chaos(work, model, args.kills, args.clips, args.latency, args.seed)
    print(json.dumps({k: v for k, v in result.items() if k != "kills_log"}, indent=2))


if __name__ == "__main__":
    main()
