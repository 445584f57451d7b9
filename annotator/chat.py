"""The chat-formatted prompt and the media inputs a model gets, shaped by its family.

Qwen2.5-Omni-class models get their media placeholders in the user turns and the frames and
audio beside the prompt; text-only models get the text alone. Generation in turns (two-phase,
or a template's chain of phases) continues the conversation: the model's own replies (reply
slots until they exist), each followed by the next user turn. A turn shows the model the part
of the clip its phase asks for that no earlier turn showed (`turn_shapes`).
"""

from __future__ import annotations

import functools
import itertools
import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from annotator.chat_template import chat_template
from annotator.core.errors import PromptError
from annotator.core.media import SAMPLE_RATE
from annotator.models import ModelSpec

SYSTEM_PROMPT = "You are a careful annotator of emotional behaviour in audio-visual clips."

AV, VIDEO, AUDIO, TEXT = "video+audio", "video", "audio", "text"
"""A user turn's shape, what it shows first: the video with its sound in it (Qwen-Omni's
`use_audio_in_video`), the frames alone, the soundtrack alone, or nothing but text."""


def reply_slot(turn: int) -> str:
    """Stands in a later turn's prompt for the model's reply to `turn`, which exists only
    once that turn has run."""
    return f"\x00vaemo-reply-{turn}\x00"


def _user_slot(turn: int) -> str:
    return f"\x00vaemo-user-{turn}\x00"


_REPLY_SLOTS = re.compile("\x00vaemo-reply-(\\d+)\x00")
_USER_SLOTS = re.compile("\x00vaemo-user-(\\d+)\x00")


def turn_shapes(spec: ModelSpec, turn_media: Sequence[str], has_video: bool,
                has_audio: bool) -> tuple[str, ...]:
    """Each user turn's shape for a clip: turn_media[i] is what turn i asks to show first
    ("clip", "video", "audio" or "text", prompts.PHASE_MEDIA); a stream the clip lacks, the
    model does not take, or an earlier turn showed is not shown again."""
    left = {m for m, has in ((VIDEO, has_video), (AUDIO, has_audio))
            if has and m in spec.modalities and spec.family == "omni"}
    shapes = []
    for media in turn_media:
        shown = left & ({VIDEO, AUDIO} if media == "clip" else {media})
        left -= shown
        shapes.append(AV if len(shown) == 2 else shown.pop() if shown else TEXT)
    return tuple(shapes)


def shown_until(shapes: Sequence[str], turn: int) -> tuple[bool, bool, bool]:
    """(video, audio, audio in the video) that turns 0..`turn` show between them: the media
    the request of `turn` carries."""
    seen = shapes[:turn + 1]
    return (any(s in (AV, VIDEO) for s in seen), any(s in (AV, AUDIO) for s in seen),
            AV in seen)


def chat_messages(spec: ModelSpec, turns: Sequence[tuple[str, str]],
                  replies: Sequence[str] = ()) -> list[dict]:
    """The conversation: a user turn per (shape, text), with the model's media placeholders
    (`{"type": "video"}` or `{"type": "audio"}` parts) where its shape says, and the model's
    reply between two user turns (replies[i] after turn i)."""
    omni = spec.family == "omni"

    def content(text: str, shape: str = TEXT) -> list[dict] | str:
        if not omni:
            return text
        media = {AV: [{"type": "video"}], VIDEO: [{"type": "video"}],
                 AUDIO: [{"type": "audio"}]}.get(shape, [])
        return [*media, {"type": "text", "text": text}]

    messages = [{"role": "system", "content": content(SYSTEM_PROMPT)}]
    for i, (shape, text) in enumerate(turns):
        if i:
            messages.append({"role": "assistant", "content": content(replies[i - 1])})
        messages.append({"role": "user", "content": content(text, shape)})
    return messages


