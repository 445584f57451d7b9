"""`create_engine`: the engine named by `--engine`, imported only when chosen."""

from __future__ import annotations

from annotator.engines.contract import Engine, EngineOptions
from annotator.models import ModelSpec


def create_engine(kind: str, spec: ModelSpec, options: EngineOptions) -> Engine:
    """The engine named by `--engine` (vllm, transformers or fake), started on `spec`."""
    if kind == "vllm":
        from annotator.engines.vllm_engine import VLLMEngine

        return VLLMEngine(spec, options)
    if kind == "transformers":
        from annotator.engines.transformers_engine import TransformersEngine

        return TransformersEngine(spec, options)
    if kind == "fake":
        from annotator.engines.fake import FakeEngine

        return FakeEngine(spec, options)
    raise ValueError(f"unknown engine {kind!r}: use 'vllm', 'transformers' or 'fake'")
