"""How close a CPU engine comes to what the machine can do: torch matmul GFLOP/s per dtype and
thread count, then SmolLM2's vLLM output tok/s in each setting (each in a fresh process: vLLM
fixes its threads when it starts), and the share of the matmul ceiling that reaches.

    .venv/bin/python -m benchmarks.engine_ceiling --prompts 64 --max-tokens 128

The ceiling counts every token the engine computes (prompt and output) at 2 x parameters
FLOPs each; attention and sampling are left out, so the share is an upper bound's share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

PROMPT = ("A speaker's voice has a median pitch of {} Hz and a loudness of {} dB; the face is "
          "{} and the clip is {} s long. Describe how the speaker might feel, face first, "
          "then voice, then both together. ")


def matmul_gflops(dtype: str, threads: int, size: int = 1024, seconds: float = 2.0) -> float:
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(size, size).to(getattr(torch, dtype))
    b = torch.randn(size, size).to(getattr(torch, dtype))
    a @ b  # warm-up
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        a @ b
        runs += 1
    return 2 * size ** 3 * runs / (time.perf_counter() - started) / 1e9


def engine(model: str, dtype: str, threads: int, prompts: int, max_tokens: int) -> dict:
    """One engine setting, in this process (run as a child: `--child`)."""
    os.environ.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="2",
                      VLLM_LOGGING_LEVEL="ERROR")
    import torch

    torch.set_num_threads(threads)  # before vLLM starts: it forbids changing it later
    from vllm import LLM, SamplingParams

    llm = LLM(model, dtype=dtype, enforce_eager=True, seed=0, max_model_len=2048)
    texts = [PROMPT.format(100 + i, -20 - i % 10, ("still", "moving", "bright")[i % 3],
                           2 + i % 5) * 4 for i in range(prompts)]
    sampling = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
    llm.generate(texts[:2], sampling, use_tqdm=False)  # warm-up
    started = time.perf_counter()
    outputs = llm.generate(texts, sampling, use_tqdm=False)
    seconds = time.perf_counter() - started
    return {"dtype": dtype, "threads": threads, "seconds": round(seconds, 2),
            "output_tokens": sum(len(o.outputs[0].token_ids) for o in outputs),
            "prompt_tokens": sum(len(o.prompt_token_ids) for o in outputs)}


def parameters(model: str) -> int:
    """The model's parameters, counted on the meta device (vLLM's CPU build repacks its
    layer weights out of `parameters()`); tied embeddings count once, as the output matmul."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        built = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    return sum(p.numel() for p in built.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="default: the shipped SmolLM2 folder")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--child", nargs=2, metavar=("DTYPE", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    from annotator.core.machine import cores, cpu_dtype
    from annotator.models import smollm2_folder

    model = args.model or str(smollm2_folder())
    if args.child:
        print(json.dumps(engine(model, args.child[0], int(args.child[1]), args.prompts,
                                args.max_tokens)))
        return
    threads = sorted({1, cores()})
    ceiling = {f"{d}x{t}": round(matmul_gflops(d, t), 1) for d in args.dtypes for t in threads}
    print("matmul GFLOP/s:", ceiling, flush=True)
    found, params = [], parameters(model)
    for dtype in args.dtypes:
        for n in threads:
            child = subprocess.run(
                [sys.executable, "-m", "benchmarks.engine_ceiling", "--model", model,
                 "--prompts", str(args.prompts), "--max-tokens", str(args.max_tokens),
                 "--child", dtype, str(n)], capture_output=True, text=True, check=True)
            run = json.loads(child.stdout.strip().splitlines()[-1])
            flops = 2 * params * (run["prompt_tokens"] + run["output_tokens"])
            run["output_tok_s"] = round(run["output_tokens"] / run["seconds"], 1)
            run["share_of_matmul_ceiling"] = round(
                flops / run["seconds"] / 1e9 / ceiling[f"{dtype}x{n}"], 3)
            found.append(run)
            print(run, flush=True)
    base = next(r for r in found if r["dtype"] == "float32" and r["threads"] == 1)
    for run in found:
        run["vs_float32_one_thread"] = round(run["output_tok_s"] / base["output_tok_s"], 2)
    print(json.dumps({"cores": cores(), "auto_dtype": cpu_dtype(), "params": params,
                      "matmul_gflops": ceiling,
                      "engine": found}))


if __name__ == "__main__":
    main()
