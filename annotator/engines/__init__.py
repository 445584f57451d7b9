"""Engines: the contract (`contract.py`), its implementations (`vllm_engine.py`,
`transformers_engine.py`, `fake.py`) and `factory.create_engine`.

`ENGINES` is the one list of them: `--engine` takes its names (the settings' choices and the
CLI's are derived from it) and the factory imports only the one chosen: vLLM and torch are
heavy, and a machine may have one engine's dependencies and not another's. A new engine is a
module with a class that follows `contract.Engine` and a line here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EngineEntry:
    target: str
    """`module:Class`, imported only when the engine is chosen."""
    summary: str
    """What it is for, one line (the `--engine` help lists them)."""
    model_free: bool = False
    """Answers without running a model: takes --faults, and never imports torch."""


ENGINES: dict[str, EngineEntry] = {
    "vllm": EngineEntry("annotator.engines.vllm_engine:VLLMEngine", "fast, batched"),
    "transformers": EngineEntry("annotator.engines.transformers_engine:TransformersEngine",
                                "the reference implementation"),
    "fake": EngineEntry("annotator.engines.fake:FakeEngine",
                        "instant, deterministic schema-valid answers with optional --faults: "
                        "tests and benchmarks", model_free=True),
}
"""Every engine `--engine` can name, the default first."""


def described() -> str:
    """The engines as `--engine`'s help lists them."""
    return "; ".join(f"{name} ({entry.summary})" for name, entry in ENGINES.items())
