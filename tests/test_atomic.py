import json

import pytest

from prpg.core.atomic import atomic_dir, write_json_atomic
from prpg.core.paths import ensure_not_under_data


def test_atomic_dir_replaces_only_on_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_dir(target) as tmp:
            (tmp / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert (target / "old.txt").read_text() == "old" and not (target / "new.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp dir left behind
    with atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_json_atomic_is_stable(tmp_path):
    p = write_json_atomic(tmp_path / "m.json", {"b": 1, "a": {"d": 2, "c": 3}})
    assert p.read_text() == json.dumps({"a": {"c": 3, "d": 2}, "b": 1}, indent=2) + "\n"


def test_refuses_to_write_under_data(tmp_path):
    with pytest.raises(ValueError, match="data.dvc"):
        ensure_not_under_data(tmp_path / "data" / "x", root=tmp_path)
    ensure_not_under_data(tmp_path / "outputs" / "x", root=tmp_path)
