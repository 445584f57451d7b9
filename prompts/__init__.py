"""Prompt templates: Jinja files shipped as package data, rendered in a sandbox.

A template starts with a header comment `{#- vaemo-template name=NAME version=N -#}`, optionally
with `schema=coarse` (the short answer schema; default `full`) and `phases=...` (a chain of
free turns before the JSON answer, below); its name, version and the sha256 of its source are
recorded with every row it produced.

Phases. A template that reads `phase` renders one free turn, 'think', before the JSON turn
'answer' (two-phase generation). A header `phases=face:video:128,voice:audio:128,fuse:text`
declares a chain instead: each free turn is NAME:MEDIA[:TOKENS], MEDIA being the part of the
clip that turn shows the model for the first time (`video`: the frames without their sound,
`audio`: the soundtrack, `clip`: whatever the clip has that no earlier turn showed, `text`:
nothing new), TOKENS its output budget (default: --think-tokens). Every turn has the earlier
ones, and the model's replies to them, in context; the JSON turn comes last.

Context a template receives (all keys always present; StrictUndefined turns a typo into an
error instead of an empty string):
  clip        manifest row: clip_id, label, speaker, split, dataset and any extra columns
  media       has_video, has_audio, duration_s, source_fps, width, height, num_frames
  modalities  what the model accepts: a subset of ["video", "audio"] (empty for text-only)
  labels      the label set the answer is constrained to, or None (open vocabulary)
  cues        measured cues (dict) or None
  examples    few-shot examples (list of dicts), possibly empty
  phase       'one-pass' (one JSON answer, reasoning first), or for two-phase generation
              'think' (the first turn: reason in free text, no JSON yet), or a declared
              phase's name, and 'answer' (the last turn, after the free ones: write the
              JSON, without a reasoning field). A template that never reads `phase` supports
              one-pass only.
  fields      the answer's fields as a sentence names them, from the template's schema
              (annotator/core/schema.py `field_list`): 'face, body, ..., and summary'
              (`reasoning` is not among them: one-pass templates name it first themselves)
The label from the manifest is in `clip.label`; shipped templates never show it, so the
annotation is not told the answer (--label-hint adds it to the first turn as a hint, whatever
the template).
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from jinja2 import StrictUndefined, TemplateError, meta
from jinja2.sandbox import SecurityError

from annotator.core.errors import PromptError
from annotator.core.schema import field_list
from prompts.sandbox import (MAX_PROMPT_CHARS, BudgetedEnvironment, check_clock, start_clock,
                             stop_clock)

_HEADER = re.compile(r"\{#-?\s*vaemo-template\s+((?:\w+=\S+\s*?)+)\s*-?#\}")
_HEADER_KEYS = ("name", "version", "schema", "phases")
CONTEXT_KEYS = ("clip", "media", "modalities", "labels", "cues", "examples", "phase", "fields")
ONE_PASS, THINK, ANSWER = "one-pass", "think", "answer"
PHASES = (ONE_PASS, THINK, ANSWER)
"""The phases every template that reads `phase` renders (one-pass, or think then answer)."""
PHASE_MEDIA = ("video", "audio", "clip", "text")
"""What a free turn may show the model for the first time (see the module's docstring)."""
SHIPPED_ORIGIN = "prompts/templates/"


@dataclass(frozen=True)
class Phase:
    """One free turn before the JSON answer."""

    name: str
    media: str = "clip"
    """The part of the clip this turn shows first (PHASE_MEDIA)."""
    max_tokens: int | None = None
    """Its output budget; None: the run's --think-tokens."""


TWO_PHASE = (Phase(THINK),)
"""The free turns of a template that reads `phase` and declares none: one thought."""


def parse_phases(text: str, origin: str) -> tuple[Phase, ...]:
    """`face:video:128,voice:audio,fuse:text` as Phases, or a PromptError naming the fault."""
    phases = []
    for item in text.split(","):
        parts = item.split(":")
        name, media, tokens = (parts + ["", ""])[:3]
        media = media or "clip"
        problem = None
        if len(parts) > 3 or not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in PHASES:
            problem = "a phase is NAME:MEDIA[:TOKENS], NAME in lower case and not " \
                      f"{', '.join(PHASES)}"
        elif media not in PHASE_MEDIA:
            problem = f"MEDIA is one of {', '.join(PHASE_MEDIA)}"
        elif tokens and not (tokens.isdigit() and int(tokens) > 0):
            problem = "TOKENS is a positive whole number"
        if problem:
            raise PromptError(f"template {origin}: phase {item!r} in its header: {problem}")
        phases.append(Phase(name, media, int(tokens) if tokens else None))
    if len({p.name for p in phases}) < len(phases):
        raise PromptError(f"template {origin}: its header names a phase twice ({text})")
    return tuple(phases)



@dataclass(frozen=True)
class Template:
    name: str
    version: str
    source: str
    origin: str
    schema: str = "full"
    """Which answer schema the template asks for (annotator.core.schema.SCHEMAS)."""
    phases: tuple[Phase, ...] = ()
    """Its free turns before the JSON answer: declared in the header, else TWO_PHASE when it
    reads `phase`, else none (one-pass only)."""

    @property
    def two_phase(self) -> bool:
        """Whether it can drive generation in turns (free ones, then the JSON)."""
        return bool(self.phases)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    @property
    def shipped(self) -> bool:
        """One of ours (prompts/templates), not a user's file."""
        return self.origin.startswith(SHIPPED_ORIGIN)

    @property
    def tag(self) -> str:
        """name@version, as rows and reports record it (e.g. describe_av@4)."""
        return f"{self.name}@{self.version}"


def shipped() -> list[str]:
    files = resources.files(__package__).joinpath("templates").iterdir()
    return sorted(f.name[:-3] for f in files if f.name.endswith(".j2"))


def load_template(name_or_path: str) -> Template:
    """A shipped template by name (`describe_av`) or a user's template file by path."""
    path = Path(name_or_path)
    if path.suffix == ".j2" or path.exists():
        if not path.is_file():
            raise PromptError(f"template file {path} not found")
        source, origin = path.read_text(), str(path.resolve())
    elif name_or_path in shipped():
        source = resources.files(__package__).joinpath(
            "templates", f"{name_or_path}.j2").read_text()
        origin = f"{SHIPPED_ORIGIN}{name_or_path}.j2"
    else:
        raise PromptError(f"no template {name_or_path!r}; shipped: {', '.join(shipped())}, "
                          "or pass a path to a .j2 file")
    header = _header(source, origin)
    try:  # syntax errors surface at load time, not per clip
        parsed = _environment().parse(source)
    except TemplateError as err:
        raise PromptError(f"template {origin} does not parse: {err}") from err
    reads_phase = "phase" in meta.find_undeclared_variables(parsed)
    phases = parse_phases(header["phases"], origin) if "phases" in header else ()
    if phases and not reads_phase:
        raise PromptError(f"template {origin} declares phases but never reads `phase`, so "
                          "every turn would ask the same; render each phase's question")
    return Template(name=header.get("name", path.stem),
                    version=header.get("version", "unversioned"), source=source, origin=origin,
                    schema=header.get("schema", "full"),
                    phases=phases or (TWO_PHASE if reads_phase else ()))


def _header(source: str, origin: str) -> dict[str, str]:
    """The header comment's key=value pairs ({} without one)."""
    match = _HEADER.search(source)
    if match is None:
        return {}
    pairs = dict(item.split("=", 1) for item in match.group(1).split())
    unknown = sorted(set(pairs) - set(_HEADER_KEYS))
    if unknown:
        raise PromptError(f"template {origin}: its header has {', '.join(unknown)}; it may "
                          f"have {', '.join(_HEADER_KEYS)}")
    return pairs


@functools.lru_cache(maxsize=1)
def _environment() -> BudgetedEnvironment:
    return BudgetedEnvironment(undefined=StrictUndefined, keep_trailing_newline=False,
                               autoescape=False)


@functools.lru_cache(maxsize=16)
def _compiled(source: str):
    """A template's source compiled once per process, not once per render (two per clip)."""
    return _environment().from_string(source)


def require_two_phase(template: Template) -> None:
    if not template.two_phase:
        raise PromptError(f"template {template.tag} ({template.origin}) never reads `phase`, "
                          "so it cannot drive two-phase generation: use --generation one-pass "
                          "or add the 'think' and 'answer' phases to it")


def render(template: Template, context: dict) -> str:
    context = {"fields": field_list(template.schema), **context}
    missing = [k for k in CONTEXT_KEYS if k not in context]
    if missing:
        raise PromptError(f"render context lacks {missing}")
    if context["phase"] != ONE_PASS:
        require_two_phase(template)
    where = f"template {template.tag} ({template.origin})"
    start_clock()
    try:
        parts, size = [], 0
        for chunk in _compiled(template.source).generate(**context):
            parts.append(chunk)
            size += len(chunk)
            if size > MAX_PROMPT_CHARS:
                raise PromptError(f"{where} rendered over {MAX_PROMPT_CHARS:,} characters; "
                                  "refused")
            check_clock()
        return "".join(parts).strip()
    except PromptError as err:  # a limit the sandbox enforced: say which template hit it
        if str(err).startswith(where):
            raise
        raise PromptError(f"{where}: {err}") from None
    except SecurityError as err:
        raise PromptError(f"{where} tried an unsafe operation and was refused: {err}") from err
    except TemplateError as err:
        raise PromptError(f"{where}: {err}") from err
    except (RecursionError, ArithmeticError, TypeError, ValueError, LookupError) as err:
        raise PromptError(f"{where} failed to render: {type(err).__name__}: {err}") from err
    finally:
        stop_clock()