def conversation_prompt(tokenizer, spec: ModelSpec, turns: Sequence[tuple[str, str]],
                        replies: Sequence[str] = ()) -> str:
    """The chat-formatted prompt of a conversation (`chat_messages` through the model's
    chat template) that asks for the next reply."""
    messages = chat_messages(spec, turns, replies)
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def build_prompt(tokenizer, spec: ModelSpec, user_text: str, has_video: bool,
                 has_audio: bool, followup: str | None = None) -> str:
    """The prompt of one clip's first turn (with `followup`: of the turn after the model's
    reply to it, the reply left as its slot)."""
    shapes = turn_shapes(spec, ("clip", "text"), has_video, has_audio)
    texts = [user_text] if followup is None else [user_text, followup]
    return conversation_prompt(tokenizer, spec, list(zip(shapes, texts)), [reply_slot(0)])


def with_replies(spec: ModelSpec, prompt: str, replies: Sequence[str]) -> str:
    """A later turn's prompt with the model's earlier replies in their slots (JSON-escaped
    in a served model's messages)."""
    texts = [_escaped(r) if spec.served else r for r in replies]
    return _REPLY_SLOTS.sub(lambda m: texts[int(m.group(1))], prompt)


def shown_with_slots(prompt: str, names: Sequence[str]) -> str:
    """A later turn's prompt for people to read: each reply slot as `<reply to NAME>`."""
    return _REPLY_SLOTS.sub(lambda m: f"<reply to {names[int(m.group(1))]}>", prompt)


def _escaped(text: str) -> str:
    """`text` as it stands inside a JSON string."""
    return json.dumps(text, ensure_ascii=False)[1:-1]


def media_inputs(spec: ModelSpec, frames: np.ndarray | None, fps: float | None,
                 audio: np.ndarray | None, min_pixels: int, max_pixels: int,
                 audio_in_video: bool = True) -> tuple[dict, dict]:
    """(multi_modal_data, mm_processor_kwargs) in vLLM's shape; empty for text models.
    `audio_in_video`: with both streams, the audio rides in the video (False: it has a
    placeholder of its own, a turn of its own)."""
    if spec.family != "omni":
        return {}, {}
    data: dict = {}
    kwargs: dict = {"min_pixels": min_pixels, "max_pixels": max_pixels}
    if frames is not None:
        data["video"] = frames
        kwargs["fps"] = fps
    if audio is not None:
        data["audio"] = (audio, SAMPLE_RATE)
    kwargs["use_audio_in_video"] = frames is not None and audio is not None and audio_in_video
    return data, kwargs


