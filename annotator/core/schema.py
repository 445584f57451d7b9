"""The affective description an engine must produce, as a pydantic model.

The JSON schema handed to the guided decoder is generated from this model, and the same model
validates what comes back, so the two cannot drift. `reasoning` is the first property: with
structured decoding the model writes its chain of thought before it commits to any label, and
the reasoning is stored in its own column. Lengths and number precision are bounded so that a
constrained decoder always has a way to finish (an unbounded float lets a weak model emit
digits until it runs out of tokens).
"""

from __future__ import annotations

import functools
import hashlib
import json
from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

SCHEMA_VERSION = "2"  # 2: intensity, evidence; coarse variant


class _OwnText:
    """Marks a field as part of the description's own text (`TEXT_FIELDS`); pydantic keeps
    it as metadata and leaves it out of the JSON schema."""


Text = Annotated[str, Field(max_length=240), _OwnText()]
Unit = Annotated[float, Field(ge=0.0, le=1.0, multiple_of=0.01)]


class Evidence(BaseModel):
    """One claim of the description and what it rests on."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    claim: str = Field(max_length=120)
    """What is claimed, e.g. 'raised voice' or 'brows drawn together'."""
    source: Literal["face", "body", "voice", "cues", "metadata"]
    """Where it was observed: a modality, the measured cues, or the clip's metadata."""
    detail: str = Field(max_length=120)
    """The observation or measured value it rests on, e.g. 'loudness -12 dB'."""


