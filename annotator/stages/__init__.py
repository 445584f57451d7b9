"""The stages a clip goes through, in order, each in its own module:

    plan      (driver/Ray)    probe the streams, hash the media, render the prompt, cache key
    prepare   (Ray tasks)     decode frames + audio, measure cues, render the final prompt
    generate  (Ray actor)     the engine: attempts, retries, samples, judged against the schema
    rows      (in generate)   one output row per clip, ok or failed with its error kind

Every stage reads and writes Arrow batches and declares what it runs, which columns it reads,
which it writes and how Ray runs it (`StageSpec`), the way ray.data.llm's stages declare
theirs. The driver (annotator/pipeline.py) chains the declarations with `chain`, which checks
before any work that each stage's inputs are made by the input or an earlier stage, and
commits the rows (annotator/core/store.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageSpec:
    """What a stage runs, what it needs from its input batches, what it adds, and how Ray
    runs it."""

    name: str
    fn: Callable
    """`fn(batch, *, ctx) -> batch` (a Ray task), or a class whose instances are called on
    batches (a Ray actor, built once with the run's context)."""
    reads: tuple[str, ...]
    """Columns the stage reads from its input batch."""
    writes: tuple[str, ...]
    """Columns the stage adds to (or replaces in) the batch."""
    ray: dict = field(default_factory=dict)
    """`map_batches` arguments (batch_size, num_cpus, ...); the driver adds the rest."""

    @property
    def actor(self) -> bool:
        return isinstance(self.fn, type)


def chain(columns: list[str] | tuple[str, ...], *stages: StageSpec) -> tuple[StageSpec, ...]:
    """`stages` in order, after checking that each one's inputs are among `columns` (the
    input's) or an earlier stage's outputs: a stage wired after one it depends on fails here,
    at the start of a run, never as a KeyError in a Ray task."""
    have = set(columns)
    for stage in stages:
        missing = [c for c in stage.reads if c not in have]
        if missing:
            raise RuntimeError(f"stage {stage.name!r} reads {missing}, which neither the "
                               "input nor an earlier stage writes")
        have |= set(stage.writes)
    return stages
