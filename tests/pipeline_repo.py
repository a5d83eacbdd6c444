"""A throwaway copy of this repository (tracked + untracked-not-ignored files) as its own git repo,
with a micro params.yaml, so pipeline tests run `dvc` exactly as a user would, off the real tree."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

MICRO_TOYBOX = {
    "size": 64,
    "instances_per_category": 3,
    "val_per_category": 1,
    "pool_per_category": 2,
    "test_per_split": 2,
    "dense_per_split": 3,
    "pool_test_per_split": 1,
}


def env() -> dict[str, str]:
    """The project's environment first on PATH (stages call jupytext/papermill by name)."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.update(GIT_AUTHOR_NAME="prpg-test", GIT_AUTHOR_EMAIL="test@prpg", GIT_COMMITTER_NAME="prpg-test",
             GIT_COMMITTER_EMAIL="test@prpg", DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    return e


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_repo(dst: Path, toybox: dict | None = None) -> Path:
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file() and not rel.startswith(("outputs/", "reports/metrics/", "reports/figures/")):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / rel)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    params["data"]["toybox"].update(toybox or MICRO_TOYBOX)
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], dst)
    run(["git", "add", "-A"], dst)
    run(["git", "commit", "-qm", "micro copy"], dst)
    return dst
