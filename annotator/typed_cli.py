"""Typer commands generated from pydantic configs: one typed function per command, and each
field's docstring is its `--help` text (so the docs and the CLI cannot disagree)."""

from __future__ import annotations

import inspect
from typing import Literal, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def _option_type(annotation):
    """typer has no Literal; pydantic validates the value anyway."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return str
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return _option_type(inner) | None if inner is not str else str | None
    return annotation


def command_from(config_cls: type[BaseModel], required: tuple[str, ...] = (),
                 arguments: tuple[str, ...] = ()):
    """Decorator: give a `fn(config)` a typer signature built from the config's fields
    (`arguments` become positional arguments, the rest options)."""

    def wrap(fn):
        params = []
        for name, info in config_cls.model_fields.items():
            default = ... if name in required or name in arguments else info.default
            help_text = " ".join((info.description or "").split())
            if get_origin(info.annotation) is Literal:
                # escaped: rich would take "[a|b]" for a style tag and drop it
                help_text += " " + escape(f"[{'|'.join(get_args(info.annotation))}]")
            extra = {"metavar": name.upper()} if name in arguments else {}
            kind = typer.Argument if name in arguments else typer.Option
            params.append(inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY,
                default=kind(default, help=help_text, show_default=default is not ..., **extra),
                annotation=_option_type(info.annotation)))

        def command(**kwargs):
            try:
                config = config_cls(**kwargs)
            except ValidationError as err:
                for e in err.errors():
                    where = ".".join(map(str, e["loc"])) or "config"
                    console.print(f"[red]error[/red] --{where.replace('_', '-')}: {e['msg']}")
                raise typer.Exit(2) from None
            return fn(config)

        command.__signature__ = inspect.Signature(params)
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        return command

    return wrap


def fail(err: Exception) -> None:
    """Print a user-facing error (it names the thing and the fix) and exit 1."""
    console.print(f"[red]error[/red] {err}")
    raise typer.Exit(1)
