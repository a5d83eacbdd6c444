"""check_dataset: a correct tree is clean; every kind of bad input is reported, all at once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from prpg.data import check_dataset, format_report
from tests.conftest import box_for, make_pods_tree, write_image, write_mask


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _copy_bytes(src: Path, dst: Path) -> None:
    dst.write_bytes(src.read_bytes())


def _test_masks_for_first_only(root: Path) -> None:
    write_mask(root / "test_masks" / "mug_01" / "0000.png", box_for(0))


def _add_info_instance(root: Path) -> None:
    def edit(info):
        info["classes"].append("mug_02")
        info["class_to_idx"]["mug_02"] = 9
        info["class_to_sc"]["mug_02"] = "mug"
        info["class_to_split"]["mug_02"] = "test"

    _edit_json(root / "pods_info.json", edit)


def _add_unlisted_instance(root: Path) -> None:
    for k in range(3):
        write_image(root / "train" / "bag_00" / f"{k}.jpg")
        write_mask(root / "train_masks" / "bag_00" / f"{k}.png", box_for(k))


# (mutation, path of the problem relative to the root, substrings its message must hold)
BAD_INPUTS = [
    pytest.param(
        lambda r: _truncate(r / "test/mug_01/0001.jpg"),
        "test/mug_01/0001.jpg",
        ("cannot be decoded", "truncated", "re-download"),
        id="truncated-image",
    ),
    pytest.param(
        lambda r: (r / "train/mug_00/0002.jpg").write_bytes(b"not an image"),
        "train/mug_00/0002.jpg",
        ("cannot be decoded", "delete it"),
        id="unreadable-image",
    ),
    pytest.param(
        lambda r: _truncate(r / "train_masks/mug_00/0000.png"),
        "train_masks/mug_00/0000.png",
        ("cannot be decoded",),
        id="truncated-mask",
    ),
    pytest.param(
        lambda r: (r / "train_masks/shoe_00/0001.png").unlink(),
        "train/shoe_00/0001.jpg",
        ("has no mask", "train_masks/shoe_00/0001.png"),
        id="train-image-without-mask",
    ),
    pytest.param(
        lambda r: (r / "test_dense_masks/mug_01/0000.jpg").unlink(),
        "test_dense/mug_01/0000.jpg",
        ("has no mask", "test_dense_masks/mug_01/0000.png"),
        id="dense-image-without-mask",
    ),
    pytest.param(
        _test_masks_for_first_only,
        "test/mug_01/0001.jpg",
        ("has no mask", "test_masks/mug_01/0001.png"),
        id="test-image-without-mask",
    ),
    pytest.param(
        lambda r: write_mask(r / "train_masks/mug_00/0001.png", (0, 0, 0, 0)),
        "train_masks/mug_00/0001.png",
        ("is empty", "redraw"),
        id="empty-mask",
    ),
    pytest.param(
        lambda r: write_mask(r / "train_masks/mug_00/0000.png", (1, 1, 9, 9), size=(32, 48)),
        "train_masks/mug_00/0000.png",
        ("is 32x48", "0000.jpg is 48x32", "re-export"),
        id="mask-size",
    ),
    pytest.param(
        lambda r: (r / "train/mug_01/0002.jpg").unlink(),
        "train/mug_01",
        ("has 2 train image(s), fewer than 3", "add photos"),
        id="too-few-train",
    ),
    pytest.param(
        _add_info_instance,
        "train/mug_02",
        ("missing", "pods_info.json", "add its train photos"),
        id="info-instance-without-folder",
    ),
    pytest.param(
        _add_unlisted_instance,
        "train/bag_00",
        ("not listed in pods_info.json", "add it to classes"),
        id="folder-not-in-info",
    ),
    pytest.param(
        lambda r: _edit_json(r / "pods_info.json", lambda d: d["class_to_sc"].pop("shoe_00")),
        "pods_info.json",
        ("'class_to_sc' has no entry for 'shoe_00'", "add"),
        id="info-missing-key",
    ),
    pytest.param(
        lambda r: _edit_json(r / "pods_info.json", lambda d: d["class_to_idx"].update(cup=7)),
        "pods_info.json",
        ("'class_to_idx' has entries for 'cup'", "not in 'classes'"),
        id="info-extra-key",
    ),
    pytest.param(
        lambda r: _edit_json(r / "pods_info.json", lambda d: d["class_to_split"].update(mug_00="train")),
        "pods_info.json",
        ("outside val, test, pool", "'mug_00'"),
        id="info-split-value",
    ),
    pytest.param(
        lambda r: _edit_json(r / "pods_info.json", lambda d: d["class_to_idx"].update(mug_01=0)),
        "pods_info.json",
        ("the index 0", "unique"),
        id="info-duplicate-index",
    ),
    pytest.param(
        lambda r: (r / "pods_info.json").write_text("{'classes': "),
        "pods_info.json",
        ("cannot be read as JSON", "fix"),
        id="info-not-json",
    ),
    pytest.param(
        lambda r: _edit_json(
            r / "pods_image_annos.json", lambda d: d["test/mug_00/0000.jpg"].update(test_split="posed")
        ),
        "pods_image_annos.json",
        ("'test/mug_00/0000.jpg'", "unknown test_split 'posed'", "use one of"),
        id="annos-unknown-test-split",
    ),
    pytest.param(
        lambda r: (r / "test/shoe_00/0003.jpg").unlink(),
        "pods_image_annos.json",
        ("'test/shoe_00/0003.jpg' points to no image", "remove the entry"),
        id="annos-missing-image",
    ),
    pytest.param(
        lambda r: _copy_bytes(r / "train/mug_00/0000.jpg", r / "test/mug_00/0003.jpg"),
        "test/mug_00/0003.jpg",
        ("byte-identical to", "train/mug_00/0000.jpg", "delete one copy"),
        id="train-photo-in-test",
    ),
    pytest.param(
        lambda r: _copy_bytes(r / "train/mug_00/0000.jpg", r / "train/shoe_00/0001.jpg"),
        "train/shoe_00/0001.jpg",
        ("byte-identical to", "two instances"),
        id="photo-in-two-instances",
    ),
    pytest.param(
        lambda r: write_mask(r / "train_masks/mug_00/0007.png", box_for(0)),
        "train_masks/mug_00/0007.png",
        ("has no image with stem '0007'", "delete it"),
        id="mask-without-image",
    ),
    pytest.param(
        lambda r: write_image(r / "train/mug_00/0001.png"),
        "train/mug_00/0001.png",
        ("same stem as 0001.jpg", "rename"),
        id="two-images-one-stem",
    ),
    pytest.param(
        lambda r: write_image(r / "test/cup_00/0000.jpg"),
        "test/cup_00",
        ("no matching train/cup_00",),
        id="test-folder-without-train",
    ),
    pytest.param(
        lambda r: (r / "more_info.json").write_text("{}"),
        ".",
        ("several *_info.json", "keep exactly one"),
        id="two-info-files",
    ),
]


def test_correct_tree_has_no_problems(tmp_path: Path):
    root = make_pods_tree(tmp_path / "pods", test_masks=True)
    assert check_dataset(root) == []
    assert format_report([]) == "no problems found"


@pytest.mark.parametrize(("mutate", "where", "says"), BAD_INPUTS)
def test_each_bad_input_is_reported(pods_tree: Path, mutate, where: str, says: tuple[str, ...]):
    assert check_dataset(pods_tree) == []
    mutate(pods_tree)
    problems = check_dataset(pods_tree)
    path = (pods_tree / where) if where != "." else pods_tree
    hits = [p for p in problems if p.path == path and all(s in p.message for s in says)]
    assert hits, format_report(problems)
    assert str(hits[0]).startswith(f"{path}: ")


def test_missing_root_and_missing_train(tmp_path: Path):
    [problem] = check_dataset(tmp_path / "nowhere")
    assert problem.path == tmp_path / "nowhere" and "does not exist" in problem.message
    root = make_pods_tree(tmp_path / "d", annos=False)
    shutil.rmtree(root / "train")
    problems = check_dataset(root)
    assert any(
        p.path == root / "train" and "missing" in p.message and "train/<instance>/" in p.message
        for p in problems
    )
    assert any(p.path == root / "train" / "mug_00" and "pods_info.json" in p.message for p in problems)


def test_every_problem_is_reported_at_once(pods_tree: Path):
    r = pods_tree
    _truncate(r / "test/mug_01/0001.jpg")
    (r / "train_masks/shoe_00/0001.png").unlink()
    write_mask(r / "train_masks/mug_00/0001.png", (0, 0, 0, 0))
    write_mask(r / "train_masks/mug_00/0002.png", (1, 1, 9, 9), size=(40, 40))
    (r / "test_dense/mug_00/0001.jpg").unlink()
    _copy_bytes(r / "train/mug_00/0000.jpg", r / "test/mug_01/0003.jpg")
    _edit_json(r / "pods_info.json", lambda d: d["class_to_split"].update(shoe_00="testing"))
    _edit_json(r / "pods_image_annos.json", lambda d: d["test/mug_00/0002.jpg"].update(test_split="ID"))

    problems = check_dataset(r)
    expected = {
        ("test/mug_01/0001.jpg", "cannot be decoded"),
        ("train/shoe_00/0001.jpg", "has no mask"),
        ("train_masks/mug_00/0001.png", "is empty"),
        ("train_masks/mug_00/0002.png", "is 40x40"),
        ("test_dense_masks/mug_00/0001.jpg", "has no image"),
        ("pods_image_annos.json", "'test_dense/mug_00/0001.jpg' points to no image"),
        ("test/mug_01/0003.jpg", "byte-identical"),
        ("pods_info.json", "class_to_split"),
        ("pods_image_annos.json", "unknown test_split 'ID'"),
    }
    found = {
        (p.path.relative_to(r).as_posix(), s)
        for p in problems
        for (w, s) in expected
        if p.path == r / w and s in p.message
    }
    assert found == expected, format_report(problems)
    assert len(problems) == len(expected), format_report(problems)
    assert problems == sorted(problems, key=lambda p: (str(p.path), p.message))
    report = format_report(problems)
    assert report.endswith(f"{len(expected)} problem(s)") and report.count("\n") == len(expected)


def test_options_and_exif_rotation(tmp_path: Path):
    root = make_pods_tree(tmp_path / "d", annos=False)
    (root / "train_masks/mug_00/0000.png").unlink()
    assert check_dataset(root, require_train_masks=False) == []
    assert any(
        "fewer than 4" in p.message for p in check_dataset(root, require_train_masks=False, min_train=4)
    )

    # A photo stored 32x48 with EXIF orientation 6 is 48x32 upright: its 48x32 mask fits ...
    exif = Image.Exif()
    exif[0x0112] = 6
    a = np.random.default_rng(0).integers(0, 256, (48, 32, 3), dtype=np.uint8)
    Image.fromarray(a).save(root / "train/mug_00/0000.jpg", exif=exif)
    write_mask(root / "train_masks/mug_00/0000.png", box_for(0))
    assert check_dataset(root) == []
    # ... and a mask drawn on the un-rotated pixels does not.
    write_mask(root / "train_masks/mug_00/0000.png", (1, 1, 9, 9), size=(32, 48))
    [problem] = check_dataset(root)
    assert problem.path == root / "train_masks/mug_00/0000.png" and "after EXIF rotation" in problem.message


def test_truncated_is_found_even_if_pillow_was_told_to_tolerate_it(pods_tree: Path, monkeypatch):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    _truncate(pods_tree / "train/mug_00/0001.jpg")
    [problem] = check_dataset(pods_tree)
    assert problem.path == pods_tree / "train/mug_00/0001.jpg"
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the caller's setting is restored


def test_annos_in_an_unknown_key_scheme_is_one_problem(pods_tree: Path):
    annos = pods_tree / "pods_image_annos.json"
    entries = json.loads(annos.read_text())
    annos.write_text(json.dumps({f"id-{k}": v for k, v in enumerate(entries.values())}))
    [problem] = check_dataset(pods_tree)
    assert problem.path == annos
    assert f"none of its {len(entries)} entries matches an image" in problem.message
    assert "'id-0'" in problem.message and "relative path" in problem.message
