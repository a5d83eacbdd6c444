"""Oracle sources: perfect synthetic data that only the toybox world can make.

A generator personalized on ~3 photos approximates the instance; the toybox can render the instance
*itself* in new scenes. These are upper bounds for the generated sets:

- oracle_positives: renders of an evaluation instance (its own parameters, build.instance_params) in
  scenes drawn as its test images are (the test splits in turn: in_distribution, pose, distractors,
  pose_and_distractors; the instance's own home for in-distribution scenes);
- oracle_negatives: renders of POOL instances of the category (never evaluation instances), drawn the
  same way, pool instances in turn.

Disjoint from every evaluation image: every dataset image draws its scene from
stable_seed(seed, <dataset name>, <instance>, <folder>, <index>) (prpg.toybox.build); an oracle render
draws from stable_seed(seed, "oracle" or "oracle_negative", <instance or category>, <index>), a tag no
dataset image uses, so the scenes are new draws (tests/test_oracle.py checks pixels and scene parameters
against a whole world). Written as <out>/NNNN.png, exact masks in <out>/masks/NNNN.png, and <out>/scenes.json
(per file: instance, split, seed tag, scene parameters).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from prpg.core.atomic import atomic_dir
from prpg.core.params import oracle_dataset_problem
from prpg.toybox.build import EVAL_NAME, POOL_NAME, category_of, eval_names, home_scene, world_instances
from prpg.toybox.objects import CATEGORIES, Instance
from prpg.toybox.scenes import TEST_SPLITS, Shot, render_shot, stable_seed

POSITIVE_TAG = "oracle"
NEGATIVE_TAG = "oracle_negative"
SCENES_FILE = "scenes.json"
MASKS = "masks"


class OracleError(ValueError):
    """An oracle source asked for where it cannot be made (not the toybox world, an unknown name)."""


def require_toybox(dataset: str, key: str, n: int) -> None:
    """n > 0 oracle images need the toybox world: elsewhere, one line naming the key (the stage's check;
    prpg.core.params.load_params checks the same before a run)."""
    if problem := oracle_dataset_problem(key, n, dataset):
        raise OracleError(problem)


@dataclass(frozen=True)
class World:
    """The toybox world the data stage builds (common.seed and data.toybox's keys)."""

    seed: int
    size: int
    instances_per_category: int
    pool_per_category: int

    @classmethod
    def of(cls, common, toybox) -> World:
        """From the validated `common` and `data.toybox` params groups."""
        return cls(common.seed, toybox.size, toybox.instances_per_category, toybox.pool_per_category)

    def instances(self) -> tuple[dict[str, Instance], dict[str, Instance]]:
        return world_instances(self.seed, self.instances_per_category, self.pool_per_category)


def _shot(world: World, dataset: str, name: str, instance: Instance, tag: tuple[int | str, ...],
          i: int) -> tuple[Shot, dict[str, Any]]:
    split = TEST_SPLITS[i % len(TEST_SPLITS)]  # the test splits in turn
    rng = np.random.default_rng(stable_seed(*tag))
    home = home_scene(world.seed, dataset, name)  # in-distribution scenes: the instance's own surface, as its tests
    shot = render_shot(instance, split, rng, world.size, seed=world.seed, home=home, view=i)
    return shot, {"instance": name, "split": split, "seed_tag": list(tag), "scene": shot.scene}


def positive_shots(world: World, name: str, n: int) -> Iterator[tuple[Shot, dict[str, Any]]]:
    """n renders of evaluation instance `name` in new test-like scenes."""
    if n <= 0:
        return
    evaluation, _ = world.instances()
    if name not in evaluation:
        raise OracleError(f"oracle positives: {name!r} is not an evaluation instance of the toybox world "
                          f"({world.instances_per_category} per category: {', '.join(eval_names(1)[:2])}, ...)")
    for i in range(n):
        yield _shot(world, EVAL_NAME, name, evaluation[name], (world.seed, POSITIVE_TAG, name, i), i)


def negative_shots(world: World, category: str, n: int) -> Iterator[tuple[Shot, dict[str, Any]]]:
    """n renders of the category's pool instances (in turn) in new test-like scenes."""
    if n <= 0:
        return
    if category not in CATEGORIES:
        raise OracleError(f"oracle negatives: unknown toybox category {category!r} (known: {', '.join(CATEGORIES)})")
    _, pool = world.instances()
    names = [p for p in pool if category_of(p) == category]
    for i in range(n):
        name = names[i % len(names)]
        yield _shot(world, POOL_NAME, name, pool[name], (world.seed, NEGATIVE_TAG, category, i), i)


def _write(shots: Iterator[tuple[Shot, dict[str, Any]]], out_dir: Path) -> Path:
    """<out_dir>/NNNN.png, <out_dir>/masks/NNNN.png and <out_dir>/scenes.json, atomically. The masks live inside
    the folder (the stage's DVC output; the train stage lists only the images directly in it), and scenes.json
    is written for n = 0 too ({}): DVC neither restores nor quietly saves an empty folder."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / MASKS).mkdir()
        records = {}
        for i, (shot, record) in enumerate(shots):
            name = f"{i:04d}.png"
            Image.fromarray(shot.image, "RGB").save(tmp / name)
            Image.fromarray(shot.mask.astype(np.uint8) * 255, "L").save(tmp / MASKS / name)
            records[name] = record
        (tmp / SCENES_FILE).write_text(json.dumps(records, sort_keys=True, indent=1) + "\n")
    return out_dir


def oracle_positives(world: World, name: str, n: int, out_dir: str | Path) -> Path:
    """Write n oracle positives of evaluation instance `name` to out_dir (see the module docstring)."""
    if n < 0:
        raise OracleError(f"oracle positives: n must be >= 0, got {n}")
    return _write(positive_shots(world, name, n), Path(out_dir))


def oracle_negatives(world: World, category: str, n: int, out_dir: str | Path) -> Path:
    """Write n oracle negatives of `category` (its pool instances, in turn) to out_dir."""
    if n < 0:
        raise OracleError(f"oracle negatives: n must be >= 0, got {n}")
    return _write(negative_shots(world, category, n), Path(out_dir))


def stage_positives(common, toybox, name: str, n: int, out_dir: str | Path) -> Path:
    """The synthesize stage's oracle set (synthesize.oracle.n; 0: an empty folder, on any dataset)."""
    require_toybox(common.dataset, "synthesize.oracle.n", n)
    return oracle_positives(World.of(common, toybox), name, n, out_dir)


def stage_negatives(common, toybox, category: str, n: int, out_dir: str | Path) -> Path:
    """The priors stage's oracle negatives (priors.oracle_negatives.n; 0: an empty folder, on any dataset)."""
    require_toybox(common.dataset, "priors.oracle_negatives.n", n)
    return oracle_negatives(World.of(common, toybox), category, n, out_dir)