class AffectiveDescription(BaseModel):
    """How the person in the clip feels, observed from how things are said and shown."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    reasoning: str = Field(min_length=8, max_length=1000)
    """Step-by-step reasoning from the observations to the emotion, written first."""
    face: Text
    """Facial expression and how it changes over the clip."""
    body: Text
    """Gaze, head movement, posture and gestures."""
    voice: Text
    """Pitch, loudness, tempo, pauses and voice quality (not the words)."""
    cross_modal: Text
    """Whether face, body and voice agree, and where they conflict."""
    primary_emotion: str = Field(max_length=40)
    """The single best emotion label (from the run's label set when it has one)."""
    secondary_emotions: list[Annotated[str, Field(max_length=40)]] = Field(max_length=2)
    """Up to two further emotions that are also present."""
    valence: Annotated[float, Field(ge=-1.0, le=1.0, multiple_of=0.01)]
    """Unpleasant (-1) to pleasant (+1)."""
    arousal: Unit
    """Calm (0) to excited (1)."""
    intensity: Unit
    """How strongly the emotion is shown (0 faint, 1 extreme)."""
    confidence: Unit
    """How sure the annotator is of the primary emotion (0 to 1)."""
    evidence: list[Evidence] = Field(max_length=4)
    """The claims the conclusion rests on, each with its source."""
    summary: Text
    """One or two sentences a person can read instead of the fields above."""


class CoarseDescription(BaseModel):
    """A cheap pass: the label and one sentence, with a short reasoning first."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    reasoning: str = Field(min_length=8, max_length=300)
    """Brief reasoning from the observations to the label, written first."""
    primary_emotion: str = Field(max_length=40)
    """The single best emotion label (from the run's label set when it has one)."""
    summary: str = Field(max_length=200)
    """One sentence on how the emotion is shown."""


SCHEMAS: dict[str, type[BaseModel]] = {"full": AffectiveDescription,
                                       "coarse": CoarseDescription}


def description_model(labels: list[str] | None, kind: str = "full") -> type[BaseModel]:
    """The schema model for a run: `kind` is 'full' or 'coarse' (chosen by the template);
    emotion fields are constrained to `labels` when given."""
    return _description_model(tuple(labels) if labels else None, kind)


# one class per label set: pydantic reads a new model's field docstrings from its source,
# and finding that source scans every loaded module (25-30 ms a model in a process that has
# loaded Ray Data and torch, once per run and per test otherwise)
@functools.lru_cache(maxsize=16)
def _description_model(labels: tuple[str, ...] | None, kind: str) -> type[BaseModel]:
    if kind not in SCHEMAS:
        raise ValueError(f"unknown schema {kind!r}; known: {', '.join(SCHEMAS)}")
    base = SCHEMAS[kind]
    if not labels:
        return base
    label = Literal[labels]  # type: ignore[valid-type]
    fields: dict = {"primary_emotion": (label, Field(
        description=base.model_fields["primary_emotion"].description))}
    if "secondary_emotions" in base.model_fields:
        fields["secondary_emotions"] = (list[label], Field(
            max_length=2, description=base.model_fields["secondary_emotions"].description))
    return create_model(base.__name__, __base__=base, **fields)


@functools.lru_cache(maxsize=16)
def enforced_model(labels: tuple[str, ...] | None, kind: str, two_phase: bool
                   ) -> type[BaseModel]:
    """The model an engine's answer is held to: the run's schema, without its reasoning in
    two-phase generation (the free thought before it is the reasoning). One decision, made
    for the JSON schema the engine enforces and for the check of what comes back."""
    model = description_model(list(labels) if labels else None, kind)
    return answer_model(model) if two_phase else model


def answer_model(model: type[BaseModel]) -> type[BaseModel]:
    """The model without its `reasoning` field: what the second phase of two-phase generation
    must write, the reasoning being the free chain of thought that came before it."""
    fields = {name: (info.annotation, info) for name, info in model.model_fields.items()
              if name != "reasoning"}
    return create_model(f"{model.__name__}Answer", __config__=model.model_config, **fields)


TEXT_FIELDS = tuple(name for name, info in AffectiveDescription.model_fields.items()
                    if any(isinstance(m, _OwnText) for m in info.metadata))
"""The fields that make a description's own text (what the audit reads and injection embeds):
the `Text` fields, in the schema's order."""
MODALITY_FIELDS = tuple(name for name in TEXT_FIELDS
                        if name in get_args(Evidence.model_fields["source"].annotation))
"""The text fields that describe one modality each (face, body, voice): the evidence sources
that are also fields."""


def field_list(kind: str = "full") -> str:
    """The answer's fields (all but `reasoning`) as a prompt names them, with ranges and the
    shape of list items: 'face, body, ..., valence (-1 to 1), ... and summary'."""
    def described(name: str, info) -> str:
        bounds = {type(m).__name__: v for m in info.metadata
                  for v in (getattr(m, "ge", None), getattr(m, "le", None)) if v is not None}
        if "Ge" in bounds and "Le" in bounds:
            return f"{name} ({bounds['Ge']:g} to {bounds['Le']:g})"
        item = get_args(info.annotation)[0] if get_args(info.annotation) else None
        if isinstance(item, type) and issubclass(item, BaseModel):
            what, where, rests = item.model_fields  # e.g. claim, source, detail
            choices = list(get_args(item.model_fields[where].annotation))
            limit = next(m.max_length for m in info.metadata if hasattr(m, "max_length"))
            return (f"{name} (up to {limit} {what}s, each with its {where}: "
                    f"{', '.join(choices[:-1])} or {choices[-1]}, and the {rests} it rests on)")
        return name
    names = [described(n, info) for n, info in SCHEMAS[kind].model_fields.items()
             if n != "reasoning"]
    return ", ".join(names[:-1]) + " and " + names[-1] if len(names) > 1 else names[0]


def description_text(description: dict) -> str:
    """A description's own text: its TEXT_FIELDS joined by spaces (empty ones skipped)."""
    return " ".join(t for t in (description.get(f) for f in TEXT_FIELDS) if t)


def description_text_sql(struct: str = "description") -> str:
    """The same text as a DuckDB expression over a description struct column."""
    return "concat_ws(' ', " + ", ".join(f"{struct}.{f}" for f in TEXT_FIELDS) + ")"


def json_schema(model: type[BaseModel]) -> dict:
    return model.model_json_schema()


def schema_sha256(model: type[BaseModel]) -> str:
    blob = json.dumps(json_schema(model), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def parse_description(model: type[BaseModel], text: str) -> tuple[dict | None, str]:
    """Validate engine output. Returns (description, "") or (None, reason)."""
    try:
        return model.model_validate_json(text).model_dump(), ""
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "output"
        return None, f"{where}: {first['msg']} ({err.error_count()} error(s))"
