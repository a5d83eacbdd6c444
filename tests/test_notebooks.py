"""The stage notebooks are narratives: imports at the top (no chdir before them), parameters cells that
declare params groups without values (params.yaml is their one source), and the logic in src/prpg."""

from __future__ import annotations

import ast
from pathlib import Path

import jupytext
import pytest

from prpg.core.params import GROUPS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.py"))


def _code_cells(path: Path) -> list:
    return [c for c in jupytext.read(path).cells if c.cell_type == "code"]


def _is_import(node: ast.stmt) -> bool:
    return isinstance(node, ast.Import | ast.ImportFrom)


def _call_source(node: ast.stmt) -> str | None:
    return ast.unparse(node.value) if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) else None


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_cell_declares_groups_without_values(path):
    cells = _code_cells(path)
    assert "parameters" in cells[0].metadata.get("tags", []), f"{path.name}: the parameters cell comes first"
    for node in ast.parse(cells[0].source).body:
        assert isinstance(node, ast.Assign) and len(node.targets) == 1, f"{path.name}: only assignments"
        name, value = node.targets[0].id, node.value
        if name in ("instance", "category"):
            assert isinstance(value, ast.Constant) and isinstance(value.value, str)
        else:
            assert name in GROUPS, f"{path.name}: {name} is not a params group"
            assert isinstance(value, ast.Dict) and not value.keys, f"{path.name}: {name} must be {{}} (params.yaml fills it)"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_imports_come_first_then_the_repo_root_and_the_params(path):
    assert "noqa: E402" not in path.read_text()
    setup, *rest = _code_cells(path)[1:]
    body = ast.parse(setup.source).body
    n_imports = next(i for i, node in enumerate(body) if not _is_import(node))
    assert [_call_source(node) for node in body[n_imports : n_imports + 2]] == \
        ["chdir_repo_root()", "fill_empty_groups(globals())"], f"{path.name}: setup calls right after the imports"
    later = [node for node in body[n_imports:] if _is_import(node)]
    later += [node for cell in rest for node in ast.walk(ast.parse(cell.source)) if _is_import(node)]
    assert not later, f"{path.name}: imports belong in the first cell (line {later[0].lineno} of a later cell)"


@pytest.mark.parametrize("path", [p for p in NOTEBOOKS if p.stem[:2] <= "07"], ids=lambda p: p.stem)
def test_stage_notebooks_define_no_functions(path):
    """Logic lives in the stage's module, where tests reach it; a notebook calls it."""
    defs = [node.name for cell in _code_cells(path) for node in ast.walk(ast.parse(cell.source))
            if isinstance(node, ast.FunctionDef | ast.ClassDef)]
    assert not defs, f"{path.name} defines {defs}: move them to src/prpg"
