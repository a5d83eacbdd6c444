"""Shared fixtures. Data fixtures write small PODS-format trees into tmp_path with PIL/numpy."""

from __future__ import annotations

import functools
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

TEST_SPLITS = ("in_distribution", "pose", "distractors", "pose_and_distractors")
# (instance, category, class_to_split)
DEFAULT_INSTANCES = (("mug_00", "mug", "val"), ("mug_01", "mug", "test"), ("shoe_00", "shoe", "test"))
IMAGE_SIZE = (48, 32)  # (W, H): non-square, so a transposed width/height shows up

_seed = iter(range(10**9))  # every written image differs, so no accidental duplicate-photo problems


REPO = Path(__file__).resolve().parents[1]


@functools.cache
def toybox_params() -> dict:
    """The default run's settings: params.yaml's groups, validated (prpg.core.params.load_params)."""
    from prpg.core.params import load_params

    return load_params(REPO / "params.yaml")


def toybox_group(group: str, values):
    """params.yaml's `group` as written (unvalidated) with `values` merged in, nested mappings key by key:
    a complete group that differs in `values` only (anything but a mapping: `values` as it is)."""
    import yaml

    def merge(base: dict, extra: dict) -> dict:
        return {**base,
                **{k: merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
                           for k, v in extra.items()}}

    raw = yaml.safe_load((REPO / "params.yaml").read_text())[group]
    return merge(raw, values) if isinstance(values, dict) else values


def toybox_config(path: str, **changes):
    """The config at a dotted params path of the default run (e.g. "synthesize.positives"), with `changes`
    (validated again: a bad value fails as in params.yaml)."""
    import dataclasses

    group, *keys = path.split(".")
    config = toybox_params()[group]
    for key in keys:
        config = getattr(config, key)
    return dataclasses.replace(config, **changes)


def experiment_params(name: str, *groups: str) -> dict:
    """A named experiment's settings: params.yaml with the experiment's overrides applied by DVC's own `-S`
    code on a temporary copy, then each group (default: all) validated. Paper runs' prompt files are
    downloaded data: ask for the groups you need where data/prompts is missing."""
    import yaml
    from dvc.utils.hydra import apply_overrides

    from prpg.core.params import GROUPS, parse_group
    from prpg.runs.experiments import overrides

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        shutil.copy(REPO / "params.yaml", copy)
        apply_overrides(str(copy), overrides(name))
        raw = yaml.safe_load(copy.read_text())
    source = f"params.yaml + experiments of {name}"
    return {g: parse_group(g, raw.get(g), source, root=REPO) for g in groups or GROUPS}


def write_image(path: Path, size: tuple[int, int] = IMAGE_SIZE, seed: int | None = None) -> Path:
    """A noise photo of `size` (W, H); format from the extension."""
    rng = np.random.default_rng(next(_seed) if seed is None else seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def write_mask(
    path: Path, box: tuple[int, int, int, int], size: tuple[int, int] = IMAGE_SIZE, mode: str = "L"
) -> Path:
    """A mask with foreground 255 inside `box` = (x0, y0, x1, y1), x1/y1 exclusive."""
    a = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = 255
    img = Image.fromarray(a)
    path.parent.mkdir(parents=True, exist_ok=True)
    (img.convert("RGB") if mode == "RGB" else img).save(path)
    return path


def box_for(k: int) -> tuple[int, int, int, int]:
    return (4 + k, 3 + k, 30 + k, 20 + k)


def make_pods_tree(
    root: Path,
    *,
    name: str = "pods",
    instances: tuple[tuple[str, str, str], ...] = DEFAULT_INSTANCES,
    n_train: int = 3,
    n_test: int = 4,
    n_dense: int = 2,
    info: bool = True,
    annos: bool = True,
    test_masks: bool = False,
) -> Path:
    """A small PODS-format tree: jpg photos, png train masks, RGB-jpg test_dense masks, optional png
    test masks, `<name>_info.json` and `<name>_image_annos.json` keyed by relative path.
    Test image k has test_split TEST_SPLITS[k % 4]; mask k has box `box_for(k)`."""
    root.mkdir(parents=True, exist_ok=True)
    entries: dict[str, dict] = {}
    for inst, _, _ in instances:
        for k in range(n_train):
            img = write_image(root / "train" / inst / f"{k:04d}.jpg")
            write_mask(root / "train_masks" / inst / f"{k:04d}.png", box_for(k))
            entries[img.relative_to(root).as_posix()] = {"class": inst, "split": "train"}
        for split, n in (("test", n_test), ("test_dense", n_dense)):
            for k in range(n):
                img = write_image(root / split / inst / f"{k:04d}.jpg")
                entries[img.relative_to(root).as_posix()] = {
                    "class": inst,
                    "split": "test",
                    "test_split": TEST_SPLITS[k % 4],
                }
                if split == "test_dense":
                    write_mask(root / "test_dense_masks" / inst / f"{k:04d}.jpg", box_for(k), mode="RGB")
                elif test_masks:
                    write_mask(root / "test_masks" / inst / f"{k:04d}.png", box_for(k))
    if info:
        (root / f"{name}_info.json").write_text(
            json.dumps(
                {
                    "classes": [i for i, _, _ in instances],
                    "class_to_idx": {i: k for k, (i, _, _) in enumerate(instances)},
                    "class_to_sc": {i: c for i, c, _ in instances},
                    "class_to_split": {i: s for i, _, s in instances},
                },
                indent=1,
            )
        )
    if annos:
        (root / f"{name}_image_annos.json").write_text(json.dumps(entries, indent=1))
    return root


@pytest.fixture
def pods_tree(tmp_path: Path) -> Path:
    return make_pods_tree(tmp_path / "pods")


@pytest.fixture(scope="session")
def toybox_world(tmp_path_factory) -> Path:
    """The default toybox evaluation world (seed 0, the one the shipped models are gated on), with a
    smaller pool: instances are drawn from (seed, name), so pool_mug_000.. match the full world's."""
    from prpg.toybox import build_toybox

    out = tmp_path_factory.mktemp("toybox") / "world"
    build_toybox(out, seed=0, pool_per_category=10)
    return out
