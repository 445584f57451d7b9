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
from annotator.engines import ENGINES
from annotator.settings import EndpointSettings, EngineSettings, MediaSettings, SamplingSettings


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
    audio_in_video: bool = True
    """With frames and audio both given, the audio rides in the video (Qwen-Omni's
    `use_audio_in_video`); False when a turn of its own showed it (a chain of phases)."""


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
    prompt_tokens: int | None = None
    """Prompt tokens where the engine counts them without ids (a served model's `usage`);
    None: len(prompt_token_ids)."""
    cached_prompt_tokens: int = 0
    """Prompt tokens the engine served from its prefix cache instead of computing them."""
    output_tokens: int | None = None
    """Output tokens where the engine counts them without ids; None: len(token_ids)."""
    sent: dict | None = None
    """What went over the wire (served models): frames, seconds of audio, request bytes,
    how the JSON was enforced, HTTP tries; None in-process."""

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids) if self.prompt_tokens is None else self.prompt_tokens

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) if self.output_tokens is None else self.output_tokens


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
    remote: EndpointSettings = EndpointSettings()
    """How a served model is reached (the served engines only)."""

    @property
    def dtype(self) -> str:
        return self.compute.resolved_dtype(self.device)

    @property
    def key(self) -> str:
        """The engine part of the cache key: the same prompt can decode differently on another
        engine or dtype; a served model by what it is sent and how its JSON is enforced (its
        dtype is the server's, identified with the model by --model-revision)."""
        if ENGINES[self.compute.engine].served:
            sent = self.remote.key()
            return f"{self.compute.engine}:{sent['send_media']}:{sent['structured']}"
        return self.compute.key(self.device)


def step_queued(queue: list[tuple[str, Request]], generate, limit: int
                ) -> list[tuple[str, Generation]]:
    """`step` for an engine that decodes a list at once: the oldest `limit` queued requests,
    generated together (taken off `queue`)."""
    taken = queue[:limit]
    del queue[:limit]
    return list(zip([key for key, _ in taken], generate([r for _, r in taken])))
