"""Fetch the public benchmarks (PODS, Dogs) into the PODS layout, or say exactly how to do it by hand.

PODS: https://data.csail.mit.edu/personal_rep/pods.zip (also the Hugging Face dataset chaenayo/PODS).
Dogs: https://data.csail.mit.edu/personal_rep/dogs.zip. DF2 has no download (see DF2_MESSAGE).
Nothing partial is ever left behind: the zip and the extraction live in hidden temp paths next to
`dest`, and `dest` appears in one rename once everything is in place.
"""

from __future__ import annotations

import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile
from pathlib import Path

from tqdm import tqdm

from prpg.data.check import check_dataset, format_report

DATASET_URLS = {
    "pods": "https://data.csail.mit.edu/personal_rep/pods.zip",
    "dogs": "https://data.csail.mit.edu/personal_rep/dogs.zip",
}
PODS_HF_DATASET = "chaenayo/PODS"
OFFLINE_ENV_VARS = ("PRPG_OFFLINE", "HF_HUB_OFFLINE")
DF2_MESSAGE = (
    "DF2 cannot be downloaded: the authors' DF2 benchmark is a reformulated subset of DeepFashion2 whose "
    "download link was removed upstream (the personalized-rep repo lists only a 'mapping notebook (TBD)'). "
    "If you have a copy, put it in the PODS layout (train/, test/, *_masks/, df2_info.json) and run "
    "`prpg data check <root>`; otherwise use pods, dogs or the built-in toybox."
)


class DownloadError(RuntimeError):
    """A dataset could not be fetched; the message names the URL, the reason and the manual route."""


def _offline_reason() -> str | None:
    for var in OFFLINE_ENV_VARS:
        if os.environ.get(var, "").strip().lower() in {"1", "true", "yes", "on"}:
            return f"{var}={os.environ[var]} is set, so the network is not used"
    return None


def _manual_steps(name: str, url: str, dest: Path) -> str:
    alt = f" (or the Hugging Face dataset {PODS_HF_DATASET})" if name == "pods" else ""
    return (
        f"download {url}{alt} by hand on a machine with internet, unzip it to {dest} (so that {dest}/train "
        f"exists), then run `prpg data check {dest}` and `dvc add {dest.parent}`"
    )


def _fetch(name: str, url: str, into: Path, timeout: float, steps: str) -> Path:
    """Stream `url` to a hidden temp file in `into`; removed again on any failure."""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{name}-", suffix=".zip.part", dir=into)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"{name}.zip", mininterval=1.0) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    done += len(chunk)
                    bar.update(len(chunk))
        if total is not None and done != total:
            raise DownloadError(
                f"cannot download {name} from {url}: got {done} of {total} bytes; retry, or {steps}"
            )
        return tmp
    except urllib.error.HTTPError as e:
        tmp.unlink(missing_ok=True)
        raise DownloadError(f"cannot download {name} from {url}: HTTP {e.code} {e.reason}; {steps}") from e
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        tmp.unlink(missing_ok=True)
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"cannot download {name} from {url}: {reason} (no internet?); {steps}") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _dataset_root(extracted: Path) -> Path | None:
    """The shallowest folder holding train/ (zips may or may not wrap everything in one folder)."""
    found = [p.parent for p in extracted.rglob("train") if p.is_dir() and "__MACOSX" not in p.parts]
    return min(found, key=lambda p: len(p.parts)) if found else None


def download_dataset(name: str, dest: str | Path, *, timeout: float = 10.0) -> Path:
    """Download `name` ("pods" or "dogs") and unpack it so that `dest/train` exists; returns `dest`.

    PODS comes from the zip at DATASET_URLS["pods"] (the same data is the Hugging Face dataset
    chaenayo/PODS). Offline (no network, or PRPG_OFFLINE=1 / HF_HUB_OFFLINE=1) it fails at once with
    a DownloadError that says how to fetch the data by hand. The result is run through
    `check_dataset`; problems are reported as a warning (the data is the authors', not ours to fix).
    """
    key = name.strip().lower()
    if key == "df2":
        raise DownloadError(DF2_MESSAGE)
    if key not in DATASET_URLS:
        raise ValueError(
            f"unknown dataset {name!r}; downloadable: {', '.join(DATASET_URLS)} "
            "(df2 has no download; toybox is built by the pipeline, not downloaded)"
        )
    url, dest = DATASET_URLS[key], Path(dest)
    steps = _manual_steps(key, url, dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise DownloadError(
            f"{dest} already exists and is not empty; run `prpg data check {dest}`, or delete it "
            "to download again"
        )
    reason = _offline_reason()
    if reason is not None:
        raise DownloadError(f"cannot download {key} from {url}: {reason}; {steps}")

    dest.parent.mkdir(parents=True, exist_ok=True)
    zip_path = _fetch(key, url, dest.parent, timeout, steps)
    extract_dir = Path(tempfile.mkdtemp(prefix=f".{key}-extract-", dir=dest.parent))
    try:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(extract_dir)  # extractall drops absolute paths and '..' parts
        except (zipfile.BadZipFile, OSError) as e:
            raise DownloadError(f"{url} did not give a readable zip ({e}); retry, or {steps}") from e
        root = _dataset_root(extract_dir)
        if root is None:
            raise DownloadError(
                f"{url} unpacked without a train/ folder; the archive changed upstream: {steps}"
            )
        if dest.exists():
            dest.rmdir()  # empty (checked above); rename needs the name free on every OS
        os.replace(root, dest)  # same filesystem (both in dest.parent): atomic
    finally:
        zip_path.unlink(missing_ok=True)
        shutil.rmtree(extract_dir, ignore_errors=True)

    problems = check_dataset(dest)
    if problems:
        warnings.warn(f"{dest} was downloaded but has problems:\n{format_report(problems)}", stacklevel=2)
    return dest
