"""The chat-formatted prompt and the media inputs a model gets, shaped by its family.

Qwen2.5-Omni-class models get their media placeholders in the user turn and the frames and
audio beside the prompt; text-only models get the text alone. Two-phase generation continues
the conversation: the model's own thought (THOUGHT_SLOT until it exists), then a follow-up.
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import threading
from dataclasses import dataclass

import numpy as np

from annotator.core.errors import PromptError
from annotator.core.media import SAMPLE_RATE
from annotator.models import ModelSpec

SYSTEM_PROMPT = "You are a careful annotator of emotional behaviour in audio-visual clips."
THOUGHT_SLOT = "\x00vaemo-thought\x00"
"""Stands in an answer prompt for the chain of thought, which exists only after phase one."""


def chat_messages(spec: ModelSpec, user_text: str, has_video: bool, has_audio: bool,
                  followup: str | None = None) -> list[dict]:
    """The conversation, with the model's media placeholders (`{"type": "video"}` or
    `{"type": "audio"}` parts) where they belong in the user turn.

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
        return messages
    messages = [{"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": user_text}]
    if followup is not None:
        messages += [{"role": "assistant", "content": THOUGHT_SLOT},
                     {"role": "user", "content": followup}]
    return messages


def build_prompt(tokenizer, spec: ModelSpec, user_text: str, has_video: bool,
                 has_audio: bool, followup: str | None = None) -> str:
    """The chat-formatted prompt (`chat_messages` through the model's chat template)."""
    messages = chat_messages(spec, user_text, has_video, has_audio, followup)
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if followup is not None and prompt.count(THOUGHT_SLOT) != 1:
        raise PromptError(f"the chat template of {spec.name} does not keep the model's own turn "
                         "verbatim, so two-phase generation cannot run on it; use "
                         "--generation one-pass")
    return prompt


def with_thought(spec: ModelSpec, answer_prompt: str, thought: str) -> str:
    """The answer prompt with the model's chain of thought in its own turn (JSON-escaped in a
    served model's messages)."""
    return answer_prompt.replace(THOUGHT_SLOT, _escaped(thought) if spec.served else thought)


def _escaped(text: str) -> str:
    """`text` as it stands inside a JSON string."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


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
    """The model's tokenizer, loaded once per process (driver or engine)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


USER_SLOT = "\x00vaemo-user\x00"
FOLLOWUP_SLOT = "\x00vaemo-followup\x00"
PROBE_TEXTS = ('A probe: "quoted", <b>tagged</b> & {{ braced }} 100%\nsecond line',
               "Then {% raw %} \\n 'single' \t tab")
"""Texts with what a template could change (quotes, markup, Jinja syntax, escapes): a frame
is used only where putting them in its slots gives what the tokenizer renders itself."""


@dataclass(frozen=True)
class ChatFrames:
    """The model's chat template rendered once per conversation shape, its texts left as
    slots: a clip's prompt is its shape's frame with the texts put in, the very string the
    tokenizer's `apply_chat_template` gives (checked when the frames are made). Built in the
    driver and carried in the run's context, so Ray's plan and prepare tasks never load
    transformers (3.6 s of CPU and torch's memory in every worker process, measured here).

    A shape is what the user turn carries ("video", "audio" or "text"), with or without the
    answer turn of two-phase generation; a shape the template cannot render keeps its
    error, raised for each clip of that shape as the tokenizer would have raised it."""

    frames: dict[tuple[str, bool], str]
    errors: dict[tuple[str, bool], str]
    messages_json: bool = False
    """The frames are a served model's messages as JSON (texts go in JSON-escaped)."""

    def fill(self, shape: str, user_text: str, followup: str | None = None) -> str:
        key = (shape, followup is not None)
        if key in self.errors:
            raise PromptError(self.errors[key])
        if self.messages_json:
            user_text = _escaped(user_text)
            followup = None if followup is None else _escaped(followup)
        return _fill(self.frames[key], user_text, followup)


_SLOTS = re.compile(f"{USER_SLOT}|{FOLLOWUP_SLOT}")


def _fill(frame: str, user_text: str, followup: str | None) -> str:
    """`frame` with its slots replaced in one pass (a text that holds a slot stays as is)."""
    texts = {USER_SLOT: user_text, FOLLOWUP_SLOT: followup}
    return _SLOTS.sub(lambda m: texts[m.group(0)], frame)


def shape_of(spec: ModelSpec, use_video: bool, use_audio: bool) -> str:
    """The conversation shape `build_prompt` makes for a clip (text models: always text)."""
    if spec.family != "omni":
        return "text"
    return "video" if use_video else "audio" if use_audio else "text"


_FRAMES_LOCK = threading.Lock()


def chat_frames(spec: ModelSpec) -> ChatFrames:
    """The frames of every shape `spec` can be given, made once per process from its
    tokenizer; a shape whose template changes the text it is given keeps that as its
    error. Safe from several threads (the planning threads): transformers fails when two
    threads import it at once."""
    with _FRAMES_LOCK:
        return _chat_frames(spec)


@functools.lru_cache(maxsize=2)
def _chat_frames(spec: ModelSpec) -> ChatFrames:
    if spec.served:
        return _message_frames(spec)
    tokenizer = load_tokenizer(spec.path)
    shapes = ("video", "audio", "text") if spec.family == "omni" else ("text",)
    frames, errors = {}, {}
    for shape, followup in itertools.product(shapes, (False, True)):
        video, audio = shape == "video", shape == "audio"
        try:
            frame = build_prompt(tokenizer, spec, USER_SLOT, video, audio,
                                 FOLLOWUP_SLOT if followup else None)
        except PromptError as err:
            errors[shape, followup] = str(err)
            continue
        user, answer = PROBE_TEXTS[0], PROBE_TEXTS[1] if followup else None
        if _fill(frame, user, answer) == build_prompt(tokenizer, spec, user, video, audio,
                                                      answer):
            frames[shape, followup] = frame
        else:
            errors[shape, followup] = (
                f"the chat template of {spec.name} changes the text it is given (it does not "
                "write each message's content as it is), so vaemo cannot put its prompts in "
                "it; use a model whose chat template does")
    return ChatFrames(frames, errors)


def _message_frames(spec: ModelSpec) -> ChatFrames:
    """A served model's frames: its conversation as JSON, the chat template being the
    server's. The slots stay raw (a JSON-escaped NUL never occurs in a filled text)."""
    shapes = ("video", "audio", "text") if spec.family == "omni" else ("text",)
    frames = {}
    for shape, followup in itertools.product(shapes, (False, True)):
        messages = chat_messages(spec, USER_SLOT, shape == "video", shape == "audio",
                                 FOLLOWUP_SLOT if followup else None)
        frame = json.dumps(messages, ensure_ascii=False)
        for slot in (USER_SLOT, FOLLOWUP_SLOT, THOUGHT_SLOT):
            frame = frame.replace(_escaped(slot), slot)
        frames[shape, followup] = frame
    return ChatFrames(frames, {}, messages_json=True)
