"""`--engine openai` through a real `vllm serve` against the in-process vLLM engine, same clips
and model: is the HTTP path the bottleneck?

    .venv/bin/python -m benchmarks.endpoint --clips 40 --json
    .venv/bin/python -m benchmarks.endpoint --clips 30 \
        --model ~/.cache/vaemo/models/SmolLM2-135M-Instruct --send-media text

The server is set up as the in-process engine sets up its `LLM` (float32, eager, the guidance
backend, the same max_num_seqs; tests/builders/served.py) and started once. Each round runs
`vaemo-annotate run` both ways, back to back in an order that rotates; clips/s counts from the
moment each run's engine had its first prepared batch to its last commit (the start-ups are
not the HTTP path's cost: the in-process engine's 30 s hides the first clips' preparation,
which the served engine, ready in half a second, waits for). The figure is the round whose ratio
(served / in-process) is the median. Default model: a tiny random Qwen2.5-Omni, whose frames
and audio go over the wire (--send-media vllm), the heaviest requests the path carries.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from benchmarks.pipeline import pipeline, write_corpus

os.environ.setdefault("OMP_NUM_THREADS", "1")


def steady(run: dict) -> float:
    """Clips/s from the engine's first prepared batch to the run's last commit."""
    busy = run["after_engine_ready_s"] - (run["breakdown_s"]["engine_wait_first_batch"] or 0)
    return run["clips"] / busy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=40)
    parser.add_argument("--model", help="model folder (default: a tiny random Qwen2.5-Omni)")
    parser.add_argument("--send-media", default="vllm", choices=["vllm", "text"])
    parser.add_argument("--generation", default="two-phase", choices=["one-pass", "two-phase"])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--think-tokens", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from annotator.config import RunConfig
    from tests.builders.served import vllm_serve
    from tests.builders.tiny_models import build_tiny_omni

    work = Path(tempfile.mkdtemp(prefix="vaemo-endpoint-"))
    model = Path(args.model).expanduser() if args.model else build_tiny_omni(
        work / "tiny-omni")
    manifest = write_corpus(work / "corpus", args.clips)
    common = dict(manifest=manifest, retries=0, labels="anger,disgust,fear,happy,neutral,sad",
                  generation=args.generation, max_tokens=args.max_tokens,
                  think_tokens=args.think_tokens)
    local = RunConfig(out=work / "out", model=str(model), dtype="float32", **common)
    flags = ["--trust-request-mm-kwargs", "--limit-mm-per-prompt",
             '{"video": 1, "audio": 1}'] if args.send_media == "vllm" else []
    with vllm_serve(model, "served", work / "serve.log", *flags) as url:
        served = RunConfig(out=work / "out", model="served", engine="openai", endpoint=url,
                           send_media=args.send_media, max_concurrency=32, **common)
        runs: dict[str, list] = {"in_process": [], "served": []}
        ratios = []
        for r in range(args.rounds):
            order = ["in_process", "served"][::1 if r % 2 == 0 else -1]
            for what in order:
                config = local if what == "in_process" else served
                runs[what].append(pipeline(config, work / f"{what}{r}"))
            a, b = runs["in_process"][-1], runs["served"][-1]
            ratios.append(steady(b) / steady(a))
            if not args.json:
                print(json.dumps({"round": r, "in_process": a, "served": b}), flush=True)
    middle = sorted(range(args.rounds), key=lambda i: ratios[i])[args.rounds // 2]
    a, b = runs["in_process"][middle], runs["served"][middle]
    print(json.dumps({
        "model": model.name, "send_media": args.send_media, "clips": a["clips"],
        "generation": args.generation, "date": time.strftime("%Y-%m-%d"),
        "rounds": args.rounds, "cores": os.cpu_count(),
        "in_process_clips_per_s": round(steady(a), 3),
        "served_clips_per_s": round(steady(b), 3),
        "in_process_wall_s": a["wall_s"], "served_wall_s": b["wall_s"],
        "served_over_in_process": round(ratios[middle], 3),
        "by_round": [round(x, 3) for x in ratios], "runs": runs}))


if __name__ == "__main__":
    main()