@functools.lru_cache(maxsize=2)
def load_tokenizer(path: str):
    """The model's tokenizer, loaded once per process (driver or engine)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


PROBE_TEXTS = ('A probe: "quoted", <b>tagged</b> & {{ braced }} 100%\nsecond line',
               "Then {% raw %} \\n 'single' \t tab")
"""Texts with what a template could change (quotes, markup, Jinja syntax, escapes): a frame
is used only where putting them in its slots gives what the tokenizer renders itself."""


@dataclass(frozen=True)
class ChatFrames:
    """The model's chat template rendered once per conversation shape, its texts left as
    slots: a clip's prompt is its shape's frame with the texts put in, the very string the
    tokenizer's `apply_chat_template` gives (checked when the frames are made). Built in the
    driver, without transformers where the folder allows (annotator/chat_template.py), and
    carried in the run's context, so Ray's plan and prepare tasks never load transformers
    (3.6 s of CPU and torch's memory in every worker process, measured here).

    A conversation shape is the shapes of its user turns so far (`turn_shapes`); a shape the
    template cannot render keeps its error, raised for each clip of that shape as the
    tokenizer would have raised it."""

    frames: dict[tuple[str, ...], str]
    errors: dict[tuple[str, ...], str]
    messages_json: bool = False
    """The frames are a served model's messages as JSON (texts go in JSON-escaped)."""

    def fill(self, shapes: tuple[str, ...], texts: Sequence[str]) -> str:
        """The prompt of the conversation's last turn: its user texts in place, the model's
        replies before it still slots (`with_replies`)."""
        if shapes in self.errors:
            raise PromptError(self.errors[shapes])
        if self.messages_json:
            texts = [_escaped(t) for t in texts]
        return _fill(self.frames[shapes], texts)


def _fill(frame: str, texts: Sequence[str]) -> str:
    """`frame` with its user slots replaced in one pass (a text that holds a slot stays)."""
    return _USER_SLOTS.sub(lambda m: texts[int(m.group(1))], frame)


def clip_kinds(spec: ModelSpec) -> list[tuple[bool, bool]]:
    """(has video, has audio) of every kind of clip whose conversation can differ."""
    return list(itertools.product((True, False), repeat=2)) if spec.family == "omni" \
        else [(False, False)]


_FRAMES_LOCK = threading.Lock()


def chat_frames(spec: ModelSpec, turn_media: tuple[str, ...] = ("clip", "text")) -> ChatFrames:
    """The frames of every conversation `spec` can be given by a run whose turns show
    `turn_media` (one-pass: ("clip",)), every clip kind and every turn of it, made once per
    process from its tokenizer; a shape whose template changes the text it is given keeps
    that as its error. Safe from several threads (the planning threads): transformers fails
    when two threads import it at once."""
    with _FRAMES_LOCK:
        return _chat_frames(spec, turn_media)


def _conversations(spec: ModelSpec, turn_media: tuple[str, ...]) -> set[tuple[str, ...]]:
    """Every conversation shape (each turn's, of each clip kind) a run can render."""
    return {shapes[:n] for kind in clip_kinds(spec)
            for shapes in [turn_shapes(spec, turn_media, *kind)]
            for n in range(1, len(shapes) + 1)}


@functools.lru_cache(maxsize=4)
def _chat_frames(spec: ModelSpec, turn_media: tuple[str, ...]) -> ChatFrames:
    if spec.served:
        return _message_frames(spec, turn_media)
    tokenizer = chat_template(spec.path) or load_tokenizer(spec.path)
    frames, errors = {}, {}
    for shapes in _conversations(spec, turn_media):
        replies = [reply_slot(i) for i in range(len(shapes) - 1)]
        frame = conversation_prompt(tokenizer, spec, list(zip(shapes, map(_user_slot,
                                                                            range(len(shapes))))),
                                    replies)
        if any(frame.count(r) != 1 for r in replies):
            errors[shapes] = (f"the chat template of {spec.name} does not keep the model's own "
                              "turns verbatim, so generation in turns cannot run on it; use "
                              "--generation one-pass")
            continue
        probes = [PROBE_TEXTS[i % len(PROBE_TEXTS)] + str(i) for i in range(len(shapes))]
        if _fill(frame, probes) == conversation_prompt(tokenizer, spec,
                                                       list(zip(shapes, probes)), replies):
            frames[shapes] = frame
        else:
            errors[shapes] = (
                f"the chat template of {spec.name} changes the text it is given (it does not "
                "write each message's content as it is), so vaemo cannot put its prompts in "
                "it; use a model whose chat template does")
    return ChatFrames(frames, errors)


def _message_frames(spec: ModelSpec, turn_media: tuple[str, ...]) -> ChatFrames:
    """A served model's frames: its conversation as JSON, the chat template being the
    server's. The slots stay raw (a JSON-escaped NUL never occurs in a filled text)."""
    frames = {}
    for shapes in _conversations(spec, turn_media):
        slots = [_user_slot(i) for i in range(len(shapes))]
        replies = [reply_slot(i) for i in range(len(shapes) - 1)]
        frame = json.dumps(chat_messages(spec, list(zip(shapes, slots)), replies),
                           ensure_ascii=False)
        for slot in (*slots, *replies):
            frame = frame.replace(_escaped(slot), slot)
        frames[shapes] = frame
    return ChatFrames(frames, {}, messages_json=True)
