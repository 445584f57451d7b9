"""The settings of a run, one pydantic model per concern, each field declared exactly once.

- `MediaSettings`: how a clip is decoded and handed to the model's processor.
- `SamplingSettings`: how the engine decodes text (and the run's seed).
- `EngineSettings`: which engine runs where, with what resources.
- `EndpointSettings`: how a served model is reached (the endpoint engines).

`RunConfig` (annotator/config.py) holds one of each and passes them on as they are: the plan,
the Ray stages, the engine and `run.json` all read the same objects, and the cache key is
derived from them (`key()`), not from a hand-kept list. A field that changes what a row
contains is in its model's key; one that only changes speed or resources is listed in
`NOT_IN_KEY`.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from annotator import engines
from annotator.core.machine import cpu_dtype
from annotator.engines import ENGINES

_CONFIG = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True,
                     protected_namespaces=())


class GenerationMode(StrEnum):
    ONE_PASS = "one-pass"
    """One guided JSON answer whose first field is the reasoning."""
    TWO_PHASE = "two-phase"
    """Free chain of thought first, then the JSON (without reasoning) with it in context."""


class MediaSettings(BaseModel):
    """How a clip is decoded and handed to the model's processor."""

    model_config = _CONFIG
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset()

    num_frames: int = Field(8, ge=2, le=64)
    """Frames sampled uniformly per clip (even: Qwen2.5-Omni pairs frames)."""
    max_duration_s: float = Field(30.0, gt=0)
    """Only the first seconds of a longer clip are decoded."""
    max_side: int = Field(448, ge=28)
    """Decoded frames are downscaled so the longer side is at most this many pixels."""
    min_pixels: int = Field(28 * 28 * 4, ge=28 * 28)
    """Per-frame pixel floor handed to the model's processor."""
    max_pixels: int = Field(28 * 28 * 64, ge=28 * 28)
    """Per-frame pixel cap handed to the model's processor (bounds visual tokens)."""

    @model_validator(mode="after")
    def _consistent(self) -> MediaSettings:
        if self.min_pixels > self.max_pixels:
            raise ValueError("--min-pixels must not exceed --max-pixels")
        if self.num_frames % 2:
            raise ValueError("--num-frames must be even (video models pair frames)")
        return self

    def key(self) -> dict:
        return self.model_dump(exclude=set(self.NOT_IN_KEY))


