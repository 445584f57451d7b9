"""How close a CPU engine comes to what the machine can do: torch matmul GFLOP/s per dtype and
thread count, then SmolLM2's output tok/s in each setting on the project's own prompts (the
demo corpus's clips, rendered and JSON-guided as `run` does, 32 sequences at a time), each
setting in a fresh process (vLLM fixes its threads when it starts), the share of the matmul
ceiling that reaches, and the setting the tool picks on this machine against float32 on one
thread (what every CPU ran before `--dtype auto` and `--cpu-threads` followed the CPU).

    .venv/bin/python -m benchmarks.engine_ceiling --prompts 64 --max-tokens 128

The ceiling counts the matmuls of every token the engine computes (prompt tokens not served
from its prefix cache, and output tokens) at 2 x the parameters outside the embedding, and
the output projection for output tokens only; attention and sampling are left out, so the
share is an upper bound's share.
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

LABELS = "anger,disgust,fear,happy,neutral,sad"


def matmul_gflops(dtype: str, threads: int, seconds: float = 2.0) -> float:
    """The best of square matmuls of 1024 and 2048 (a model's prefill runs large ones)."""
    import torch

    torch.set_num_threads(threads)
    best = 0.0
    for size in (1024, 2048):
        a = torch.randn(size, size).to(getattr(torch, dtype))
        b = torch.randn(size, size).to(getattr(torch, dtype))
        a @ b  # warm-up
        runs, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds / 2:
            a @ b
            runs += 1
        best = max(best, 2 * size ** 3 * runs / (time.perf_counter() - started) / 1e9)
    return best


def engine(model: str, manifest: str, dtype: str, threads: int, max_tokens: int) -> dict:
    """One engine setting on the project's prompts, in this process (run as a child)."""
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_LOGGING_LEVEL="ERROR",
                      OMP_NUM_THREADS=str(threads))
    import torch

    torch.set_num_threads(threads)  # before vLLM starts: it forbids changing it later
    from annotator.config import RunConfig
    from benchmarks.pipeline import prepared, raw_engine

    config = RunConfig(manifest=manifest, out=Path(tempfile.mkdtemp()), model=model,
                       labels=LABELS, generation="one-pass", max_tokens=max_tokens,
                       dtype=dtype, cpu_threads=threads, retries=0)
    resolved, rows = prepared(config)
    run = raw_engine(resolved, rows, "vllm")
    return {"dtype": dtype, "threads": threads, "seconds": run["seconds"],
            "output_tokens": run["output_tokens"], "prompt_tokens": run["prompt_tokens"],
            "cached_prompt_tokens": run["cached_prompt_tokens"], "truncated": run["truncated"]}


def matmul_parameters(model: str) -> tuple[int, int]:
    """(parameters outside the embedding, the embedding's), counted on the meta device
    (vLLM's CPU build repacks its layer weights out of `parameters()`); a tied embedding is
    the output projection."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model)
    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(config)
    embedding = config.vocab_size * config.hidden_size
    return sum(p.numel() for p in built.parameters()) - embedding, embedding


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the shipped SmolLM2 folder")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--child", nargs=3, metavar=("MANIFEST", "DTYPE", "THREADS"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()

    from annotator.core.machine import cores, cpu_dtype, engine_threads
    from annotator.models import smollm2_folder

    model = args.model or str(smollm2_folder())
    if args.child:
        manifest, dtype, threads = args.child
        print(json.dumps(engine(model, manifest, dtype, int(threads), args.max_tokens)))
        return
    from benchmarks.pipeline import write_corpus

    manifest = write_corpus(Path(tempfile.mkdtemp(prefix="vaemo-ceiling-")), args.prompts)
    threads = sorted({1, cores()})
    ceiling = {f"{d}x{t}": round(matmul_gflops(d, t), 1) for d in args.dtypes for t in threads}
    print("matmul GFLOP/s:", ceiling, flush=True)
    (body, head), found = matmul_parameters(model), []
    for dtype in args.dtypes:
        for n in threads:
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.engine_ceiling", "--model", model,
                 "--max-tokens", str(args.max_tokens), "--child", str(manifest), dtype,
                 str(n)], capture_output=True, text=True)
            if child.returncode:
                raise SystemExit(f"{dtype} x {n}: {child.stderr[-2000:]}")
            run = json.loads(child.stdout.strip().splitlines()[-1])
            computed = run["prompt_tokens"] - run["cached_prompt_tokens"] + run["output_tokens"]
            flops = 2 * body * computed + 2 * head * run["output_tokens"]
            run["output_tok_s"] = round(run["output_tokens"] / run["seconds"], 1)
            run["share_of_matmul_ceiling"] = round(
                flops / run["seconds"] / 1e9 / ceiling[f"{dtype}x{n}"], 3)
            found.append(run)
            print(run, flush=True)
    base = next(r for r in found if r["dtype"] == "float32" and r["threads"] == 1)
    for run in found:
        run["vs_float32_one_thread"] = round(run["output_tok_s"] / base["output_tok_s"], 2)
    chosen = {"dtype": cpu_dtype(), "threads": engine_threads(reads_media=False)}
    picked = next((r for r in found if r["dtype"] == chosen["dtype"]
                   and r["threads"] == chosen["threads"]), None)
    print(json.dumps({"date": time.strftime("%Y-%m-%d"), "cores": cores(),
                      "tool_picks": chosen,
                      "tool_pick_vs_float32_one_thread":
                          picked["vs_float32_one_thread"] if picked else None,
                      "params_outside_embedding": body, "embedding": head,
                      "matmul_gflops": ceiling, "engine": found}))


if __name__ == "__main__":
    main()
