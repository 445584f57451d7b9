"""Planning cost per clip: manifest -> subset -> plan (probe, hash, render, cache key) for N
rows over the demo corpus's clips, cold (media hashed) and warm (hashes from the cache), in
Ray tasks and in the driver's threads (each with its own cold hash cache); then a re-run that
is all cache hits (`vaemo-annotate run` as a user types it, Python start included), over a
store holding a row with each clip's key.

    .venv/bin/python -m benchmarks.planning --rows 10000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--model", help="model folder (default: a tiny random Qwen2.5-Omni)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="vaemo-plan-"))
    os.environ["VAEMO_CACHE_DIR"] = str(work / "cache")  # a cold hash cache

    from annotator import pipeline
    from annotator.core import hashing
    from annotator.config import RunConfig
    from annotator.demo import build_demo_corpus
    from tests.builders.tiny_models import build_tiny_omni
    from annotator.pipeline import plan_clips
    from annotator.resolve import resolve

    model = args.model or str(build_tiny_omni(work / "tiny-omni"))
    demo = build_demo_corpus(work / "demo")
    clips = [line.split(",")[1] for line in demo.read_text().splitlines()[1:]]
    # distinct files, so that the cold pass really hashes every row's bytes
    lines = ["path,clip_id,label"]
    for i in range(args.rows):
        target = work / "media" / f"{i:07d}.mp4"
        target.parent.mkdir(exist_ok=True)
        os.link(demo.parent / clips[i % len(clips)], target)
        lines.append(f"{target},r{i:07d},neutral")
    manifest = work / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    config = RunConfig(manifest=manifest, out=work / "out", model=model, labels="crema-d")
    resolved = resolve(config, "cpu")
    result = {"rows": args.rows, "cpus": os.cpu_count()}
    plans = {}
    for where, plan_on_ray_at in (("ray", 1), ("driver", args.rows + 1)):
        os.environ["VAEMO_CACHE_DIR"] = str(work / f"cache-{where}")  # cold for each
        hashing._db = None
        pipeline.PLAN_ON_RAY_AT, pipeline.PLAN_ON_RAY_CPUS = plan_on_ray_at, 1
        for name in ("cold", "warm"):
            started = time.perf_counter()
            plans[where] = plan_clips(resolved)  # Ray's start counts in the cold Ray figure
            seconds = time.perf_counter() - started
            result[f"{where}_{name}_ms_per_clip"] = round(1000 * seconds / args.rows, 2)
        result[f"{where}_peak_rss_mib"] = round(
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    assert plans["ray"].equals(plans["driver"])
    plan = plans["driver"]
    result["cached_rerun_s"] = cached_rerun(resolved, plan, config, model)
    print(json.dumps(result))


def cached_rerun(resolved, plan, config, model: str) -> float:
    """Seconds of `vaemo-annotate run` when every clip already has its row: the rows are
    stored as a finished run would leave them (one file per 16 clips, then compacted by the
    run's own start-up), with the run's plan index."""
    import subprocess
    import sys

    from annotator.resume import known_hits, write_plan_index
    from annotator.core.rows import ErrorKind
    from annotator.stages.rows import failed_rows
    from annotator.core.store import Store

    store = Store(config.out)
    rows = failed_rows(plan, resolved.ctx, ErrorKind.ENGINE, "a stand-in row for the benchmark")
    for start in range(0, len(rows), 16):
        store.commit(rows.slice(start, 16), resolved.ctx.run_id, {})
    write_plan_index(resolved, plan, {}, known_hits(resolved, store)[1])
    command = [sys.executable, "-m", "annotator.cli", "run", "--manifest", str(config.manifest),
               "--out", str(config.out), "--model", model, "--labels", "crema-d"]
    subprocess.run(command, check=True, capture_output=True)  # compacts the 16-row files
    started = time.perf_counter()
    done = subprocess.run(command, check=True, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    assert "engine not started" in done.stderr, done.stderr[-2000:]
    return round(seconds, 2)


if __name__ == "__main__":
    main()