class SamplingSettings(BaseModel):
    """How the engine decodes; recorded per row (`sampling`) and part of the cache key."""

    model_config = _CONFIG
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset()

    temperature: float = Field(0.0, ge=0.0)
    """Sampling temperature (0: greedy, the default for annotation)."""
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass."""
    max_tokens: int = Field(2048, ge=16)
    """Output token budget per clip; a row that hits it is 'truncated'."""
    seed: int = 0
    """Seed for the subset ranking and the engine."""
    repetition_penalty: float = Field(1.0, gt=0.0)
    """Penalty on tokens already seen (1: none; >1 discourages repetition loops)."""
    generation: Literal["auto", "one-pass", "two-phase"] = "auto"
    """one-pass: one guided JSON answer, reasoning field first. two-phase: free chain of
    thought, then the JSON with the thought in context (the template must read `phase`).
    auto: two-phase when the template supports it (measured: as valid, fewer tokens, no
    repetition loops; see the README), else one-pass."""
    think_tokens: int = Field(512, ge=16)
    """Token budget of the free chain of thought in two-phase generation."""
    samples: int = Field(1, ge=1, le=16)
    """Descriptions per clip (needs --temperature > 0): the extra ones are kept in the
    `samples` column, and the audit measures how much they agree."""
    refine: int = Field(0, ge=0, le=4)
    """Refinement rounds: once a clip's JSON is valid, the audit's rules that one row can be
    checked against (those with a `refine` message in rules.toml: a claim against the
    measured cues, a label against its valence) run at once; when one fires, the clip gets
    a turn that quotes it with the measured values and asks for a corrected JSON, at most
    this many times. Every round is kept (`refinements`)."""

    @model_validator(mode="after")
    def _samples(self) -> SamplingSettings:
        if self.samples > 1 and self.temperature == 0:
            raise ValueError("--samples > 1 needs --temperature > 0 (greedy samples are "
                             "identical)")
        return self

    @property
    def mode(self) -> GenerationMode:
        """The resolved generation mode ('auto' must be resolved first, see `resolved`)."""
        if self.generation == "auto":
            raise ValueError("generation 'auto' is resolved against the template first")
        return GenerationMode(self.generation)

    def resolved(self, template_two_phase: bool) -> SamplingSettings:
        """A copy with 'auto' replaced by what the template supports."""
        if self.generation != "auto":
            return self
        mode = GenerationMode.TWO_PHASE if template_two_phase else GenerationMode.ONE_PASS
        return self.model_copy(update={"generation": mode.value})

    def key(self) -> dict:
        return self.model_dump(exclude=set(self.NOT_IN_KEY))

    def to_json(self) -> str:
        """The `sampling` column and the sampling part of the cache key."""
        return json.dumps(self.key(), sort_keys=True)


class EngineSettings(BaseModel):
    """Which engine runs where, and with what resources."""

    model_config = _CONFIG
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset(
        {"device", "ray_address", "max_model_len", "cpu_kv_cache_gib", "cpu_threads",
         "batch_size", "max_num_seqs", "batches_in_flight", "tensor_parallel_size",
         "gpu_memory_utilization", "media_cache_gib"})
    """Where and how fast: these never change a greedy row's content."""

    engine: Literal[tuple(ENGINES)] = Field(  # type: ignore[valid-type]
        next(iter(ENGINES)), description=f"The engine: {engines.described()}.")
    device: Literal["auto", "cpu", "gpu"] = "auto"
    """Where the engine runs: auto picks gpu when the Ray cluster has GPUs."""
    ray_address: str | None = None
    """Ray cluster to join ('auto' for a running one); default starts Ray locally."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Engine weights/activations dtype. auto: on CPU bfloat16 where the CPU has bf16
    instructions (AVX512-BF16 or AMX), else float32 (2.5x faster than bf16 there, measured);
    the model's own on GPU. Resolved once, in run.json and the cache key."""
    max_model_len: int | None = None
    """Context length for the engine (default: the model's)."""
    cpu_kv_cache_gib: int = Field(2, ge=1)
    """KV cache reserved by vLLM on CPU (vLLM's own default reserves ~21 GiB)."""
    cpu_threads: int | None = Field(None, ge=1)
    """Threads of an engine on CPU. Default: every core (at most OMP_NUM_THREADS) for a text
    model, all but one for a model that reads frames and audio (their preparation needs
    one); SmolLM2 on 2 cores: 1.8x the tokens/s of one thread, measured."""
    batch_size: int = Field(16, ge=1)
    """Clips per Ray batch: the unit of commit (its rows are written together). The engine
    does not wait on a batch: --batches-in-flight of them stream through it at once."""
    max_num_seqs: int | None = Field(None, ge=1)
    """Sequences the engine decodes at once (vLLM's max_num_seqs); default 256 on a GPU, 32
    on CPU."""
    batches_in_flight: int | None = Field(None, ge=1)
    """Ray batches each engine works on at once; default enough to fill --max-num-seqs, plus
    one waiting."""
    tensor_parallel_size: int = Field(1, ge=1)
    """GPUs per engine (vLLM tensor parallelism): engines = the cluster's GPUs / this."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """Share of each GPU's memory vLLM may take (weights + KV cache)."""
    media_cache_gib: float | None = Field(None, ge=0)
    """Memory vLLM keeps processed media in (its multimodal processor cache), so a clip's
    later turns, retries and samples are not processed again. Default: 4 when a clip is
    asked more than once (generation in turns, --samples > 1), else 0 (a cache would only
    cost memory)."""
    faults: str = ""
    """--engine fake only: injected faults, e.g. 'invalid=0.2,truncate=0.1,error=0.1,
    crash=0.01,latency=0.05' (rates per attempt; crash ends the engine process; broken=1: the
    engine cannot start; latency in seconds per request; drop_audio: a clip's audio never
    reaches the model, as with an engine that silently drops it; ungrounded: an answer
    claims a smile and a shouting voice whatever the clip shows, per clip and refinement
    round)."""

    @field_validator("faults")
    @classmethod
    def _faults(cls, value: str) -> str:
        parse_faults(value)
        return value

    @model_validator(mode="after")
    def _fake_only(self) -> EngineSettings:
        if self.faults and not ENGINES[self.engine].model_free:
            raise ValueError("--faults only applies to --engine fake")
        return self

    def sequences(self, device: str) -> int:
        """max_num_seqs as the engine will use it."""
        return self.max_num_seqs or (256 if device == "gpu" else 32)

    def in_flight(self, device: str) -> int:
        """Ray batches each engine holds at once: enough to fill max_num_seqs, plus one."""
        if self.batches_in_flight:
            return self.batches_in_flight
        return -(-self.sequences(device) // self.batch_size) + 1

    def media_cache(self, sampling: SamplingSettings) -> float:
        """--media-cache-gib as the engine will use it."""
        if self.media_cache_gib is not None:
            return self.media_cache_gib
        asked_again = sampling.mode is GenerationMode.TWO_PHASE or sampling.samples > 1
        return 4.0 if asked_again else 0.0

    def resolved_dtype(self, device: str) -> str:
        if self.dtype != "auto":
            return self.dtype
        return cpu_dtype() if device == "cpu" else "auto"

    def key(self, device: str) -> str:
        """The engine part of the cache key: the same prompt can decode differently on another
        engine or dtype (and a fake engine answers by its faults)."""
        fields = self.model_dump(exclude=set(self.NOT_IN_KEY) | {"engine", "dtype", "faults"})
        assert not fields, f"EngineSettings fields without a place in the key: {fields}"
        key = f"{self.engine}:{self.resolved_dtype(device)}"
        return f"{key}:{self.faults}" if self.faults else key


class EndpointSettings(BaseModel):
    """How a served model is reached: an OpenAI-compatible `/v1/chat/completions` (`vllm
    serve`, SGLang, Ollama, a provider). Only the endpoint engines read these."""

    model_config = _CONFIG
    NOT_IN_KEY: ClassVar[frozenset[str]] = frozenset(
        {"endpoint", "api_key_env", "max_concurrency", "requests_per_s", "connect_timeout_s",
         "read_timeout_s", "http_retries", "price_per_mtok"})
    """Where and how fast: the same model behind another URL gives the same rows."""

    endpoint: str | None = None
    """Base URL of an OpenAI-compatible API, e.g. http://gpu-node:8000/v1 (--model is then
    the served model's name)."""
    api_key_env: str | None = "OPENAI_API_KEY"
    """Name of the environment variable that holds the API key (the key itself is never a
    flag, and never written anywhere); unset or empty: no key is sent."""
    send_media: Literal["text", "vllm", "parts"] = "text"
    """What the model is sent. text: the cue-grounded text prompt, for any chat model.
    vllm: the sampled frames as one video (vLLM's frame-list video_url) and the audio as
    audio_url, for `vllm serve` of a Qwen2.5-Omni-class model. parts: the frames as
    image_url parts and the audio as input_audio, for providers' vision+audio models."""
    structured: Literal["json_schema", "none"] = "json_schema"
    """How the JSON answer is enforced. json_schema: response_format with the run's JSON
    schema (strict). none: only asked for in the prompt, validated here and retried."""
    max_concurrency: int = Field(16, ge=1)
    """Requests in flight at once (per engine worker)."""
    requests_per_s: float | None = Field(None, gt=0)
    """At most this many requests started per second (default: no limit)."""
    connect_timeout_s: float = Field(10.0, gt=0)
    """Seconds to wait for a connection."""
    read_timeout_s: float = Field(600.0, gt=0)
    """Seconds to wait for an answer (a long generation takes minutes on a busy server)."""
    http_retries: int = Field(6, ge=0)
    """Retries of a request on 429, 5xx, timeouts and dropped connections (exponential
    backoff with jitter, honouring Retry-After) before the clip fails as `engine`."""
    price_per_mtok: str | None = None
    """'IN,OUT': price per million prompt and output tokens; progress and run.json then show
    the estimated cost."""

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"--endpoint {value!r}: an http:// or https:// URL, e.g. "
                             "http://localhost:8000/v1")
        return value.rstrip("/") if value else value

    @field_validator("price_per_mtok")
    @classmethod
    def _price(cls, value: str | None) -> str | None:
        if value is not None:
            parse_price(value)
        return value

    def key(self) -> dict:
        return self.model_dump(exclude=set(self.NOT_IN_KEY))

    def api_key(self) -> str:
        """The key from --api-key-env's variable in this process ("" when unset)."""
        return os.environ.get(self.api_key_env, "") if self.api_key_env else ""

    @property
    def prices(self) -> tuple[float, float] | None:
        """(prompt, output) price per million tokens, if given."""
        return parse_price(self.price_per_mtok) if self.price_per_mtok else None


def parse_price(spec: str) -> tuple[float, float]:
    """'2.5,10' -> (2.5, 10.0)."""
    try:
        prompt, output = (float(x) for x in spec.split(","))
    except ValueError:
        raise ValueError(f"--price-per-mtok {spec!r}: two numbers, prompt and output price "
                         "per million tokens, e.g. 2.5,10") from None
    if prompt < 0 or output < 0:
        raise ValueError(f"--price-per-mtok {spec!r}: prices are not negative")
    return prompt, output


FAULTS = ("invalid", "truncate", "error", "crash", "broken", "latency", "drop_audio",
          "ungrounded")


def parse_faults(spec: str) -> dict[str, float]:
    """'invalid=0.2,latency=0.01' -> {'invalid': 0.2, 'latency': 0.01}."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, value = part.partition("=")
        if name not in FAULTS:
            raise ValueError(f"--faults {part!r}: known faults are {', '.join(FAULTS)}")
        try:
            out[name] = float(value)
        except ValueError:
            raise ValueError(f"--faults {part!r}: the value must be a number") from None
        if name != "latency" and not 0 <= out[name] <= 1:
            raise ValueError(f"--faults {part!r}: a rate lies in [0, 1]")
    return out
