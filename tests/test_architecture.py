"""The layout the README promises: no import cycles among the project's modules, and every
stage named in the README's Layout section is a file that exists."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("annotator", "prompts", "injection")


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports(path: Path, known: set[str]) -> set[str]:
    """Project modules a file imports, at any depth (lazy imports inside functions too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def test_no_import_cycles():
    found = modules()
    graph = {name: imports(path, set(found)) - {name} for name, path in found.items()}
    # `from annotator.stages import plan` names the submodule, not the package's own code
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
    assert len(graph) > 40  # the walk saw the whole project


def test_readme_layout_names_real_files_for_every_stage():
    readme = (ROOT / "README.md").read_text()
    tree = readme.split("## Layout", 1)[1].split("```")[1]
    named = set(re.findall(r"[\w/]+\.(?:py|j2)|\b\w+/", tree))
    project = {p.relative_to(ROOT).as_posix() + ("/" if p.is_dir() else "")
               for top in (*PACKAGES, "tests", "benchmarks", "docs")
               for p in (ROOT / top).rglob("*") if "__pycache__" not in p.parts} | {
                   f"{top}/" for top in (*PACKAGES, "tests", "benchmarks", "docs")}
    for name in named:
        assert any(path.endswith(name) for path in project), \
            f"README Layout names {name}, which is not in the tree"
    for stage in ("manifest.py", "subset.py", "media.py", "cues.py", "stages/", "plan.py",
                  "prepare.py", "generate.py", "rows.py", "store.py", "audit/", "engines/",
                  "contract.py", "fake.py", "features.py", "loss.py", "train.py",
                  "evaluate.py", "export.py", "core/"):
        assert stage in named, f"README Layout does not name {stage}"


MAX_LINES = 400


def test_modules_are_short():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_the_core_imports_nothing_above_it():
    """annotator/core is what both apps stand on: it never imports the annotate app, the
    audit or injection (nor prompts, which the annotate app renders)."""
    found = modules()
    for name, path in found.items():
        if name.startswith("annotator.core"):
            above = {m for m in imports(path, set(found)) if not m.startswith("annotator.core")}
            assert not above, f"{name} imports {sorted(above)} from above the core"


def test_injection_uses_only_the_core_of_the_annotator():
    found = modules()
    for name, path in found.items():
        if name.startswith("injection"):
            app = {m for m in imports(path, set(found))
                   if m.startswith("annotator") and not m.startswith("annotator.core")}
            assert not app, f"{name} imports {sorted(app)} from the annotate app"


def test_benchmarks_use_public_names_and_no_path_patches():
    for path in (ROOT / "benchmarks").glob("*.py"):
        text = path.read_text()
        assert "sys.path" not in text, f"{path.name} patches sys.path"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.split(".")[0] in PACKAGES:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports private {private} from {node.module}"
