"""What a clip's later turns cost: media processing and prefill, with and without vLLM's cache
of processed media (--media-cache-gib).

For 1, 2 and 4 turns (the clip's frames and audio shown in the first, text turns after it, as
in two-phase generation or a refinement round), the tiny random Qwen2.5-Omni on the demo
corpus (8 frames + audio per clip), every clip's turn N given to the engine together: per clip
and turn, the render thread's seconds (the HF processor on frames and audio, tokenizing) and
the prompt tokens the engine computed (not served from its prefix cache).

    .venv/bin/python -m benchmarks.turns                # the 10 demo clips
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

REPLY_TOKENS = 16
"""Each turn's output budget: the benchmark measures what comes before the output."""


def chain_template(folder: Path, turns: int) -> Path:
    """A template of `turns` turns: the clip in the first, text after it."""
    phases = ",".join(["t1:clip"] + [f"t{n}:text" for n in range(2, turns)])
    header = f"phases={phases}:{REPLY_TOKENS}" if turns > 2 else "phases=t1:clip"
    path = folder / f"turns{turns}.j2"
    path.write_text(f"{{#- vaemo-template name=turns{turns} version=1 {header} -#}}"
                    "{% if phase == 't1' or phase == 'one-pass' %}Describe the person "
                    "in this clip.{% else %}Turn {{ phase }}: say more.{% endif %}")
    return path


def measure(config, turns: int) -> dict:
    """Every prepared clip through `turns` turns, turn by turn; per clip and turn: render
    seconds and computed prompt tokens."""
    from annotator.engines.factory import create_engine
    from annotator.stages.generate import request_for
    from benchmarks.pipeline import prepared

    resolved, rows = prepared(config)
    ctx = resolved.ctx
    engine = create_engine("vllm", resolved.spec, ctx.options)
    replies: list[list] = [[] for _ in rows]
    per_turn = []
    for _ in range(turns):
        requests = [request_for(r, ctx, p) for r, p in zip(rows, replies)]
        for request in requests:  # what comes before the output is measured, not the JSON
            request.guided, request.max_tokens = False, REPLY_TOKENS
        render, started = engine.render_s, time.perf_counter()
        outputs = engine.generate(requests)
        wall = time.perf_counter() - started
        errors = [o.error for o in outputs if o.error]
        assert not errors, errors[:2]
        computed = sum(o.num_prompt_tokens - o.cached_prompt_tokens for o in outputs)
        per_turn.append({"render_s_per_clip": round((engine.render_s - render) / len(rows), 3),
                         "computed_prompt_tokens_per_clip": round(computed / len(rows), 1),
                         "prompt_tokens_per_clip": round(
                             sum(o.num_prompt_tokens for o in outputs) / len(rows), 1),
                         "wall_s": round(wall, 2)})
        for reply, output in zip(replies, outputs):
            reply.append(output)
    del engine
    return {"clips": len(rows), "per_turn": per_turn,
            "render_s_per_clip": round(sum(t["render_s_per_clip"] for t in per_turn), 3),
            "computed_prompt_tokens_per_clip": round(
                sum(t["computed_prompt_tokens_per_clip"] for t in per_turn), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", type=int, default=10, help="at most the demo corpus's 10")
    parser.add_argument("--turns", default="1,2,4")
    args = parser.parse_args()

    from annotator.config import RunConfig
    from annotator.demo import build_demo_corpus
    from tests.builders.tiny_models import build_tiny_omni

    work = Path(tempfile.mkdtemp(prefix="vaemo-turns-"))
    model = str(build_tiny_omni(work / "tiny-omni"))
    manifest = build_demo_corpus(work / "demo")
    results: dict = {}
    for turns in map(int, args.turns.split(",")):
        for cache in (0.0, 4.0):
            config = RunConfig(manifest=manifest, out=work / "out", model=model,
                               subset=str(args.clips), dtype="float32", retries=0,
                               template=str(chain_template(work, turns)),
                               generation="one-pass" if turns == 1 else "two-phase",
                               media_cache_gib=cache)
            result = measure(config, turns)
            results[f"{turns} turns, media cache {cache:g} GiB"] = result
            print(turns, cache, json.dumps(result), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
