"""`create_engine`: the engine `--engine` names (annotator/engines/__init__.py `ENGINES`),
imported only when chosen."""

from __future__ import annotations

import importlib

from annotator.core.errors import ConfigError
from annotator.engines import ENGINES
from annotator.engines.contract import Engine, EngineOptions
from annotator.models import ModelSpec


def create_engine(kind: str, spec: ModelSpec, options: EngineOptions, api_key: str = ""
                  ) -> Engine:
    """The engine named `kind`, started on `spec` (a served one with `api_key`)."""
    if kind not in ENGINES:
        raise ValueError(f"unknown engine {kind!r}: use one of {', '.join(ENGINES)}")
    engine = _imported(ENGINES[kind].target)
    return engine(spec, options, api_key) if ENGINES[kind].served else engine(spec, options)


def check_engine(kind: str, spec: ModelSpec, options: EngineOptions, api_key: str = ""
                 ) -> None:
    """The engine's own check that it can serve the run (`EngineEntry.check`), before any
    clip is touched: a ConfigError saying what to fix."""
    if ENGINES[kind].check:
        try:
            _imported(ENGINES[kind].check)(spec, options, api_key)
        except ConfigError as err:
            raise ConfigError(f"{err}; nothing stored was changed") from None


def _imported(target: str):
    """`module:name`, imported now."""
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)
