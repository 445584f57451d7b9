"""A planned clip's prompts: the run's template rendered with the clip's context and cues,
written into the model's chat frames."""

from __future__ import annotations

import json

from annotator.chat import chat_frames, shape_of
from annotator.stages.context import RunContext
from prompts import render


def render_prompt(ctx: RunContext, context_json: str, cues: dict | None) -> tuple[str, str]:
    """(prompt, answer prompt) for a planned clip, with measured cues once they exist.

    One-pass: the answer prompt is "". Two-phase: the prompt is the first turn, which asks for
    the free chain of thought; the answer prompt is that turn, the model's thought (as
    THOUGHT_SLOT) and the turn that asks for the JSON. The chat frames are the context's
    (the driver's), else made once in this process from the tokenizer."""
    spec = ctx.spec
    context = json.loads(context_json)
    media = context["media"]
    context.update(modalities=list(spec.modalities), labels=ctx.labels, cues=cues,
                   examples=[], phase="think" if ctx.two_phase else "one-pass")
    user_text = render(ctx.template, context)
    shape = shape_of(spec, media["has_video"] and "video" in spec.modalities,
                     media["has_audio"] and "audio" in spec.modalities)
    frames = ctx.chat or chat_frames(spec)
    prompt = frames.fill(shape, user_text)
    if not ctx.two_phase:
        return prompt, ""
    answer = render(ctx.template, {**context, "phase": "answer"})
    return prompt, frames.fill(shape, user_text, answer)
