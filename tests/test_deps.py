"""Every stage depends on the code it runs: the modules its notebook (and its command) import, followed
transitively through src/prpg, each covered by a `deps` entry of the stage in dvc.yaml (the file itself or
a folder above it). A code change then re-runs exactly the stages it can change."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from tests.test_repo import _stages as dvc_stages

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"


def module_file(name: str) -> Path | None:
    """The file of a prpg module (a .py file or a package's __init__.py), None if it is no module."""
    base = SRC / Path(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, package: str = "") -> set[str]:
    """The prpg modules a source imports anywhere (module level or inside functions): `import a.b`,
    `from a import b` (b a submodule or a name), relative imports resolved against `package`. Importing
    a.b.c also runs a/__init__ and a/b/__init__, so those count too."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            if parts[0] != "prpg":
                continue
            found.update(".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_file(".".join(parts[:i])))
    return found


def closure(modules: set[str]) -> set[Path]:
    """The files of `modules` and of everything they import, transitively."""
    todo, seen = list(modules), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = module_file(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        todo += imported_modules(path.read_text(), package) - seen
    return {module_file(n) for n in seen}


def command_modules(cmd: str) -> tuple[set[str], list[Path]]:
    """The prpg modules a stage command runs and the notebooks it executes: `python -m <module>` runs the
    module (the notebook runner), `prpg ...` the CLI, and each notebooks/*.py argument is executed."""
    modules, notebooks = set(), []
    for part in re.split(r"[;&|\n]+", cmd):
        words = shlex.split(part)
        for i, word in enumerate(words):
            if word == "-m" and i + 1 < len(words) and words[i + 1].startswith("prpg"):
                modules.add(words[i + 1])
            elif word == "prpg" and i == 0:
                modules.add("prpg.cli")
            elif word.startswith("notebooks/") and word.endswith(".py"):
                notebooks.append(ROOT / word)
    return modules, notebooks


def stage_code(definition: dict) -> set[Path]:
    """Every src/prpg file a stage's commands run, transitively."""
    cmds = definition["cmd"] if isinstance(definition["cmd"], list) else [definition["cmd"]]
    modules: set[str] = set()
    for cmd in cmds:
        run, notebooks = command_modules(cmd)
        modules |= run
        for notebook in notebooks:
            modules |= imported_modules(notebook.read_text())
    return closure(modules)


def stages() -> dict[str, dict]:
    """dvc.yaml's stages (a foreach stage: its template), the runner var substituted."""
    return {name: (d["do"] if "do" in d else d) for name, d in dvc_stages().items()}


@pytest.mark.parametrize("stage", list(stages()))
def test_stage_depends_on_all_the_code_it_runs(stage):
    definition = stages()[stage]
    deps = [ROOT / d for d in definition.get("deps", []) if isinstance(d, str) and d.startswith("src/")]
    code = stage_code(definition)
    assert code, f"{stage}: runs no prpg code? (cmd {definition['cmd']})"
    missing = sorted(str(f.relative_to(ROOT)) for f in code
                     if not any(f == d or d in f.parents for d in deps))
    assert not missing, f"dvc.yaml stage {stage} runs these files but does not depend on them: {missing}"


def test_walker_follows_submodules_relative_imports_and_function_level_imports():
    src = ("from prpg.core import atomic\nfrom .protocol import x\n"
           "def f():\n    import prpg.filter.similarity\n")
    found = imported_modules(src, package="prpg.evaluate")
    assert {"prpg", "prpg.core", "prpg.core.atomic", "prpg.evaluate", "prpg.evaluate.protocol",
            "prpg.filter", "prpg.filter.similarity"} <= found
    assert "prpg.core.atomic.write_json_atomic" not in found  # a name, not a module
    # transitively: the runner imports the params module, which imports the configs
    assert SRC / "prpg/core/configs.py" in closure({"prpg.core.notebook"}) | closure({"prpg.core.params"})


def test_walker_sees_a_missing_dependency():
    """The check fails for a stage that runs code it does not list (here: filter without its similarity
    models)."""
    code = stage_code(stages()["filter"])
    assert SRC / "prpg/filter/similarity.py" in code
    assert SRC / "prpg/core/models.py" in code
