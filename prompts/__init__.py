"""Prompt templates: Jinja files shipped as package data, rendered in a sandbox.

A template starts with a header comment `{#- vaemo-template name=NAME version=N -#}` (optionally
`schema=coarse`, for the short answer schema; default `full`); its name, version and the sha256
of its source are recorded with every row it produced.

Context a template receives (all keys always present; StrictUndefined turns a typo into an
error instead of an empty string):
  clip        manifest row: clip_id, label, speaker, split, dataset and any extra columns
  media       has_video, has_audio, duration_s, source_fps, width, height, num_frames
  modalities  what the model accepts: a subset of ["video", "audio"] (empty for text-only)
  labels      the label set the answer is constrained to, or None (open vocabulary)
  cues        measured cues (dict) or None
  examples    few-shot examples (list of dicts), possibly empty
  phase       'one-pass' (one JSON answer, reasoning first), or for two-phase generation
              'think' (the first turn: reason in free text, no JSON yet) and 'answer' (the
              follow-up turn after the thought: write the JSON, without a reasoning field).
              A template that never reads `phase` supports one-pass only.
  fields      the answer's fields as a sentence names them, from the template's schema
              (annotator/core/schema.py `field_list`): 'face, body, ..., and summary'
              (`reasoning` is not among them: one-pass templates name it first themselves)
The label from the manifest is in `clip.label`; shipped templates never show it, so the
annotation is not told the answer.
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

_HEADER = re.compile(
    r"\{#-?\s*vaemo-template\s+name=(\S+)\s+version=(\S+)(?:\s+schema=(\S+))?\s*-?#\}")
CONTEXT_KEYS = ("clip", "media", "modalities", "labels", "cues", "examples", "phase", "fields")
PHASES = ("one-pass", "think", "answer")
SHIPPED_ORIGIN = "prompts/templates/"



@dataclass(frozen=True)
class Template:
    name: str
    version: str
    source: str
    origin: str
    schema: str = "full"
    """Which answer schema the template asks for (annotator.core.schema.SCHEMAS)."""
    two_phase: bool = False
    """Whether it renders the 'think' and 'answer' phases (it reads `phase`)."""

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
    match = _HEADER.search(source)
    name, version = (match.group(1), match.group(2)) if match else (path.stem, "unversioned")
    schema = (match.group(3) if match else None) or "full"
    try:  # syntax errors surface at load time, not per clip
        parsed = _environment().parse(source)
    except TemplateError as err:
        raise PromptError(f"template {origin} does not parse: {err}") from err
    two_phase = "phase" in meta.find_undeclared_variables(parsed)
    return Template(name=name, version=version, source=source, origin=origin, schema=schema,
                    two_phase=two_phase)


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
    if context["phase"] != "one-pass":
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
