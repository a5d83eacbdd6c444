"""The toybox world: PODS layout, exact masks, informative captions, determinism, atomic builds, and
the property the project relies on: the category is easy, the instance is hard."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.feature import hog

import prpg.toybox.build as toybox_build
from prpg.toybox import (
    ANNOS_FILE,
    BACKGROUNDS,
    CATEGORIES,
    TEST_SPLITS,
    build_toybox,
    eval_names,
    instance_params,
    pool_names,
    render_shot,
    render_sprite,
    stable_seed,
    world_instances,
)
from prpg.toybox.scenes import Placed, Pose, _compose, _Layer, distractor_phrase, place, pose_words
from tests.conftest import toybox_group

SMALL = {
    "size": 64,
    "instances_per_category": 3,
    "val_per_category": 1,
    "pool_per_category": 2,
    "test_per_split": 2,
    "dense_per_split": 3,
    "pool_test_per_split": 1,
}
TINY = {
    "size": 48,
    "instances_per_category": 1,
    "val_per_category": 1,
    "pool_per_category": 1,
    "test_per_split": 1,
    "dense_per_split": 1,
    "pool_test_per_split": 1,
}


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return build_toybox(tmp_path_factory.mktemp("world") / "out", seed=0, workers=2, **SMALL)


def file_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def mask_path(root: Path, rel: str) -> Path:
    folder, instance, name = rel.split("/")
    return root / f"{folder}_masks" / instance / name.replace(".jpg", ".png")


@pytest.mark.parametrize(
    "dataset, names, counts",
    [
        ("toybox", eval_names(3), {"train": 3, "test": 8, "test_dense": 12}),
        ("toybox_pool", pool_names(2), {"train": 3, "test": 4}),
    ],
)
def test_layout_counts_and_masks(world, dataset, names, counts):
    root = world / dataset
    folders = {p.name for p in root.iterdir() if p.is_dir()}
    assert folders == set(counts) | {f"{f}_masks" for f in counts}
    for folder, n in counts.items():
        assert sorted(p.name for p in (root / folder).iterdir()) == sorted(names)
        for name in names:
            images = sorted((root / folder / name).iterdir())
            assert [p.name for p in images] == [f"{i:04d}.jpg" for i in range(n)]
            masks = sorted((root / f"{folder}_masks" / name).iterdir())
            assert [p.stem for p in masks] == [p.stem for p in images]
            for img_path, m_path in zip(images, masks, strict=True):
                with Image.open(img_path) as img, Image.open(m_path) as m:
                    assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (64, 64))
                    assert (m.format, m.mode, m.size) == ("PNG", "L", (64, 64))
                    values = np.unique(np.asarray(m))
                assert set(values.tolist()) <= {0, 255} and 255 in values, f"{m_path}: empty or soft mask"


def test_info_json(world):
    for dataset, names in (("toybox", eval_names(3)), ("toybox_pool", pool_names(2))):
        path = world / dataset / f"{dataset}_info.json"
        text = path.read_text()
        info = json.loads(text)
        assert text == json.dumps(info, sort_keys=True, indent=1) + "\n"
        assert set(info) == {"classes", "class_to_idx", "class_to_sc", "class_to_split"}
        assert info["classes"] == sorted(names)
        assert info["class_to_idx"] == {c: i for i, c in enumerate(sorted(names))}
        assert info["class_to_sc"] == {n: n.removeprefix("pool_").rsplit("_", 1)[0] for n in names}
    info = json.loads((world / "toybox" / "toybox_info.json").read_text())
    assert info["class_to_split"] == {
        f"{c}_{i:02d}": "val" if i < 1 else "test" for c in CATEGORIES for i in range(3)
    }
    pool = json.loads((world / "toybox_pool" / "toybox_pool_info.json").read_text())
    assert set(pool["class_to_split"].values()) == {"pool"}
    assert not set(info["classes"]) & set(pool["classes"])


def test_annos_cover_every_image_with_true_captions(world):
    for dataset, per_split in (("toybox", {"test": 2, "test_dense": 3}), ("toybox_pool", {"test": 1})):
        root = world / dataset
        annos = json.loads((root / ANNOS_FILE).read_text())
        images = {
            p.relative_to(root).as_posix() for f in ("train", *per_split) for p in (root / f).rglob("*.jpg")
        }
        assert set(annos) == images
        for rel, a in annos.items():
            folder, instance, _ = rel.split("/")
            category = instance.removeprefix("pool_").rsplit("_", 1)[0]
            scene, caption = a["scene"], a["caption"]
            assert a["class"] == instance
            assert a["split"] == ("train" if folder == "train" else "test")
            assert ("test_split" in a) == (folder != "train")
            assert caption.startswith(f"a photo of a {category} {BACKGROUNDS[scene['background']].phrase}")
            for word in scene["pose_words"]:
                assert word in caption
            assert bool(scene["distractors"]) == (", with " in caption)
            assert ("partly hidden" in caption) == (scene["occluded_fraction"] >= 0.1)
            assert scene["occluded_fraction"] <= 0.7
            split = a.get("test_split", "train")
            if split in ("train", "in_distribution", "distractors"):
                assert not scene["flip"] and abs(scene["rotation"]) <= 12
            if split in ("train", "in_distribution"):
                assert BACKGROUNDS[scene["background"]].canonical and not scene["distractors"]
            if split in ("pose", "pose_and_distractors"):
                assert scene["pose_words"], (
                    f"{rel}: a pose-split image must differ visibly from the train pose"
                )
            if split in ("distractors", "pose_and_distractors"):
                assert 1 <= len(scene["distractors"]) <= 3
            if split == "pose":
                assert not scene["distractors"]
        for folder, n in per_split.items():
            for instance in {r.split("/")[1] for r in annos}:
                splits = [a["test_split"] for r, a in annos.items() if r.startswith(f"{folder}/{instance}/")]
                assert sorted(splits) == sorted(s for s in TEST_SPLITS for _ in range(n))
        train = [a for r, a in annos.items() if r.startswith("train/")]
        by_instance: dict[str, set[str]] = {}
        for a in train:  # one canonical scene per instance, three vantage points
            by_instance.setdefault(a["class"], set()).add(a["scene"]["background"])
        assert all(len(b) == 1 for b in by_instance.values())


def test_captions_are_built_from_scene_facts():
    assert distractor_phrase("mug", ["mug", "bottle", "bottle"]) == "with another mug and two bottles"
    assert distractor_phrase("mug", ["mug", "mug", "shoe"]) == "with other mugs and a shoe"
    assert distractor_phrase("tote", []) == ""
    assert pose_words(Pose(30, 0.6, True, (0.0, 0.2), (0.5, 0.5))) == [
        "tilted to the left",
        "seen from far away",
        "seen from above",
        "mirrored",
    ]
    assert pose_words(Pose(-25, 1.2, False, (0.2, 0.0), (0.5, 0.5))) == [
        "tilted to the right",
        "close up",
        "seen at an angle",
    ]
    assert pose_words(Pose(5, 1.0, False, (0.05, -0.05), (0.5, 0.5))) == []


def test_mask_is_exactly_the_visible_target():
    size = 32
    bg = np.full((size, size, 3), 10, np.float32)
    behind = np.zeros((size, size), bool)
    behind[0:20, 0:20] = True
    target = np.zeros((size, size), bool)
    target[10:30, 10:30] = True
    front = np.zeros((size, size), bool)
    front[25:32, 0:32] = True
    full = (0, 0, size, size)
    layers = [
        _Layer(Placed(full, np.full_like(bg, 50), behind), False),
        _Layer(Placed(full, np.full_like(bg, 200), target), True),
        _Layer(Placed(full, np.full_like(bg, 120), front), False),
    ]
    canvas, visible = _compose(bg, layers, shadow=0.0)  # shadows may darken, never re-own, a pixel
    assert np.array_equal(visible, target & ~front)
    assert np.all(canvas[visible] == 200) and not np.any(canvas[~visible] == 200)
    # real shots: warped sprites keep hard alpha, masks are never empty and never hide > 70 %
    inst = instance_params(0, "mug_00")
    for i in range(12):
        rng = np.random.default_rng(stable_seed(0, "test", i))
        home = ("wooden table", stable_seed(0, "home"))
        shot = render_shot(inst, "pose_and_distractors", rng, 64, seed=0, home=home)
        assert shot.mask.any() and shot.scene["occluded_fraction"] <= 0.7
        if shot.scene["occluded_fraction"] > 0:
            assert any(d["in_front"] for d in shot.scene["distractors"])
    sprite = render_sprite(inst, 48)
    assert set(np.unique(np.asarray(sprite)[..., 3]).tolist()) == {0, 255}
    placed = place(sprite, Pose(40, 0.8, True, (0.2, -0.1), (0.5, 0.5)), 64)
    x0, y0, x1, y1 = placed.box
    assert 0 < placed.mask.sum() == placed.mask[y0:y1, x0:x1].sum() and placed.rgb.shape == (
        y1 - y0,
        x1 - x0,
        3,
    )


def test_same_seed_is_byte_identical_regardless_of_workers(tmp_path):
    one = build_toybox(tmp_path / "a", seed=3, workers=1, **TINY)
    two = build_toybox(tmp_path / "b", seed=3, workers=2, **TINY)
    other = build_toybox(tmp_path / "c", seed=4, workers=2, **TINY)
    for dataset in ("toybox", "toybox_pool"):
        h1, h2, h3 = (file_hashes(r / dataset) for r in (one, two, other))
        assert h1 == h2
        assert h1.keys() == h3.keys()
        differing = sum(h1[k] != h3[k] for k in h1)
        assert differing >= 0.9 * len(h1), "a different seed must give a different world"
    build_toybox(tmp_path / "a", seed=3, workers=2, **TINY)  # rebuilding in place replaces it identically
    assert file_hashes(one) == file_hashes(two)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "c"]  # no temp dirs left


def test_pool_instances_are_new_instances(world):
    evaluation, pool = world_instances(0, 20, 50)
    assert len(evaluation) == 100 and len(pool) == 250
    assert not set(evaluation) & set(pool)
    assert not set(evaluation.values()) & set(pool.values())
    assert len(set(evaluation.values()) | set(pool.values())) == 350  # every instance is distinct
    assert all(instance_params(0, n) == evaluation[n] for n in list(evaluation)[:5])  # from (seed, name)
    assert instance_params(1, "mug_00") != instance_params(0, "mug_00")
    for cat in CATEGORIES:  # instances differ in detail: several palettes, patterns, decals per category
        insts = [i for n, i in evaluation.items() if i.category == cat]
        assert len({i.color_name for i in insts}) >= 4
        assert len({i.pattern.kind for i in insts}) >= 3
        assert len({i.decal.glyph for i in insts}) >= 5


def _object_features(image_path: Path, m_path: Path) -> np.ndarray:
    """HOG of the mask's silhouette plus the object's mean colour: a cheap stand-in for an encoder."""
    rgb = np.asarray(Image.open(image_path).convert("RGB"), np.float32) / 255
    m = np.asarray(Image.open(m_path)) > 0
    ys, xs = np.nonzero(m)
    side = int(max(ys.max() - ys.min(), xs.max() - xs.min())) + 1
    cy, cx = (ys.min() + ys.max() + 1) / 2 + side, (xs.min() + xs.max() + 1) / 2 + side
    padded = Image.fromarray(np.pad(m, side).astype(np.uint8) * 255)
    crop = padded.resize(
        (32, 32), Image.Resampling.BILINEAR, box=(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
    )
    shape = hog(
        np.asarray(crop, np.float32) / 255, orientations=9, pixels_per_cell=(8, 8), cells_per_block=(2, 2)
    )
    return np.concatenate([shape, 3 * rgb[m].mean(0)])


def test_category_is_easy_and_instance_is_hard(tmp_path):
    root = (
        build_toybox(
            tmp_path,
            seed=0,
            size=64,
            instances_per_category=6,
            val_per_category=1,
            pool_per_category=1,
            test_per_split=2,
            dense_per_split=0,
            pool_test_per_split=1,
        )
        / "toybox"
    )
    annos = json.loads((root / ANNOS_FILE).read_text())
    gallery = [r for r, a in annos.items() if a["split"] == "train"]
    queries = [r for r, a in annos.items() if a["split"] == "test"]
    feats = {r: _object_features(root / r, mask_path(root, r)) for r in annos}
    g = np.stack([feats[r] for r in gallery])
    nearest = [gallery[int(((g - feats[q]) ** 2).sum(1).argmin())] for q in queries]
    instance_of = {r: annos[r]["class"] for r in annos}
    category_of = {r: instance_of[r].rsplit("_", 1)[0] for r in annos}
    category_acc = np.mean([category_of[q] == category_of[n] for q, n in zip(queries, nearest, strict=True)])
    instance_acc = np.mean([instance_of[q] == instance_of[n] for q, n in zip(queries, nearest, strict=True)])
    chance = 1 / len({a["class"] for a in annos.values()})
    print(
        f"nearest neighbour (HOG + mean colour, oracle mask): category {category_acc:.3f}, "
        f"instance {instance_acc:.3f}, instance chance {chance:.3f}"
    )
    assert category_acc >= 0.65
    assert category_acc - instance_acc >= 0.15
    assert instance_acc >= 4 * chance  # instances are told apart by their details, just not easily


def test_failed_build_leaves_nothing_behind(tmp_path, monkeypatch):
    out = tmp_path / "new"
    calls = {"n": 0}
    real_write = toybox_build._write_image

    def failing_write(path, image):
        calls["n"] += 1
        if calls["n"] > 10:
            raise OSError("disk full")
        real_write(path, image)

    monkeypatch.setattr(toybox_build, "_write_image", failing_write)
    with pytest.raises(OSError, match="disk full"):
        build_toybox(out, workers=1, **TINY)
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_each_dataset_alone_has_the_same_files_as_both(tmp_path):
    """The data stage builds only the evaluation world and the zoo stage only the pool: each must be
    byte-identical to its half of a full build (same seeds, pool still disjoint from evaluation)."""
    both = build_toybox(tmp_path / "both", seed=3, workers=1, **TINY)
    for name in ("toybox", "toybox_pool"):
        alone = build_toybox(tmp_path / name, seed=3, workers=2, datasets=(name,), **TINY)
        assert sorted(p.name for p in alone.iterdir()) == [name]
        assert file_hashes(alone / name) == file_hashes(both / name)
    with pytest.raises(ValueError, match="datasets must be"):
        build_toybox(tmp_path / "bad", datasets=("toybox", "nope"), **TINY)


def test_failed_rebuild_keeps_the_previous_world(tmp_path, monkeypatch):
    out = build_toybox(tmp_path / "out", seed=0, workers=2, **TINY)
    before = {d: file_hashes(out / d) for d in ("toybox", "toybox_pool")}

    def failing_json(path, obj):
        raise OSError("disk full")

    monkeypatch.setattr(toybox_build, "_write_json", failing_json)  # fails after every image is written
    with pytest.raises(OSError, match="disk full"):
        build_toybox(out, seed=1, workers=2, **TINY)
    assert {d: file_hashes(out / d) for d in ("toybox", "toybox_pool")} == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_reader_reads_the_toybox(world):
    from prpg.data import check_dataset, load_dataset

    ds = load_dataset(world / "toybox")
    assert ds.name == "toybox" and ds.categories == tuple(sorted(CATEGORIES)) and ds.has_test_dense
    assert [i.name for i in ds.instances] == sorted(eval_names(3))
    assert [i.split for i in ds.instances_in("mug")] == ["val", "test", "test"]
    assert len(ds.images("train")) == 15 * 3 and len(ds.images("test")) == 15 * 8
    assert len(ds.dense_images()) == 15 * 12
    for split in ("train", "test", "test_dense"):
        assert all(r.mask_path is not None for r in ds.images(split))
    assert {r.test_split for r in ds.images("test")} == set(TEST_SPLITS)
    record = ds.images("test", "shoe_01")[0]
    assert ds.annotation(record)["caption"].startswith("a photo of a shoe")
    pool = load_dataset(world / "toybox_pool")
    assert {i.split for i in pool.instances} == {"pool"} and not pool.has_test_dense
    for dataset in ("toybox", "toybox_pool"):
        assert check_dataset(world / dataset) == []


@pytest.mark.slow
def test_full_default_world_builds_within_a_minute(tmp_path):
    start = time.perf_counter()
    out = build_toybox(tmp_path / "out", workers=2)
    elapsed = time.perf_counter() - start
    n_files = sum(1 for _ in out.rglob("*.jpg"))
    print(f"full toybox world: {elapsed:.1f} s, {n_files} images")
    assert n_files == 100 * (3 + 24 + 12) + 250 * (3 + 16)
    assert elapsed < 60


def test_pool_is_built_from_params_and_checked_against_them(tmp_path):
    from prpg.data import DatasetError
    from prpg.data.prepare import load_pool, prepare_pool
    from prpg.core.params import parse_group

    common = parse_group("common", toybox_group("common", {"seed": 0}))
    world = {**TINY, "instances_per_category": 2, "pool_per_category": 2}
    data = parse_group("data", toybox_group("data", {"toybox": world}))
    with pytest.raises(DatasetError, match="no toybox pool; build it with `prpg data build-pool`"):
        load_pool(data, tmp_path)
    root = prepare_pool(common, data, tmp_path)
    assert root == tmp_path / "toybox_pool" and not (tmp_path / "toybox").exists()
    assert len(load_pool(data, tmp_path).instances) == 10
    stale = parse_group("data", toybox_group("data", {"toybox": {**world, "pool_per_category": 3}}))
    with pytest.raises(DatasetError, match="params say data.toybox.pool_per_category=3"):
        load_pool(stale, tmp_path)
