"""The stages a clip goes through, in order, each in its own module:

    plan      (driver/Ray)    probe the streams, hash the media, render the prompt, cache key
    prepare   (Ray tasks)     decode frames + audio, measure cues, render the final prompt
    generate  (Ray actor)     the engine: attempts, retries, samples, judged against the schema
    rows      (in generate)   one output row per clip, ok or failed with its error kind

Every stage reads and writes Arrow batches and declares which columns it reads, which it
writes and how Ray runs it (`StageSpec`), the way ray.data.llm's stages declare theirs. The
driver (annotator/pipeline.py) chains them and commits the rows (annotator/core/store.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StageSpec:
    """What a stage needs from its input batches, what it adds, and how Ray runs it."""

    name: str
    reads: tuple[str, ...]
    """Columns the stage reads from its input batch."""
    writes: tuple[str, ...]
    """Columns the stage adds to (or replaces in) the batch."""
    ray: dict = field(default_factory=dict)
    """`map_batches` arguments (batch_size, num_cpus, ...); the driver adds the rest."""
