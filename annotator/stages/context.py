"""`RunContext`: everything besides the clip that decides a row, resolved once in the driver
and handed as it is to every stage (plan, prepare, generate, rows)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from annotator.chat import ChatFrames, chat_frames
from annotator.engines.contract import EngineOptions
from annotator.models import ModelSpec
from annotator.settings import (EngineSettings, GenerationMode, MediaSettings,
                                SamplingSettings)
from prompts import ANSWER, ONE_PASS, Phase, Template


@dataclass(frozen=True)
class RunContext:
    """The run's resolved decisions, shared by every stage and stamped on every row."""

    run_id: str
    spec: ModelSpec
    template: Template
    labels: list[str] | None
    options: EngineOptions
    """The settings the engine is built from, held once: sampling (with `generation`
    resolved for the template: 'auto' never reaches a stage), media, compute, the device
    ('auto' decided: cpu or gpu) and the JSON schema it enforces."""
    schema_sha256: str
    retries: int
    label_hint: bool = False
    """Each clip's dataset label is shown in its first turn (stages.prompt.HINT)."""
    chat: ChatFrames | None = None
    """The model's chat template as frames (`with_chat`: the driver's, handed to Ray tasks so
    they never load the tokenizer); None: made where a prompt is first rendered."""

    @property
    def media(self) -> MediaSettings:
        return self.options.media

    @property
    def sampling(self) -> SamplingSettings:
        return self.options.sampling

    @property
    def compute(self) -> EngineSettings:
        return self.options.compute

    @property
    def device(self) -> str:
        return self.options.device

    @property
    def engine(self) -> str:
        """The engine's name (vllm, transformers, fake), recorded per row."""
        return self.compute.engine

    @property
    def engine_key(self) -> str:
        """Engine and dtype (or what a served model is sent): the same prompt can decode
        differently on another engine."""
        return self.options.key

    @property
    def mode(self) -> GenerationMode:
        return self.sampling.mode

    @property
    def two_phase(self) -> bool:
        """Generation in turns: the template's free phases, then the JSON."""
        return self.mode is GenerationMode.TWO_PHASE

    @property
    def free_phases(self) -> tuple[Phase, ...]:
        """The turns before the JSON answer (none in one-pass)."""
        return self.template.phases if self.two_phase else ()

    @property
    def phase_names(self) -> tuple[str, ...]:
        """The `phase` each turn renders, the JSON turn last."""
        return (*(p.name for p in self.free_phases), ANSWER) if self.two_phase else (ONE_PASS,)

    @property
    def turn_media(self) -> tuple[str, ...]:
        """What each turn asks to show the model first (chat.turn_shapes): the free turns',
        then the JSON turn and each refinement turn, which show nothing new."""
        free = tuple(p.media for p in self.free_phases)
        return (*free, "text" if free else "clip", *("text",) * self.sampling.refine)


def with_chat(ctx: RunContext) -> RunContext:
    """`ctx` with the model's chat frames, made from its tokenizer in this process."""
    return ctx if ctx.chat is not None else replace(
        ctx, chat=chat_frames(ctx.spec, ctx.turn_media))
