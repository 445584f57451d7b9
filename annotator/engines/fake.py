"""A fake engine: instant, deterministic answers that follow the enforced JSON schema.

It serves the fast test tier (plan, prepare, engine stage, rows, retries, samples, resume)
and the pipeline's own ceiling in benchmarks: a run with `--engine fake` measures everything
but the model. Its answers derive from the request (a hash of clip id, prompt and attempt),
so a re-run gives the same rows. `--faults` injects what real engines do wrong, per attempt
and reproducibly: invalid JSON, truncation at the token budget, a failed request, a dying engine
process (crash), an engine that cannot start (broken), latency.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter

from annotator.core.media import SAMPLE_RATE
from annotator.engines.contract import EngineOptions, Generation, Request, step_queued
from annotator.models import ModelSpec
from annotator.settings import parse_faults
from prompts.refine import REFINE_INTRO

UNGROUNDED = {"face": "A broad smile lifts the lip corners.",
              "voice": "A loud, shouting voice."}
"""What the `ungrounded` fault makes an answer claim, whatever the clip shows."""
TOKEN = re.compile(r"\w+|[^\w\s]")
"""The fake's tokens: words and punctuation marks, about what a BPE tokenizer makes of JSON."""


class FakeEngine:
    """Answers each request from a hash of it; `options.compute.faults` injects failures."""

    def __init__(self, spec: ModelSpec, options: EngineOptions):
        self.spec, self.options = spec, options
        self.faults = parse_faults(options.compute.faults)
        if self.faults.get("broken"):  # as a model folder with corrupt weights does
            raise RuntimeError(f"{spec.path}: the weights cannot be loaded (fault 'broken')")
        self.attempts: Counter[str] = Counter()  # guided requests seen per clip
        self.startup_s = 0.0
        self.queue: list[tuple[str, Request]] = []

    def generate(self, requests: list[Request]) -> list[Generation]:
        return [self._one(r) for r in requests]

    def submit(self, key: str, request: Request) -> None:
        self.queue.append((key, request))

    def step(self) -> list[tuple[str, Generation]]:
        # one answer per step: with a latency they come back one by one, as from an engine
        return step_queued(self.queue, self.generate, 1)

    def busy(self) -> bool:
        return bool(self.queue)

    def score(self, request: Request, continuation: list[int]) -> list[float]:
        return [self._unit(request.prompt, str(t)) * -5.0 for t in continuation]

    def _one(self, request: Request) -> Generation:
        if self.faults.get("latency"):
            time.sleep(self.faults["latency"])
        text = len(TOKEN.findall(request.prompt))
        placeholders = set(dict(self.spec.media_token_ids).values())
        prompt_ids = [t for t in range(text + len(placeholders)) if t not in placeholders
                      ][:text] + self._media_ids(request)
        budget = request.max_tokens or self.options.sampling.max_tokens
        if not request.guided:  # a free chain of thought (two-phase, first turn)
            text = (f"Thinking about clip {request.clip_id}: the face, the voice and the "
                    f"measured cues point the same way ({self._unit(request.prompt):.3f}).")
            return _generation(text, prompt_ids, budget)
        self.attempts[request.clip_id] += 1
        attempt = f"{request.clip_id}:{self.attempts[request.clip_id]}"
        if self._unit(attempt, "crash") < self.faults.get("crash", 0.0):
            os._exit(17)  # the engine process dies, as on an OOM kill or a segfault
        if self._unit(attempt, "error") < self.faults.get("error", 0.0):
            return Generation(error="FakeEngineError: injected request failure",
                              prompt_token_ids=prompt_ids)
        if self._unit(attempt, "invalid") < self.faults.get("invalid", 0.0):
            return _generation('{"face": "unterminated', prompt_ids, budget)
        answer = instance(self.options.schema, self._seed(request.prompt))
        rounds = request.prompt.count(REFINE_INTRO)  # refinement turns so far
        if "face" in answer and self._unit(f"{request.clip_id}:{rounds}", "ungrounded") \
                < self.faults.get("ungrounded", 0.0):
            answer.update(face=UNGROUNDED["face"], voice=UNGROUNDED["voice"])
        text = json.dumps(answer, separators=(",", ":"))
        if self._unit(attempt, "truncate") < self.faults.get("truncate", 0.0):
            budget = max(1, len(TOKEN.findall(text)) // 2)
        return _generation(text, prompt_ids, budget)

    def _media_ids(self, request: Request) -> list[int]:
        """The placeholder tokens a model's processor would put in the prompt: 16 a frame,
        25 a second of audio (none with the drop_audio fault)."""
        tokens = dict(self.spec.media_token_ids)
        ids = []
        if request.frames is not None and "video" in tokens:
            ids += [tokens["video"]] * 16 * len(request.frames)
        dropped = self._unit(request.clip_id, "drop_audio") < self.faults.get("drop_audio", 0)
        if request.audio is not None and "audio" in tokens and not dropped:
            ids += [tokens["audio"]] * max(1, round(25 * len(request.audio) / SAMPLE_RATE))
        return ids

    def _seed(self, *parts: str) -> int:
        return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:8], "big")

    def _unit(self, *parts: str) -> float:
        """A reproducible number in [0, 1) for these parts."""
        return self._seed(*parts) / 2**64


def _generation(text: str, prompt_ids: list[int], budget: int) -> Generation:
    """A finished generation, or past the budget one cut at its last token: 'length'."""
    ends = [m.end() for m in TOKEN.finditer(text)]
    if len(ends) > budget:
        return Generation(text=text[:ends[budget - 1]], token_ids=list(range(budget)),
                          prompt_token_ids=prompt_ids, finish_reason="length")
    return Generation(text=text, token_ids=list(range(len(ends))),
                      prompt_token_ids=prompt_ids, finish_reason="stop")


WORDS = ("steady", "raised", "soft", "tense", "warm", "level", "quick", "slow", "bright",
         "low", "open", "still")


def instance(schema: dict, seed: int, root: dict | None = None) -> object:
    """A value that validates against `schema` (the subset pydantic emits: objects with
    required properties, enums, bounded numbers and strings, arrays, $ref, anyOf)."""
    root = root or schema
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return instance(root["$defs"][name], seed, root)
    if "enum" in schema:
        return schema["enum"][seed % len(schema["enum"])]
    if "const" in schema:
        return schema["const"]
    if "anyOf" in schema:
        options = [s for s in schema["anyOf"] if s.get("type") != "null"] or schema["anyOf"]
        return instance(options[seed % len(options)], seed, root)
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance(sub, _mix(seed, name), root) for name, sub in props.items()}
    if kind == "array":
        low = schema.get("minItems", 0)
        high = min(schema.get("maxItems", low + 2), low + 2)
        count = low + seed % (high - low + 1)
        return [instance(schema.get("items", {}), _mix(seed, str(i)), root)
                for i in range(count)]
    if kind in ("number", "integer"):
        low, high = schema.get("minimum", 0), schema.get("maximum", 1)
        value = low + (high - low) * ((seed % 101) / 100)
        return int(value) if kind == "integer" else round(value, 2)
    if kind == "boolean":
        return bool(seed % 2)
    low, high = schema.get("minLength", 0), schema.get("maxLength", 80)
    text = " ".join(WORDS[(seed >> (4 * i)) % len(WORDS)] for i in range(6))
    text = (text + " and " + text)[:high]
    return text.ljust(low, ".")


def _mix(seed: int, salt: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{salt}".encode()).digest()[:8], "big")
