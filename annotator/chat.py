"""The chat-formatted prompt and the media inputs a model gets, shaped by its family.

Qwen2.5-Omni-class models get their media placeholders in the user turn and the frames and
audio beside the prompt; text-only models get the text alone. Two-phase generation continues
the conversation: the model's own thought (THOUGHT_SLOT until it exists), then a follow-up.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import numpy as np

from annotator.errors import PromptError
from annotator.media import SAMPLE_RATE
from annotator.models import ModelSpec
from prompts import render

if TYPE_CHECKING:  # the context is built by the driver; chat only reads it
    from annotator.stages.context import RunContext

SYSTEM_PROMPT = "You are a careful annotator of emotional behaviour in audio-visual clips."
THOUGHT_SLOT = "\x00vaemo-thought\x00"
"""Stands in an answer prompt for the chain of thought, which exists only after phase one."""


def build_prompt(tokenizer, spec: ModelSpec, user_text: str, has_video: bool,
                 has_audio: bool, followup: str | None = None) -> str:
    """The chat-formatted prompt, with the model's media placeholders where they belong.

    With `followup`, the conversation goes on: the model's own turn (THOUGHT_SLOT, replaced
    by its chain of thought later) and then `followup` as the next user turn."""
    if spec.family == "omni":
        parts: list[dict] = []
        if has_video:
            parts.append({"type": "video"})
        elif has_audio:
            parts.append({"type": "audio"})
        parts.append({"type": "text", "text": user_text})
        messages = [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
                    {"role": "user", "content": parts}]
        if followup is not None:
            messages += [{"role": "assistant",
                          "content": [{"type": "text", "text": THOUGHT_SLOT}]},
                         {"role": "user", "content": [{"type": "text", "text": followup}]}]
    else:
        messages = [{"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": user_text}]
        if followup is not None:
            messages += [{"role": "assistant", "content": THOUGHT_SLOT},
                         {"role": "user", "content": followup}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if followup is not None and prompt.count(THOUGHT_SLOT) != 1:
        raise PromptError(f"the chat template of {spec.name} does not keep the model's own turn "
                         "verbatim, so two-phase generation cannot run on it; use "
                         "--generation one-pass")
    return prompt


def media_inputs(spec: ModelSpec, frames: np.ndarray | None, fps: float | None,
                 audio: np.ndarray | None, min_pixels: int, max_pixels: int
                 ) -> tuple[dict, dict]:
    """(multi_modal_data, mm_processor_kwargs) in vLLM's shape; empty for text models."""
    if spec.family != "omni":
        return {}, {}
    data: dict = {}
    kwargs: dict = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    if frames is not None:
        data["video"] = frames
        kwargs["fps"] = fps
    if audio is not None:
        data["audio"] = (audio, SAMPLE_RATE)
    kwargs["use_audio_in_video"] = frames is not None and audio is not None
    return data, kwargs


@functools.lru_cache(maxsize=2)
def load_tokenizer(path: str):
    """The model's tokenizer, loaded once per process (driver or Ray worker)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def render_prompt(ctx: RunContext, tokenizer, context_json: str,
                  cues: dict | None) -> tuple[str, str]:
    """(prompt, answer prompt) for a planned clip, with measured cues once they exist.

    One-pass: the answer prompt is "". Two-phase: the prompt is the first turn, which asks for
    the free chain of thought; the answer prompt is that turn, the model's thought (as
    THOUGHT_SLOT) and the turn that asks for the JSON."""
    spec = ctx.spec
    two_phase = ctx.two_phase
    context = json.loads(context_json)
    media = context["media"]
    context.update(modalities=list(spec.modalities), labels=ctx.labels, cues=cues,
                   examples=[], phase="think" if two_phase else "one-pass")
    user_text = render(ctx.template, context)
    use_video = media["has_video"] and "video" in spec.modalities
    use_audio = media["has_audio"] and "audio" in spec.modalities
    prompt = build_prompt(tokenizer, spec, user_text, use_video, use_audio)
    if not two_phase:
        return prompt, ""
    answer = render(ctx.template, {**context, "phase": "answer"})
    return prompt, build_prompt(tokenizer, spec, user_text, use_video, use_audio, answer)
