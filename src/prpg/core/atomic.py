"""Atomic outputs: a stage either leaves a complete output or none (never half-written files).

Temp names are `.<name>.tmp-<pid>-<random>` (and `.<name>.old-<pid>-<random>` for a replaced folder).
A process killed with `kill -9` cannot clean up, so the next atomic write to the same target removes
the leftovers of dead processes; until then `.dvcignore` keeps them out of every DVC hash.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _prefix(path: Path, kind: str) -> str:
    return f".{path.name}.{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def remove_stale(target: Path) -> list[Path]:
    """Remove the temp files and dirs that a killed process left next to `target` (the names above;
    one without a pid is from before pids were in the name). Those of live processes are kept: a
    concurrent writer of the same target (prpg repro --jobs) may own one. Returns what was removed."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(?:(\d+)-)?")
    removed = []
    if not target.parent.is_dir():
        return removed
    for p in target.parent.iterdir():
        m = pattern.match(p.name)
        if m is None or (m.group(1) is not None and _alive(int(m.group(1)))):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a fresh temp dir next to `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target, "tmp"), dir=target.parent))
    try:
        yield tmp
        if target.exists():
            # Move the old one aside first so the swap is two renames, never a half-deleted tree.
            old = Path(tempfile.mkdtemp(prefix=_prefix(target, "old"), dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(path, "tmp"), dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; a result file is as any other
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: Path, obj: Any) -> Path:
    """Stable JSON (sorted keys) so metrics diffs in git only show real changes."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")
