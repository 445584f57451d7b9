"""Same rendered prompts (with media) through vLLM, through transformers, and through `run`.

Prints output tokens/s per engine (excluding engine start-up), the vLLM/transformers ratio, and
the whole pipeline's clips/s over the raw vLLM engine's clips/s (what Ray, decoding, planning
and Parquet cost on top of the engine, start-up excluded and included).

    .venv/bin/python -m benchmarks.engines                      # tiny random Qwen2.5-Omni
    .venv/bin/python -m benchmarks.engines --model ~/.cache/vaemo/models/SmolLM2-135M-Instruct
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model folder (default: a tiny random Qwen2.5-Omni)")
    parser.add_argument("--clips", type=int, default=10, help="demo clips to use (max 10)")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--hf-clips", type=int, default=4,
                        help="clips for the (slow) transformers engine")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from annotator.config import RunConfig
    from annotator.demo import build_demo_corpus
    from tests.builders.tiny_models import build_tiny_omni
    from annotator.engines.factory import create_engine
    from annotator.pipeline import plan_clips, run
    from annotator.resolve import resolve
    from annotator.stages.generate import request_for
    from annotator.stages.prepare import prepare_batch

    work = Path(tempfile.mkdtemp(prefix="vaemo-bench-"))
    model = args.model or str(build_tiny_omni(work / "tiny-omni"))
    manifest = build_demo_corpus(work / "demo")
    config = RunConfig(manifest=manifest, out=work / "out", model=model,
                       subset=str(args.clips), max_tokens=args.max_tokens, retries=0,
                       labels="anger,disgust,fear,happy,neutral,sad", batch_size=args.clips,
                       dtype="float32", generation="one-pass")  # one guided pass per clip
    resolved = resolve(config, "cpu")
    plan = plan_clips(resolved)
    spec = resolved.spec
    decoded = prepare_batch(plan, ctx=resolved.ctx)
    requests = [request_for(r, resolved.ctx) for r in decoded.to_pylist()]
    options = resolved.ctx.options
    results = {"model": spec.name, "clips": len(requests), "max_tokens": args.max_tokens}
    for kind, subset in (("vllm", requests), ("transformers", requests[:args.hf_clips])):
        t0 = time.perf_counter()
        engine = create_engine(kind, spec, options)
        startup = time.perf_counter() - t0
        t0 = time.perf_counter()
        gens = engine.generate(subset)
        elapsed = time.perf_counter() - t0
        tokens = sum(len(g.token_ids) for g in gens)
        results[kind] = {"startup_s": round(startup, 2), "clips": len(subset),
                         "seconds": round(elapsed, 2), "output_tokens": tokens,
                         "tokens_per_s": round(tokens / elapsed, 1),
                         "clips_per_s": round(len(subset) / elapsed, 3)}
        del engine
    for engine, out in (("vllm", "out"), ("fake", "out-fake")):
        # the fake engine answers instantly: the pipeline's own ceiling (Ray, decode, cues)
        t0 = time.perf_counter()
        summary = run(config.model_copy(update={
            "out": work / out, "compute": config.compute.model_copy(update={"engine": engine})}))
        wall = time.perf_counter() - t0
        results["pipeline" if engine == "vllm" else "pipeline_fake_engine"] = {
            "wall_s": round(wall, 2), "clips_per_s_wall": round(len(requests) / wall, 3),
            "engine_first_batch_s": summary["engine"].get("first_batch_s"),
            "output_tokens_per_s": summary["throughput"]["output_tokens_per_s"]}
    v, h = results["vllm"], results["transformers"]
    results["ratios"] = {
        "vllm_over_transformers_tokens_per_s": round(v["tokens_per_s"] / h["tokens_per_s"], 2),
        "pipeline_over_engine_clips_per_s_including_startup": round(
            results["pipeline"]["clips_per_s_wall"]
            / (len(requests) / (v["seconds"] + v["startup_s"])), 2),
        # the pipeline's whole wall time (Ray and engine start included) over the raw
        # engine's generate time alone: a lower bound of the steady-state ratio
        "pipeline_wall_over_engine_generate_clips_per_s": round(
            results["pipeline"]["clips_per_s_wall"] / v["clips_per_s"], 3),
    }
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
