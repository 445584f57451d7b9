"""`create_engine`: the engine `--engine` names (annotator/engines/__init__.py `ENGINES`),
imported only when chosen."""

from __future__ import annotations

import importlib

from annotator.engines import ENGINES
from annotator.engines.contract import Engine, EngineOptions
from annotator.models import ModelSpec


def create_engine(kind: str, spec: ModelSpec, options: EngineOptions, api_key: str = ""
                  ) -> Engine:
    """The engine named `kind`, started on `spec` (a served one with `api_key`)."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}: use one of {', '.join(ENGINES)}")
    module, _, name = ENGINES[kind].target.partition(":")
    engine = getattr(importlib.import_module(module), name)
    return engine(spec, options, api_key) if ENGINES[kind].served else engine(spec, options)
