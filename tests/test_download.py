"""download_dataset without a network: offline failures are immediate, clear and leave nothing behind."""

from __future__ import annotations

import io
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

import pytest

from prpg.data import DATASET_URLS, DownloadError, download_dataset
from tests.conftest import make_pods_tree


@pytest.fixture(autouse=True)
def _online_by_default(monkeypatch):
    for var in ("PRPG_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def _no_network(*args, **kwargs):
    raise AssertionError("the network must not be touched")


@pytest.mark.parametrize("var", ["PRPG_OFFLINE", "HF_HUB_OFFLINE"])
def test_offline_env_fails_at_once_without_network(tmp_path: Path, monkeypatch, var: str):
    monkeypatch.setenv(var, "1")
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    t0 = time.perf_counter()
    with pytest.raises(DownloadError) as err:
        download_dataset("pods", tmp_path / "data" / "pods")
    assert time.perf_counter() - t0 < 1.0
    msg = str(err.value)
    assert DATASET_URLS["pods"] in msg and f"{var}=1" in msg
    assert "by hand" in msg and "chaenayo/PODS" in msg
    assert f"prpg data check {tmp_path / 'data' / 'pods'}" in msg and f"dvc add {tmp_path / 'data'}" in msg
    assert not (tmp_path / "data").exists()


def test_unreachable_url_is_one_clear_error_and_leaves_nothing(tmp_path: Path, monkeypatch):
    calls = []

    def unreachable(url, timeout=None):
        calls.append((url, timeout))
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", unreachable)
    dest = tmp_path / "data" / "dogs"
    with pytest.raises(DownloadError) as err:
        download_dataset("dogs", dest, timeout=3.0)
    assert calls == [(DATASET_URLS["dogs"], 3.0)]
    msg = str(err.value)
    assert DATASET_URLS["dogs"] in msg and "name resolution" in msg and "by hand" in msg
    assert list((tmp_path / "data").iterdir()) == []  # no temp zip, no half-made dest


class _FakeResponse:
    """What urlopen returns, over in-memory bytes; optionally dies after `fail_after` bytes."""

    def __init__(self, data: bytes, fail_after: int | None = None):
        self.headers = {"Content-Length": str(len(data))}
        self._body, self._fail_after, self._sent = io.BytesIO(data), fail_after, 0

    def read(self, n: int) -> bytes:
        if self._fail_after is not None and self._sent >= self._fail_after:
            raise TimeoutError("timed out")
        chunk = self._body.read(min(n, 4096))
        self._sent += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _zipped_tree(tmp_path: Path) -> bytes:
    src = make_pods_tree(tmp_path / "src" / "pods")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for p in sorted(src.rglob("*")):
            z.write(p, p.relative_to(src.parent).as_posix())  # the zip wraps everything in pods/
        z.writestr("__MACOSX/pods/train/._junk", b"")
    return buf.getvalue()


def test_download_unpacks_into_dest(tmp_path: Path, monkeypatch):
    data = _zipped_tree(tmp_path)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(data))
    dest = tmp_path / "data" / "pods"
    assert download_dataset("PODS", dest) == dest
    assert (dest / "train" / "mug_00" / "0000.jpg").is_file() and (dest / "pods_info.json").is_file()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["pods"]  # temp zip and extract dir are gone
    with pytest.raises(DownloadError, match="already exists and is not empty"):
        download_dataset("pods", dest)


def test_broken_stream_leaves_nothing(tmp_path: Path, monkeypatch):
    data = _zipped_tree(tmp_path)
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(data, fail_after=8192)
    )
    dest = tmp_path / "data" / "pods"
    with pytest.raises(DownloadError, match="timed out"):
        download_dataset("pods", dest)
    assert list(dest.parent.iterdir()) == []


def test_not_a_zip_leaves_nothing(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(
        urllib.request, "urlopen", lambda url, timeout=None: _FakeResponse(b"<html>moved</html>")
    )
    dest = tmp_path / "data" / "pods"
    with pytest.raises(DownloadError, match="did not give a readable zip"):
        download_dataset("pods", dest)
    assert list(dest.parent.iterdir()) == []


def test_unknown_name_lists_the_valid_ones(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; downloadable: pods, dogs"):
        download_dataset("imagenet", tmp_path / "x")


def test_df2_explains_why_it_cannot_be_downloaded(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(urllib.request, "urlopen", _no_network)
    with pytest.raises(DownloadError, match="DF2 cannot be downloaded") as err:
        download_dataset("df2", tmp_path / "df2")
    assert "removed upstream" in str(err.value) and "prpg data check" in str(err.value)
