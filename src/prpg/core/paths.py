"""Where things are. Every path in the project is relative to the repository root, so a notebook
behaves the same under papermill (`--cwd .`), JupyterLab (cwd = notebooks/) and pytest."""

from __future__ import annotations

import os
from pathlib import Path

_MARKERS = ("dvc.yaml", "params.yaml")


def repo_root(start: Path | None = None) -> Path:
    """The nearest ancestor of `start` (default: cwd) holding dvc.yaml and params.yaml."""
    here = (start or Path.cwd()).resolve()
    for candidate in (here, *here.parents):
        if all((candidate / m).exists() for m in _MARKERS):
            return candidate
    raise FileNotFoundError(
        f"no prpg repository above {here}: expected a folder with {' and '.join(_MARKERS)}. "
        "Run from inside the repository (or a copy of it)."
    )


def chdir_repo_root(start: Path | None = None) -> Path:
    """Change into the repository root; the first cell of every notebook calls this."""
    root = repo_root(start)
    os.chdir(root)
    return root


def ensure_not_under_data(path: Path, root: Path | None = None) -> None:
    """Stages never write under data/: data.dvc tracks it (DVC would refuse overlapping outputs)."""
    root = (root or Path.cwd()).resolve()
    p = (root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    data = root / "data"
    if p == data or data in p.parents:
        raise ValueError(f"refusing to write {path}: data/ is tracked by data.dvc; write under outputs/ instead")
