"""A planned clip's prompts: the run's template rendered with the clip's context and cues,
written into the model's chat frames."""

from __future__ import annotations

import json

from annotator.chat import chat_frames, turn_shapes
from annotator.core.cues import for_template, typical
from annotator.stages.context import RunContext
from prompts import render
from prompts.isolate import trial_render

HINT = ('The dataset labels this clip "{label}". Take it as a hint, not as the answer: '
        "describe what the clip shows and sounds like, and say so where it disagrees.")
"""Added to a clip's first turn with --label-hint (whatever the template)."""

PLANNING_COLUMNS = ("path", "audio_path", "stratum")
"""Manifest and plan columns a template's `clip` does not show (where the media are, and the
subset's stratum)."""


def template_clip(row: dict) -> dict:
    """A manifest row as a template's `clip` sees it."""
    return {k: v for k, v in row.items() if k not in PLANNING_COLUMNS}


def _template_context(ctx: RunContext, context: dict, cues: dict | None) -> dict:
    return {**context, "modalities": list(ctx.spec.modalities), "labels": ctx.labels,
            "cues": cues, "examples": []}


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
    trial_render(ctx.template, [{**_template_context(ctx, clip, cues), "phase": phase}
                                for cues in (None, for_template(typical()))
                                for phase in ctx.phase_names])


def hinted_label(ctx: RunContext, clip: dict) -> str | None:
    """The label a clip's prompt shows as a hint (--label-hint and a labelled clip)."""
    return (clip.get("label") or None) if ctx.label_hint else None


def render_texts(ctx: RunContext, context_json: str, cues: dict | None,
                 turns: int | None = None) -> list[str]:
    """The user text of each turn of a planned clip (`ctx.phase_names`; the first `turns` of
    them), with measured cues once they exist (and the label hint in the first)."""
    context = _template_context(ctx, json.loads(context_json), cues)
    texts = [render(ctx.template, {**context, "phase": phase})
             for phase in ctx.phase_names[:turns]]
    hint = hinted_label(ctx, context["clip"])
    if hint is not None:
        texts[0] = f"{texts[0]}\n\n{HINT.format(label=hint)}"
    return texts


def chat_prompt(ctx: RunContext, has_video: bool, has_audio: bool, texts: list[str]) -> str:
    """The prompt of the turn after `texts` (the user turns so far): the model's earlier
    replies are slots (chat.with_replies). The chat frames are the context's (the
    driver's), else made once in this process from the tokenizer."""
    shapes = turn_shapes(ctx.spec, ctx.turn_media, has_video, has_audio)
    frames = ctx.chat or chat_frames(ctx.spec, ctx.turn_media)
    return frames.fill(shapes[:len(texts)], texts)

