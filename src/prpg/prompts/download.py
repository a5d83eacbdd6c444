"""`prpg data download prompts`: the paper's GPT-written scene prompts, fetched at run time, never vendored.

The files come from the reference repository at a pinned commit (prpg.prompts.REFERENCE_COMMIT) and are
kept only if their sha256 is the pinned one: a moved branch or a corrupted transfer cannot slip other
sentences into a paper run. All files are fetched and verified before any is written, and each is written
atomically (temp file + rename), so a failure leaves `dest` as it was. A file already in `dest` with the
right checksum is kept without touching the network, so the command also verifies copies made by hand
(offline machines).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from prpg.data.download import DownloadError, _offline_reason
from prpg.prompts import PROMPTS_DIR, REFERENCE_COMMIT, REFERENCE_PROMPT_FILES, REFERENCE_REPO, REFERENCE_URL

MAX_BYTES = 16 << 20  # the three files are ~50-200 kB; a larger answer is not one of them


def reference_urls(base_url: str | None = None) -> dict[str, str]:
    """file name -> URL: the pinned raw GitHub URLs, or `base_url` + name (a mirror, or a test server)."""
    names = [name for name, _ in REFERENCE_PROMPT_FILES.values()]
    if base_url is not None:
        return {name: base_url.rstrip("/") + "/" + name for name in names}
    return {name: REFERENCE_URL.format(repo=REFERENCE_REPO, commit=REFERENCE_COMMIT, file=name) for name in names}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _by_hand(name: str, url: str, dest: Path) -> str:
    return (f"on a machine with internet run `curl -fLo {name} {url}`, copy {name} into {dest}/, then run "
            f"`prpg data download prompts --dest {dest}` again here: it checks the copy's sha256 offline")


def _fetch(name: str, url: str, expected: str, dest: Path, timeout: float) -> bytes:
    """The verified bytes of one file; a DownloadError says what failed, the URL and what to do."""
    steps = _by_hand(name, url, dest)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            data = response.read(MAX_BYTES + 1)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"cannot download {name} from {url}: HTTP {e.code} {e.reason}; {steps}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {name} from {url}: {reason} (no internet?); {steps}") from e
    if len(data) > MAX_BYTES:
        raise DownloadError(f"{url} sent more than {MAX_BYTES} bytes: not the prompt file {name}; {steps}")
    got = sha256(data)
    if got != expected:
        raise DownloadError(f"checksum mismatch for {name} from {url}: sha256 {got}, expected {expected} "
                            f"(commit {REFERENCE_COMMIT[:7]}); nothing was written. The transfer was corrupted or "
                            f"something other than the pinned file was served; retry, or {steps}")
    return data


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _has(path: Path, expected: str) -> bool:
    return path.is_file() and sha256(path.read_bytes()) == expected


def download_prompts(dest: str | Path = PROMPTS_DIR, *, base_url: str | None = None,
                     checksums: Mapping[str, str] | None = None, timeout: float = 20.0) -> dict[str, str]:
    """Put the reference prompt files into `dest`, verified; returns {file name: "kept" | "downloaded"}.

    `base_url` replaces the pinned GitHub location (a mirror); `checksums` ({file name: sha256}) replaces
    the pinned checksums, for tests only. Offline (PRPG_OFFLINE=1 / HF_HUB_OFFLINE=1) files already in
    place are verified and a missing one is a DownloadError saying how to copy it by hand."""
    dest = Path(dest)
    expected = dict(checksums) if checksums is not None else dict(REFERENCE_PROMPT_FILES.values())
    urls = reference_urls(base_url)
    if set(expected) != set(urls):
        raise ValueError(f"checksums must name exactly {', '.join(sorted(urls))}, got {', '.join(sorted(expected))}")
    if dest.exists() and not dest.is_dir():
        raise DownloadError(f"{dest} exists and is not a folder; remove it or pass another --dest")
    status = {name: "kept" for name in urls if _has(dest / name, expected[name])}
    missing = [name for name in urls if name not in status]
    reason = _offline_reason() if missing else None
    if reason is not None:
        name = missing[0]
        raise DownloadError(f"cannot download {name} from {urls[name]}: {reason}; {_by_hand(name, urls[name], dest)}")
    fetched = {name: _fetch(name, urls[name], expected[name], dest, timeout) for name in missing}
    dest.mkdir(parents=True, exist_ok=True)
    for name, data in fetched.items():
        _write_atomic(dest / name, data)  # a wrong-checksum file already there is replaced
        status[name] = "downloaded"
    return {name: status[name] for name in urls}
