"""The transformers engine on the device a GPU node gives it, against the same engine on the
CPU: a tiny random Qwen2.5-Omni (built here, no model hub) fed real video + audio.

    python -m benchmarks.gpu_engine_check --json OUT.json

Checks: teacher-forced log-probabilities of the same tokens agree between the GPU (float32
there, to compare like with like) and the CPU; guided JSON generation on the GPU (bf16, the
GPU default) is schema-valid through the streaming API (submit/step) for several clips at
once.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    from annotator.chat import build_prompt, load_tokenizer
    from tests.builders.tiny_models import build_tiny_omni
    from annotator.engines.contract import EngineOptions, Request
    from annotator.engines.transformers_engine import TransformersEngine
    from annotator.core.media import decode
    from annotator.models import describe_model
    from annotator.core.schema import description_model, json_schema
    from annotator.settings import EngineSettings, SamplingSettings
    from benchmarks.gpu_check import write_clips

    gpu = torch.cuda.is_available()
    report: dict = {"device": torch.cuda.get_device_name(0) if gpu else "cpu (no GPU here)"}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = build_tiny_omni(folder / "tiny-omni")
        spec = describe_model(str(model))
        tokenizer = load_tokenizer(str(model))
        schema = json_schema(description_model(["happy", "sad"]))
        requests = []
        for i, path in enumerate(write_clips(folder / "clips", args.clips)):
            clip = decode(path, num_frames=8, max_side=224)
            prompt = build_prompt(tokenizer, spec, "Describe how this person feels.",
                                  clip.frames is not None, clip.audio is not None)
            requests.append(Request(f"c{i}", prompt, clip.frames, clip.fps, clip.audio,
                                    max_tokens=64))

        def engine(device: str, dtype: str) -> TransformersEngine:
            return TransformersEngine(spec, EngineOptions(
                schema=schema, sampling=SamplingSettings(max_tokens=64, temperature=0.0),
                compute=EngineSettings(engine="transformers", dtype=dtype), device=device))

        cpu = engine("cpu", "float32")
        continuation = cpu.generate(requests[:1])[0].token_ids[:16]
        reference = np.array(cpu.score(requests[0], continuation))
        here = engine("gpu" if gpu else "cpu", "float32")
        report["engine_device"] = str(here.device)
        scored = np.array(here.score(requests[0], continuation))
        report["teacher_forced_max_abs_diff_vs_cpu_fp32"] = float(np.abs(scored - reference).max())
        fast = engine("gpu" if gpu else "cpu", "auto")
        report["auto_dtype"] = str(next(fast.model.parameters()).dtype)
        started = time.perf_counter()
        for request in requests:
            fast.submit(request.clip_id, request)
        done = {}
        while fast.busy():
            done.update(fast.step())
        report["streamed_seconds"] = round(time.perf_counter() - started, 2)
        model_check = description_model(["happy", "sad"])
        valid = 0
        for generation in done.values():
            try:
                model_check.model_validate_json(generation.text)
                valid += 1
            except Exception:  # noqa: BLE001 - counted, a truncated answer is expected
                pass
        report["streamed"] = {"clips": len(done), "errors": sum(bool(g.error) for g in
                                                                  done.values()),
                              "schema_valid_or_truncated": sum(
                                  g.finish_reason in ("stop", "length") for g in done.values()),
                              "schema_valid": valid}
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
