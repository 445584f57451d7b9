"""The engine contract: what a request is, what comes back, what an engine must do.

Implementations (annotator/engines/): `VLLMEngine` (offline `vllm.LLM`, continuous batching,
guided JSON through llguidance), `TransformersEngine` (`generate`, the reference for parity
checks and for machines without vLLM) and `FakeEngine` (instant, deterministic, with injected
faults, for the fast tests and the pipeline's own ceiling). All get the same chat-formatted
prompt and decoded media.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from annotator.models import ModelSpec
from annotator.settings import EngineSettings, MediaSettings, SamplingSettings


@dataclass
class Request:
    """One engine call for one clip: the chat-formatted prompt and the decoded media."""

    clip_id: str
    prompt: str
    frames: np.ndarray | None = None
    fps: float | None = None
    audio: np.ndarray | None = None
    guided: bool = True
    """Constrain the output to EngineOptions.schema (False: free text, e.g. a thought)."""
    max_tokens: int | None = None
    """Output budget for this request; None: the sampling's max_tokens."""


@dataclass
class Generation:
    """What the engine made of one request; `error` set means it failed alone."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "error"
    """'stop', 'length' or 'error'."""
    logprobs: list[float] = field(default_factory=list)
    """Log-probability of each generated token under the raw model (before any mask)."""
    error: str = ""


class Engine(Protocol):
    """Turns requests into generations; a bad request never fails the others.

    Two ways in: `generate` (a list, all at once) and streaming, `submit` any time and `step`
    until what was submitted comes back, so a caller can submit a clip's next request (its
    answer after its thought, a retry) the moment the previous one ends."""

    spec: ModelSpec

    def generate(self, requests: list[Request]) -> list[Generation]:
        """One Generation per request, in order; a bad request fails alone."""
        ...

    def submit(self, key: str, request: Request) -> None:
        """Queue one request under a key unique among those in flight."""
        ...

    def step(self) -> list[tuple[str, Generation]]:
        """Advance the requests in flight; (key, Generation) of those that finished."""
        ...

    def busy(self) -> bool:
        """Whether anything submitted has not come back from `step` yet."""
        ...

    def score(self, request: Request, continuation: list[int]) -> list[float]:
        """Teacher-forced log-probabilities of `continuation` after the request's prompt."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """What every engine needs besides the model: the settings models of the run, as they
    are (sampling with its generation mode resolved), the enforced schema and the device."""

    schema: dict
    sampling: SamplingSettings
    media: MediaSettings = MediaSettings()
    compute: EngineSettings = EngineSettings()
    device: str = "cpu"

    @property
    def dtype(self) -> str:
        return self.compute.resolved_dtype(self.device)


def step_queued(queue: list[tuple[str, Request]], generate, limit: int
                ) -> list[tuple[str, Generation]]:
    """`step` for an engine that decodes a list at once: the oldest `limit` queued requests,
    generated together (taken off `queue`)."""
    taken = queue[:limit]
    del queue[:limit]
    return list(zip([key for key, _ in taken], generate([r for _, r in taken])))
