"""The repo's contracts with its users: install files agree, notebooks and dvc.yaml follow the
papermill conventions, and the README's two commands are what CI and users run."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import jupytext
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from prpg.core.notebook import declared_parameters

ROOT = Path(__file__).resolve().parents[1]


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    return pins


def test_top_level_shape():
    for name in ["notebooks", "src", "data.dvc", "dvc.yaml", "params.yaml", "reports", "tests", "environment.yml",
                 "pyproject.toml", "README.md", ".ci/run", ".gitignore", ".dvc/config"]:
        assert (ROOT / name).exists(), f"missing {name}"


def test_environment_yml_agrees_with_pyproject():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    project = _pyproject()["project"]
    assert env["name"] == "prpg"
    conda = [d for d in env["dependencies"] if isinstance(d, str)]
    python = next(d for d in conda if d.startswith("python="))
    assert Version(python.split("=", 1)[1]) in SpecifierSet(project["requires-python"])
    assert "pip" in conda
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    # It installs this project (with an extra that pyproject defines) under the same lock.
    editable = [p for p in pip if p.startswith("-e ")]
    assert len(editable) == 1
    m = re.fullmatch(r"-e \.(\[(?P<extras>[\w,]+)\])?", editable[0])
    assert m, editable
    for extra in (m["extras"] or "").split(","):
        assert not extra or extra in project["optional-dependencies"]
    assert "-c constraints.txt" in pip
    # Anything else it lists must be a pyproject dependency, with a compatible specifier.
    declared = {Requirement(r).name.lower() for r in project["dependencies"]}
    for extra in pip:
        if not extra.startswith("-"):
            assert Requirement(extra).name.lower() in declared, f"{extra} in environment.yml but not in pyproject"


def test_lock_pins_every_dependency_within_its_specifier():
    pins = _constraints()
    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"] + project["optional-dependencies"]["test"]]
    for req in reqs:
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"{req.name} is not pinned in constraints.txt (run `make lock`)"
        assert Version(pins[name]) in req.specifier, f"constraints.txt pins {name}=={pins[name]}, outside {req.specifier}"
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"


def test_ci_runs_the_readme_test_command():
    ci = [ln.strip() for ln in (ROOT / ".ci/run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith(("#", "set ", "cd "))]
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^\s*(make \w+)\s*(?:#.*)?$", quickstart, flags=re.M)
    assert commands == ["make demo", "make test"], commands
    assert ci[-1] == "make test"



def test_readme_is_user_documentation():
    """Short enough to read first, and about the project: no work diary (dates, sessions, commits)."""
    readme = (ROOT / "README.md").read_text()
    assert len(readme) <= 12_000, f"README.md is {len(readme)} characters; move details to docs/"
    diary = re.findall(r"\b20\d\d-\d\d-\d\d\b|\bsessions?\b|\bcommit [0-9a-f]{7,}\b|\bissue #?\d+", readme, re.I)
    assert not diary, f"README.md reads like a work log: {diary}"


def _stages() -> dict:
    """dvc.yaml's stages with its own `vars` (the runner command) substituted, as DVC does."""
    text = (ROOT / "dvc.yaml").read_text()
    values = {k: v for entry in yaml.safe_load(text).get("vars", []) if isinstance(entry, dict) for k, v in entry.items()}
    return yaml.safe_load(re.sub(r"\$\{(\w+)\}", lambda m: str(values.get(m.group(1), m.group(0))), text))["stages"]


def _parameters_cell_names(nb_path: Path) -> set[str]:
    nb = jupytext.read(nb_path)
    cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1, f"{nb_path}: needs exactly one cell tagged parameters, found {len(cells)}"
    return declared_parameters(nb_path, nb)  # what the runner injects


RUNNER = re.compile(r"python -m prpg\.core\.notebook (\S+) (\S+)((?: -[fr] [^;&]+?)*)\s*(?:[;&]|$)")


def _runs(cmds: list[str]) -> list[tuple[str, str, str]]:
    """(source, executed, flags) of every notebook run, also inside a compound command."""
    # Interpolated values are quoted in the commands ('${key}'): compare the paths without their quotes.
    return [tuple(g.strip("'") if g else g for g in m.groups()) for c in cmds for m in RUNNER.finditer(c)]


@pytest.mark.parametrize("name", sorted(_stages()))
def test_stage_follows_papermill_conventions(name):
    stage = _stages()[name]
    stage = stage.get("do", stage)  # foreach stages: check the template
    cmds = stage["cmd"] if isinstance(stage["cmd"], list) else [stage["cmd"]]
    assert not any(c.startswith(("papermill ", "jupytext ")) for c in cmds), \
        f"stage {name}: run notebooks with python -m prpg.core.notebook (one process)"
    runs = _runs(cmds)
    assert runs, f"stage {name}: no notebook run"
    deps = [str(d) for d in stage.get("deps", [])]
    outs = [next(iter(o)) if isinstance(o, dict) else o for o in stage.get("outs", [])]
    for out in outs + [next(iter(m)) for m in stage.get("metrics", [])]:
        assert not out.startswith("data/"), f"stage {name} writes under data/ (tracked by data.dvc)"
    groups = {(g if isinstance(g, str) else next(iter(g))).split(".")[0] for g in stage.get("params", [])}
    for source, executed, flags in runs:
        assert "-f params.yaml" in flags, f"stage {name}: notebook run without -f params.yaml"
        assert " -p " not in f" {flags} ", f"stage {name}: use -r for the foreach item (-p retypes values)"
        for value in re.findall(r"-r (\S+) ", flags):
            assert value in {"instance", "category"}, f"stage {name}: -r only for the foreach item"
        assert executed in outs and executed not in deps, f"stage {name}: executed notebook must be an out only"
        assert source in deps and source.startswith("notebooks/") and source.endswith(".py")
        # The parameters cell declares exactly the groups the stage says it reads.
        names = _parameters_cell_names(ROOT / source) - {"instance", "category"}
        assert names == groups, f"{source} parameters {sorted(names)} != stage {name} params {sorted(groups)}"


def test_every_notebook_is_a_stage():
    cmds = [c for s in _stages().values() for c in s.get("do", s)["cmd"]]
    used = {source for source, _, _ in _runs(cmds)}
    for nb in sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py")):
        assert f"notebooks/{nb.name}" in used, f"{nb.name} is not run by any dvc.yaml stage"
