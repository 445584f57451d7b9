"""`vaemo-annotate run` against the raw vLLM engine on the same clips, and where its time goes.

    .venv/bin/python -m benchmarks.pipeline --clips 200 --generation two-phase --json
    .venv/bin/python -m benchmarks.pipeline --clips 30 \
        --model ~/.cache/vaemo/models/SmolLM2-135M-Instruct

Both sides' engines use the dtype and threads a run resolves (`--dtype auto`: bf16 on a CPU
with bf16 instructions; `--cpu-threads`'s default: every core for a text model, all but one
for one that reads media; OMP_NUM_THREADS caps it).
The raw engine is created the way `run` creates it and given every clip at once (two-phase:
all thoughts, then all answers) through vLLM's own `LLM.generate`; its clips/s excludes its
start-up. A second fresh engine is given every clip at once through our step API, which
renders prompts on a thread of its own while the engine steps, as the pipeline's engine does:
`engine_render_thread_clips_per_s`, the engine alone at its best. The pipeline's clips/s
excluding start-up counts from the moment its engine was ready to the last commit; both are
also given with start-up included. Each round runs the three back to back (in an order that
rotates); the figures are the round whose ratio is the median. The breakdown of a run's wall
time: planning, Ray set-up, engine start-up, the engine waiting for its first prepared batch,
idle gaps after it, busy.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path



def write_corpus(folder: Path, count: int) -> Path:
    """`count` distinct clips of 2 s: real read speech (LibriVox) from several offsets over
    moving real portraits, each slightly different: a corner stamp numbers its frames and a
    gain its audio, so no two clips share a decoded video or audio track (shared tracks
    would be served from vLLM's cache of processed media, faster than a real corpus)."""
    import numpy as np

    from annotator.demo import (moving_portrait, portraits, read_wav, speech_files,
                                write_clip, write_manifest_csv)

    faces, speech = list(portraits().values()), [read_wav(w, 20.0) for w in speech_files()]
    rows = []
    for i in range(count):
        wave = speech[i % len(speech)]
        start = (i // len(speech)) * 4_000 % max(1, len(wave) - 32_000)
        frames = moving_portrait(faces[i % len(faces)], 50, side=224).astype(np.int16)
        frames = np.clip(frames + (i % 7) - 3, 0, 255).astype(np.uint8)
        frames[:, :16, :16], frames[:, :16, 16:32] = i % 256, i // 256 % 16 * 16
        path = write_clip(folder / f"clip{i:04d}.mp4", frames,
                          wave[start:start + 32_000] * (1 - i / (4 * count)))
        rows.append({"clip_id": f"clip{i:04d}", "path": path.name, "label": "neutral"})
    return write_manifest_csv(folder / "manifest.csv", rows)


def prepared(config):
    """The run's resolved settings and its prepared clips (media, cues, final prompts), as
    the pipeline's prepare stage makes them: the raw engine's input."""
    from annotator.pipeline import plan_clips
    from annotator.resolve import resolve
    from annotator.stages.prepare import prepare_batch

    resolved = resolve(config, "cpu")
    rows = prepare_batch(plan_clips(resolved), ctx=resolved.ctx).to_pylist()
    return resolved, [r for r in rows if r["error_kind"] is None]


def raw_engine(resolved, rows: list[dict], way: str) -> dict:
    """A fresh engine, created the way `run` creates it, alone on the pipeline's own prompts
    and media, given every clip at once (in turns: every clip's first turn, then every
    clip's next, and so on). `way`:
    "vllm", vLLM's own `LLM.generate`, which renders each prompt and then steps, in one
    thread (the raw engine); "render_thread", our engine's step API, which renders on a
    thread of its own while the engine steps (the pipeline's engine does this)."""
    from annotator.engines.factory import create_engine
    from annotator.engines.vllm_engine import to_generation
    from annotator.stages.generate import request_for

    started = time.perf_counter()
    engine = create_engine("vllm", resolved.spec, resolved.ctx.options)
    startup = time.perf_counter() - started

    def vllm_generate(requests):
        outputs = engine.llm.generate([engine.inputs(r) for r in requests],
                                      [engine.sampling_params(r) for r in requests], use_tqdm=False)
        return [to_generation(o) for o in outputs]

    generate = vllm_generate if way == "vllm" else engine.generate
    started = time.perf_counter()
    ctx, replies = resolved.ctx, [[] for _ in rows]
    for _ in ctx.free_phases:
        for reply, got in zip(replies, generate([request_for(r, ctx, p)
                                                 for r, p in zip(rows, replies)])):
            reply.append(got)
    outputs = generate([request_for(r, ctx, p) for r, p in zip(rows, replies)])
    thoughts = [g for reply in replies for g in reply]
    seconds = time.perf_counter() - started
    return {"way": way, "clips": len(rows), "startup_s": round(startup, 2),
            "seconds": round(seconds, 2),  # both phases' tokens, as a row counts them
            "output_tokens": sum(len(o.token_ids) for o in [*thoughts, *outputs]),
            "prompt_tokens": sum(len(o.prompt_token_ids) for o in [*thoughts, *outputs]),
            "cached_prompt_tokens": sum(o.cached_prompt_tokens for o in [*thoughts, *outputs]),
            "truncated": sum(o.finish_reason == "length" for o in outputs)}


def pipeline(config, out: Path) -> dict:
    from annotator.core.store import Store
    from annotator.pipeline import run

    started_wall, started = time.time(), time.perf_counter()
    summary = run(config.model_copy(update={"out": out}))
    ended_wall, wall = time.time(), time.perf_counter() - started
    engine = summary["engine"]
    timeline = engine.get("timeline", {})
    rows = Store(out).read(["num_output_tokens", "error_kind"]).to_pylist()
    steady = ended_wall - timeline.get("ready_at", started_wall)
    return {"clips": summary["counts"]["computed_now"], "ok": summary["counts"]["ok"],
            "output_tokens": sum(r["num_output_tokens"] for r in rows),
            "truncated": sum(r["error_kind"] == "truncated" for r in rows),
            "wall_s": round(wall, 2), "after_engine_ready_s": round(steady, 2),
            "breakdown_s": {"plan": engine.get("plan_s"), "ray_init": engine.get("ray_init_s"),
                            "engine_start": timeline.get("startup_s"),
                            "engine_wait_first_batch": timeline.get("wait_first_s"),
                            "engine_idle": timeline.get("idle_s"),
                            "engine_busy": timeline.get("busy_s")}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--model", help="model folder (default: a tiny random Qwen2.5-Omni)")
    parser.add_argument("--generation", default="two-phase", choices=["one-pass", "two-phase"])
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--think-tokens", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of a pipeline run, a raw engine run and a render-thread "
                             "engine run, back to back")
    parser.add_argument("--json", action="store_true", help="print one JSON object only")
    parser.add_argument("--fake", action="store_true",
                        help="the pipeline alone with the fake engine (answers at once): its "
                             "own ceiling in clips/s, and per CPU core")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)  # the driver's own work; the raw engine's threads come below
    from annotator.config import RunConfig
    from tests.builders.tiny_models import build_tiny_omni

    work = Path(tempfile.mkdtemp(prefix="vaemo-pipeline-"))
    model = args.model or str(build_tiny_omni(work / "tiny-omni"))
    manifest = write_corpus(work / "corpus", args.clips)
    config = RunConfig(manifest=manifest, out=work / "out", model=model, retries=0,
                       labels="anger,disgust,fear,happy,neutral,sad",
                       generation=args.generation, max_tokens=args.max_tokens,
                       think_tokens=args.think_tokens, batch_size=args.batch_size)
    if args.fake:
        fake = config.model_copy(update={"compute": config.compute.model_copy(
            update={"engine": "fake"})})
        found = [pipeline(fake, work / f"fake{r}") for r in range(args.rounds)]
        best = min(found, key=lambda p: p["after_engine_ready_s"])
        rate = best["clips"] / best["after_engine_ready_s"]
        # a fake engine is ready at once, so its wait for the first prepared batch is the
        # prepare workers' start-up, which a real engine's own start-up hides
        steady = best["clips"] / (best["after_engine_ready_s"]
                                  - best["breakdown_s"]["engine_wait_first_batch"])
        print(json.dumps({"engine": "fake", "clips": best["clips"], "cores": os.cpu_count(),
                          "pipeline_clips_per_s": round(rate, 2),
                          "per_core": round(rate / (os.cpu_count() or 1), 2),
                          "after_first_batch_clips_per_s": round(steady, 2),
                          "after_first_batch_per_core": round(steady / (os.cpu_count() or 1),
                                                              2),
                          "breakdown_s": best["breakdown_s"], "runs": found}))
        return
    resolved, rows = prepared(config)
    # the raw engines (in this process) on the threads the pipeline's engine gets; vLLM fixes
    # them when the first engine starts
    torch.set_num_threads(resolved.engine_threads or 1)
    runs: dict[str, list] = {"pipeline": [], "engine": [], "render_thread": []}
    ratios = []
    for r in range(args.rounds):
        # this machine's speed drifts by tens of percent over minutes: each round's three runs
        # are back to back, in an order that rotates, and the figure is the rounds' median
        order = ["pipeline", "engine", "render_thread"]
        for what in order[r % 3:] + order[:r % 3]:
            runs[what].append(pipeline(config, work / f"out{r}") if what == "pipeline" else
                              raw_engine(resolved, rows, "vllm" if what == "engine" else what))
        ratios.append(runs["engine"][-1]["seconds"]
                      / runs["pipeline"][-1]["after_engine_ready_s"])
        if not args.json:
            print(json.dumps({"round": r, **{k: v[-1] for k, v in runs.items()}}), flush=True)
    middle = sorted(range(args.rounds), key=lambda i: ratios[i])[args.rounds // 2]
    pipe, engine = runs["pipeline"][middle], runs["engine"][middle]
    threaded = runs["render_thread"][middle]
    n = engine["clips"]
    result = {
        "model": Path(model).name, "clips": n, "generation": args.generation,
        "date": time.strftime("%Y-%m-%d"), "rounds": args.rounds,
        "pipeline_clips_per_s": round(n / pipe["after_engine_ready_s"], 3),
        "engine_clips_per_s": round(n / engine["seconds"], 3),
        "pipeline_over_engine": round(ratios[middle], 3),
        "pipeline_over_engine_by_round": [round(x, 3) for x in ratios],
        "engine_render_thread_clips_per_s": round(n / threaded["seconds"], 3),
        "pipeline_over_engine_render_thread": round(
            threaded["seconds"] / pipe["after_engine_ready_s"], 3),
        "pipeline_clips_per_s_with_startup": round(n / pipe["wall_s"], 3),
        "engine_clips_per_s_with_startup": round(
            n / (engine["seconds"] + engine["startup_s"]), 3),
        "breakdown_s": pipe["breakdown_s"], "wall_s": pipe["wall_s"],
        "output_tokens": {"pipeline": pipe["output_tokens"], "engine": engine["output_tokens"]},
        "truncated": {"pipeline": pipe["truncated"], "engine": engine["truncated"]},
        "runs": runs,
    }
    print(json.dumps(result))
    if pipe["output_tokens"] != engine["output_tokens"]:  # not the same work: no ratio
        raise SystemExit(f"the pipeline made {pipe['output_tokens']} output tokens and the raw "
                         f"engine {engine['output_tokens']}: the two did different work")


if __name__ == "__main__":
    main()
