"""Every command the README shows is one this project has, and the walk-through runs as
written (on the fake engine and a tiny encoder, in a folder laid out like the demo's)."""

import functools
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import click
import pytest
import typer
from typer.testing import CliRunner

from tests.builders.cluster_answer import joined_or_said_why

from annotator.cli import app as annotate
from injection.cli import app as inject

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
APPS = {"vaemo-annotate": annotate, "vaemo-inject": inject}
runner = CliRunner()


def readme_commands() -> list[str]:
    """Each command line of the README's code blocks (`a && b` is two)."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", README.read_text(), re.S)
    lines = [line.strip() for block in blocks[:-1] for line in block.splitlines()]  # not Layout
    return [part.strip() for line in lines if line for part in line.split("&&")]


@functools.cache
def vllm_arguments() -> str:
    """The text of vLLM's engine and server argument modules (read, not imported)."""
    import importlib.util

    root = Path(importlib.util.find_spec("vllm").origin).parent
    return "".join(p.read_text() for p in (root / "engine" / "arg_utils.py",
                                           *root.glob("entrypoints/**/cli_args.py")))


def benchmark_modules() -> list[str]:
    """Every `python -m benchmarks.X` the README names (its results table)."""
    return sorted(set(re.findall(r"python -m (benchmarks\.[a-z_]+)\b", README.read_text())))


def parse(command: str) -> None:
    """Parse a vaemo command with its own CLI (options, arguments, subcommands) without
    running it: a removed option or a misspelt one fails here."""
    program, *args = shlex.split(command)
    group = typer.main.get_command(APPS[program])
    with group.make_context(program, list(args), resilient_parsing=False) as ctx:
        name, command_obj, rest = group.resolve_command(ctx, _remaining(ctx))
        if isinstance(command_obj, click.Group):  # `prompt preview`
            with command_obj.make_context(name, rest) as sub:
                name, command_obj, rest = command_obj.resolve_command(sub, _remaining(sub))
        command_obj.make_context(name, rest)


def _remaining(ctx: click.Context) -> list[str]:
    """A group's subcommand and its arguments (click 8.2 renamed where they are kept)."""
    return [*getattr(ctx, "_protected_args", getattr(ctx, "protected_args", [])), *ctx.args]


def test_readme_is_short_and_every_command_is_known():
    assert len(README.read_text().splitlines()) < 250
    commands = readme_commands()
    assert len(commands) >= 15
    makefile = (ROOT / "Makefile").read_text()
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for command in commands:
        words = shlex.split(command)
        if words[0] in APPS:
            parse(command)
        elif words[0] == "make":
            assert re.search(rf"^{words[1]}:", makefile, re.M), command
        elif words[:3] == ["python3", "-m", "venv"]:
            pass
        elif words[:2] == ["vllm", "serve"]:  # every flag is one this vLLM has
            for flag in (w for w in words if w.startswith("--")):
                assert flag[2:].replace("-", "_") in vllm_arguments(), command
        elif words[0].endswith("/pip"):
            extra = re.fullmatch(r"\.\[(\w+)\]", words[-1]).group(1)
            assert extra in extras, command
        elif words[0].endswith("/python") and words[1] == "-m":
            assert (ROOT / (words[2].replace(".", "/") + ".py")).is_file(), command
        else:
            raise AssertionError(f"the README shows a command no test knows: {command}")
    for module in benchmark_modules():
        assert (ROOT / (module.replace(".", "/") + ".py")).is_file(), module


@pytest.mark.slow
def test_benchmarks_the_readme_names_start(tmp_path):
    for module in benchmark_modules():
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "usage" in done.stdout, (module, done.stderr)


@pytest.mark.slow
def test_the_readme_walkthrough_runs(tmp_path, monkeypatch, clips):
    """Annotate, audit and inject as the README shows them, from a folder holding a corpus
    at data/demo: the run commands on the fake engine, ENCODER a tiny VideoMAE + wav2vec2,
    training shortened; placeholders (clips.csv) are the demo manifest."""
    from tests.builders.tiny_encoders import build_tiny_va_encoder

    demo = tmp_path / "data" / "demo"
    (demo / "clips").mkdir(parents=True)
    rows = []
    for i, name in enumerate(["real_astronaut", "real_grace_hopper", "tone_220", "tone_440"]
                             * 2):
        clip_id = "librivox_sense_and_sensibility_01_austen_64kb-0870" if i == 0 else f"c{i}"
        shutil.copy(clips[name], demo / "clips" / f"{clip_id}.mp4")
        rows.append(f"{clip_id},clips/{clip_id}.mp4,{['happy', 'sad'][i % 2]},s{i % 3}")
    (demo / "manifest.csv").write_text("clip_id,path,label,speaker\n" + "\n".join(rows) + "\n")
    encoder = build_tiny_va_encoder(tmp_path / "enc")
    monkeypatch.chdir(tmp_path)
    ran = []
    for command in readme_commands():
        program, *args = shlex.split(command.replace("clips.csv", "data/demo/manifest.csv"))
        if program not in APPS:
            continue
        if args[0] == "run" and "--endpoint" in args:
            args += ["--dry-run"]  # a served model: planned without the server
        elif args[0] == "run":
            args += ["--engine", "fake"]
            if "--ray-address" in args or "--labels" in args and "mafw" in args:
                args += ["--dry-run"]  # the GPU and cluster examples: planned, not run
        if args[0] == "import-results":  # the batch job's answers, as a provider returns them
            _answer_batch(Path(args[1]) / "batch" / "requests.jsonl", Path(args[2]))
        if args[0] == "features":
            args = [a.replace("ENCODER", str(encoder)) for a in args] + ["--workers", "0"]
        if args[0] == "train":
            args = [a.replace("ENCODER", str(encoder)) for a in args] + [
                "--steps", "4", "--batch-size", "4", "--eval-fraction", "0.25",
                "--no-exclude-flagged"]
        result = runner.invoke(APPS[program], args)
        if "--ray-address" in args:  # joins whatever cluster `auto` finds on this machine
            # (none: one line naming `ray start --head`; someone else's: it plans there, or
            # says in one line what that cluster lacks)
            assert joined_or_said_why(result), result.output
        elif args[0] == "verify":
            assert result.exit_code in (0, 1) and "rows" in result.output, result.output
        else:
            assert result.exit_code == 0, (command, result.output)
        ran.append(args[0])
    assert ran.count("run") == 7 and ran.count("train") == 2 and {
        "prompt", "verify", "retry-failed", "audit", "eval", "export", "export-requests",
        "import-results", "features"} <= set(ran)
    assert (tmp_path / "inj" / "encoder" / "injection.json").is_file()
    assert (tmp_path / "runs" / "demo" / "clean.parquet").is_file()


def _answer_batch(requests: Path, results: Path) -> None:
    """A batch output file answering every exported request (schema-valid answers)."""
    import json

    from tests.builders.fault_server import FaultServer

    server = FaultServer((None,))
    lines = [json.loads(x) for x in requests.open()]
    results.write_text("".join(json.dumps({
        "custom_id": x["custom_id"], "error": None,
        "response": {"status_code": 200, "body": server.answer(x["body"])}}) + "\n"
        for x in lines))
    server.httpd.server_close()
