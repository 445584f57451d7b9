"""Engines: the contract (`contract.py`), its implementations (`vllm_engine.py`,
`transformers_engine.py`, `fake.py`) and `factory.create_engine`.

`openai_engine.py` reaches a served model over HTTP instead of loading one.

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
    served: bool = False
    """Reaches a model served elsewhere (--endpoint): no model folder here, no GPU claimed,
    never imports torch; the served model's name and --model-revision identify it."""
    check: str = ""
    """`module:function(spec, options, api_key)` that the driver calls before it plans a
    clip: raises ConfigError when the engine cannot serve the run at all."""

    @property
    def runs_model(self) -> bool:
        """Runs a model in this process (torch threads, a device, a model folder)."""
        return not (self.model_free or self.served)


ENGINES: dict[str, EngineEntry] = {
    "vllm": EngineEntry("annotator.engines.vllm_engine:VLLMEngine", "fast, batched"),
    "transformers": EngineEntry("annotator.engines.transformers_engine:TransformersEngine",
                                "the reference implementation"),
    "fake": EngineEntry("annotator.engines.fake:FakeEngine",
                        "instant, deterministic schema-valid answers with optional --faults: "
                        "tests and benchmarks", model_free=True),
    "openai": EngineEntry("annotator.engines.openai_engine:OpenAIEngine",
                          "a model served over an OpenAI-compatible API at --endpoint: vllm "
                          "serve, SGLang, Ollama, a provider", served=True,
                          check="annotator.engines.openai_engine:check_endpoint"),
}
"""Every engine `--engine` can name, the default first."""


def described() -> str:
    """The engines as `--engine`'s help lists them."""
    return "; ".join(f"{name} ({entry.summary})" for name, entry in ENGINES.items())
