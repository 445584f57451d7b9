"""A planned clip's prompts: the run's template rendered with the clip's context and cues,
written into the model's chat frames."""

from __future__ import annotations

import json

from annotator.chat import chat_frames, shape_of
from annotator.core.cues import for_template, typical
from annotator.stages.context import RunContext
from prompts import render
from prompts.isolate import trial_render

PLANNING_COLUMNS = ("path", "audio_path", "stratum")
"""Manifest and plan columns a template's `clip` does not show (where the media are, and the
subset's stratum)."""


def template_clip(row: dict) -> dict:
    """A manifest row as a template's `clip` sees it."""
    return {k: v for k, v in row.items() if k not in PLANNING_COLUMNS}


def _template_context(ctx: RunContext, context: dict, cues: dict | None) -> dict:
    return {**context, "modalities": list(ctx.spec.modalities), "labels": ctx.labels,
            "cues": cues, "examples": [], "phase": "think" if ctx.two_phase else "one-pass"}


def try_template(ctx: RunContext, row: dict) -> None:
    """A user's template rendered once in a limited child (prompts.isolate) with this clip,
    typical media, without and with typical cues, in every phase the run uses: a template that
    would exhaust the machine is refused before any clip is planned. Shipped ones are ours."""
    if ctx.template.shipped:
        return
    media = {"has_video": True, "has_audio": True, "duration_s": ctx.media.max_duration_s,
             "source_fps": 25.0, "width": 640, "height": 360,
             "num_frames": ctx.media.num_frames}
    clip = {"clip": template_clip(row), "media": media}
    contexts = [_template_context(ctx, clip, cues) for cues in (None, for_template(typical()))]
    if ctx.two_phase:
        contexts += [{**c, "phase": "answer"} for c in contexts]
    trial_render(ctx.template, contexts)


def render_prompt(ctx: RunContext, context_json: str, cues: dict | None) -> tuple[str, str]:
    """(prompt, answer prompt) for a planned clip, with measured cues once they exist.

    One-pass: the answer prompt is "". Two-phase: the prompt is the first turn, which asks for
    the free chain of thought; the answer prompt is that turn, the model's thought (as
    THOUGHT_SLOT) and the turn that asks for the JSON. The chat frames are the context's
    (the driver's), else made once in this process from the tokenizer."""
    spec = ctx.spec
    context = _template_context(ctx, json.loads(context_json), cues)
    media = context["media"]
    user_text = render(ctx.template, context)
    shape = shape_of(spec, media["has_video"] and "video" in spec.modalities,
                     media["has_audio"] and "audio" in spec.modalities)
    frames = ctx.chat or chat_frames(spec)
    prompt = frames.fill(shape, user_text)
    if not ctx.two_phase:
        return prompt, ""
    answer = render(ctx.template, {**context, "phase": "answer"})
    return prompt, frames.fill(shape, user_text, answer)
