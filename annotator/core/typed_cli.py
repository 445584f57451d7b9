"""Typer commands generated from pydantic configs: one typed function per command, and each
field's docstring is its `--help` text (so the docs and the CLI cannot disagree).

A config that holds settings models (`RunConfig.media`, ...) is flattened: each leaf field is
one option (`--num-frames`), so leaf names are unique across a config. Every command also
takes `--config FILE` (TOML, YAML or JSON; flat keys or nested tables; a run's `run.json`
works as it is); options given on the command line override the file.

Messages are printed without hard wrapping, whatever the terminal width, so an error stays on
one line in a log or a pipe.
"""

from __future__ import annotations

import inspect
import json
import tomllib
from pathlib import Path
from typing import Literal, get_args, get_origin

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.markup import escape

from annotator.core.errors import ConfigError, VaemoError
from annotator.core.interrupt import Interrupted

console = Console(stderr=True, soft_wrap=True)


def add_version_option(app: typer.Typer) -> None:
    """`--version` on `app`: prints the installed package's version and exits."""

    def show(value: bool) -> None:
        if value:
            from importlib.metadata import PackageNotFoundError, version

            try:
                found = version("vaemo")
            except PackageNotFoundError:
                found = "unknown (not installed)"
            typer.echo(f"vaemo {found}")
            raise typer.Exit()

    @app.callback()
    def main(_version: bool = typer.Option(False, "--version", is_eager=True, callback=show,
                                           help="Print the version and exit.")) -> None:
        """Commands of the vaemo pipeline."""


def _option_type(annotation):
    """typer has no Literal; pydantic validates the value anyway."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return str
    if args and type(None) in args:
        inner = [a for a in args if a is not type(None)][0]
        return _option_type(inner) | None if inner is not str else str | None
    return annotation


def _is_model(annotation) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def leaf_fields(config_cls: type[BaseModel], prefix: tuple[str, ...] = ()):
    """(path, FieldInfo) of every option a config has, settings models flattened."""
    for name, info in config_cls.model_fields.items():
        if _is_model(info.annotation):
            yield from leaf_fields(info.annotation, prefix + (name,))
        else:
            yield prefix + (name,), info


def read_config_file(path: Path) -> dict:
    """A config file's settings: TOML, YAML or JSON; a run.json gives its `config`."""
    if not path.is_file():
        raise ConfigError(f"--config {path}: file not found")
    if path.suffix not in (".toml", ".yaml", ".yml", ".json"):
        raise ConfigError(f"--config {path}: use a .toml, .yaml/.yml or .json file")
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            data = tomllib.loads(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as err:  # TOML, JSON and YAML errors share no base class
        raise ConfigError(f"--config {path} does not parse: {err}") from err
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path}: expected a table of settings")
    if isinstance(data.get("config"), dict) and "run_id" in data:  # a recorded run.json
        data = data["config"]
    return {k.replace("-", "_"): v for k, v in data.items()}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for part in path[:-1]:
        node = tree.get(part)
        if isinstance(node, BaseModel):
            node = node.model_dump()
        tree[part] = node = dict(node or {})
        tree = node
    tree[path[-1]] = value


def command_from(config_cls: type[BaseModel], required: tuple[str, ...] = (),
                 arguments: tuple[str, ...] = ()):
    """Decorator: give a `fn(config)` a typer signature built from the config's fields
    (`arguments` become positional arguments, the rest options) plus `--config FILE`.

    `required` fields must come from the command line or the config file."""

    def wrap(fn):
        leaves = list(leaf_fields(config_cls))
        names = [path[-1] for path, _ in leaves]
        dupes = {n for n in names if names.count(n) > 1}
        assert not dupes, f"{config_cls.__name__}: option names must be unique, got {dupes}"
        params = [inspect.Parameter("ctx", inspect.Parameter.KEYWORD_ONLY,
                                    annotation=typer.Context)]
        for path, info in leaves:
            name = path[-1]
            help_text = " ".join((info.description or "").split())
            if get_origin(info.annotation) is Literal:
                # escaped: rich would take "[a|b]" for a style tag and drop it
                help_text += " " + escape(f"[{'|'.join(get_args(info.annotation))}]")
            if name in arguments:
                default = typer.Argument(..., help=help_text, metavar=name.upper())
            elif name in required:
                default = typer.Option(None, help=help_text + " " + escape(
                    "[required, on the command line or in --config]"), show_default=False)
            else:
                default = typer.Option(info.default, help=help_text, show_default=True)
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                            default=default,
                                            annotation=_option_type(info.annotation)))
        assert "config" not in names, "--config is every command's own option"
        params.append(inspect.Parameter(
            "config", inspect.Parameter.KEYWORD_ONLY, annotation=Path | None,
            default=typer.Option(None, "--config", help="Settings from a TOML, YAML or JSON "
                                 "file (a run's run.json works as it is); options given on "
                                 "the command line override it.", show_default=False)))

        def command(ctx: typer.Context, config: Path | None = None, **kwargs):
            try:
                values = read_config_file(config) if config else {}
            except ConfigError as err:
                fail(err)
            for path, _ in leaves:
                # by name: typer vendors its own click, with its own ParameterSource enum
                source = ctx.get_parameter_source(path[-1])
                given = getattr(source, "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")
                if given or (not config and path[-1] not in required):
                    _set(values, path, kwargs[path[-1]])
            try:
                settings = config_cls(**values)
            except ValidationError as err:
                for e in err.errors():
                    where = str(e["loc"][-1]) if e["loc"] else ""
                    flag = f"--{where.replace('_', '-')}: " if where in names else ""
                    console.print(f"[red]error[/red] {flag}{escape(e['msg'])}")
                raise typer.Exit(2) from None
            try:
                return fn(settings)
            except VaemoError as err:
                fail(err)
            except Interrupted as stop:
                stopped(stop)

        command.__signature__ = inspect.Signature(params)
        command.__name__, command.__doc__ = fn.__name__, fn.__doc__
        return command

    return wrap


def stopped(stop: Interrupted) -> None:
    """Say in one line what an interrupted command kept; exit 128 + the signal."""
    console.print(f"[yellow]{escape(stop.summary)}[/yellow]")
    raise typer.Exit(stop.exit_code)


def fail(err: Exception) -> None:
    """Print a user-facing error (it names the thing and the fix) on one line; exit 1."""
    console.print(f"[red]error[/red] {escape(str(err))}")
    raise typer.Exit(1)
