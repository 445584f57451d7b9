"""`create_engine`: the engine `--engine` names (annotator/engines/__init__.py `ENGINES`),
imported only when chosen."""

from __future__ import annotations

import importlib

from annotator.engines import ENGINES
from annotator.engines.contract import Engine, EngineOptions
from annotator.models import ModelSpec


def create_engine(kind: str, spec: ModelSpec, options: EngineOptions) -> Engine:
    """The engine named `kind`, started on `spec`."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}: use one of {', '.join(ENGINES)}")
    module, _, name = ENGINES[kind].target.partition(":")
    return getattr(importlib.import_module(module), name)(spec, options)
