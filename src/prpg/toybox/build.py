"""Write the toybox world in the PODS layout, atomically and in parallel.

<out>/toybox/       evaluation instances (mug_00 ..), class_to_split val / test
<out>/toybox_pool/  pretraining instances (pool_mug_000 ..), class_to_split pool, no test_dense

Every image draws from its own generator seeded by (seed, dataset, instance, folder, index), so
the files do not depend on the number of workers or on the order in which instances are built.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tqdm import tqdm

from prpg.toybox.backgrounds import CANONICAL
from prpg.toybox.objects import CATEGORIES, Instance, sample_instance
from prpg.toybox.scenes import TEST_SPLITS, render_shot, stable_seed

EVAL_NAME = "toybox"
POOL_NAME = "toybox_pool"
ANNOS_FILE = "toybox_image_annos.json"
TRAIN_PER_INSTANCE = 3
JPEG_QUALITY = 95


def eval_names(per_category: int) -> list[str]:
    width = max(2, len(str(per_category - 1)))
    return [f"{c}_{i:0{width}d}" for c in CATEGORIES for i in range(per_category)]


def pool_names(per_category: int) -> list[str]:
    width = max(3, len(str(per_category - 1)))
    return [f"pool_{c}_{i:0{width}d}" for c in CATEGORIES for i in range(per_category)]


def category_of(name: str) -> str:
    return name.removeprefix("pool_").rsplit("_", 1)[0]


def instance_params(seed: int, name: str, attempt: int = 0) -> Instance:
    """The instance called `name` in the world of `seed` (attempt > 0: a redraw, see world_instances)."""
    parts: tuple[int | str, ...] = (seed, "instance", name) + ((attempt,) if attempt else ())
    return sample_instance(category_of(name), np.random.default_rng(stable_seed(*parts)))


def world_instances(
    seed: int, instances_per_category: int = 20, pool_per_category: int = 50
) -> tuple[dict[str, Instance], dict[str, Instance]]:
    """(evaluation, pool) instances by name; a pool instance never equals an evaluation instance."""
    evaluation = {n: instance_params(seed, n) for n in eval_names(instances_per_category)}
    taken = set(evaluation.values())
    pool = {}
    for name in pool_names(pool_per_category):
        attempt, inst = 0, instance_params(seed, name)
        while inst in taken:  # vanishingly rare (continuous parameters), but the split must be clean
            attempt += 1
            inst = instance_params(seed, name, attempt)
        pool[name] = inst
        taken.add(inst)
    return evaluation, pool


def home_scene(seed: int, dataset: str, name: str) -> tuple[str, np.random.SeedSequence]:
    """The instance's train scene (render_shot's `home`): a canonical background and its texture seed."""
    home_rng = np.random.default_rng(stable_seed(seed, dataset, name, "home"))
    return CANONICAL[int(home_rng.integers(len(CANONICAL)))], stable_seed(seed, dataset, name, "texture")


@dataclass(frozen=True)
class _Job:
    root: Path  # dataset directory being built
    dataset: str
    name: str
    instance: Instance
    seed: int
    size: int
    test_per_split: int
    dense_per_split: int


def _write_image(path: Path, image: np.ndarray) -> None:
    Image.fromarray(image, "RGB").save(path, format="JPEG", quality=JPEG_QUALITY)


def _write_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255, "L").save(path, format="PNG", compress_level=1)


def _build_instance(job: _Job) -> dict[str, dict[str, Any]]:
    """Render and write every image of one instance; returns its annos entries."""
    home = home_scene(job.seed, job.dataset, job.name)
    plan = [
        ("train", ["train"] * TRAIN_PER_INSTANCE),
        ("test", [s for s in TEST_SPLITS for _ in range(job.test_per_split)]),
        ("test_dense", [s for s in TEST_SPLITS for _ in range(job.dense_per_split)]),
    ]
    annos: dict[str, dict[str, Any]] = {}
    for folder, splits in plan:
        if not splits:
            continue
        (job.root / folder / job.name).mkdir(parents=True)
        (job.root / f"{folder}_masks" / job.name).mkdir(parents=True)
        for i, split in enumerate(splits):
            rng = np.random.default_rng(stable_seed(job.seed, job.dataset, job.name, folder, i))
            shot = render_shot(job.instance, split, rng, job.size, seed=job.seed, home=home, view=i)
            stem = f"{i:04d}"
            rel = f"{folder}/{job.name}/{stem}.jpg"
            _write_image(job.root / rel, shot.image)
            _write_mask(job.root / f"{folder}_masks" / job.name / f"{stem}.png", shot.mask)
            anno: dict[str, Any] = {
                "class": job.name,
                "split": "train" if folder == "train" else "test",
                "caption": shot.caption,
                "scene": shot.scene,
            }
            if folder != "train":
                anno["test_split"] = split
            annos[rel] = anno
    return annos


def _run(jobs: list[_Job], workers: int) -> list[dict[str, dict[str, Any]]]:
    """Build every job (in `workers` processes; 1 = in this process); results in job order."""
    results = []
    with tqdm(total=len(jobs), desc="toybox", unit="instance", disable=None) as bar:
        if workers <= 1:
            for job in jobs:
                results.append(_build_instance(job))
                bar.update()
            return results
        pool = ProcessPoolExecutor(max_workers=workers)
        try:
            for result in pool.map(_build_instance, jobs, chunksize=4):
                results.append(result)
                bar.update()
        finally:  # on error, queued instances must not keep writing into the temp dir
            pool.shutdown(wait=True, cancel_futures=True)
    return results


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, sort_keys=True, indent=1) + "\n")


def _info(class_to_split: dict[str, str]) -> dict[str, Any]:
    classes = sorted(class_to_split)
    return {
        "classes": classes,
        "class_to_idx": {c: i for i, c in enumerate(classes)},
        "class_to_sc": {c: category_of(c) for c in classes},
        "class_to_split": dict(class_to_split),
    }


def build_toybox(
    out: Path,
    *,
    seed: int = 0,
    size: int = 128,
    instances_per_category: int = 20,
    val_per_category: int = 6,
    pool_per_category: int = 50,
    test_per_split: int = 6,
    dense_per_split: int = 3,
    pool_test_per_split: int = 4,
    workers: int = 2,
    datasets: tuple[str, ...] = (EVAL_NAME, POOL_NAME),
) -> Path:
    """Build <out>/toybox and/or <out>/toybox_pool (`datasets`); each appears complete or not at all.

    The two are independent: an image depends only on (seed, dataset, instance, folder, index), and
    the pool's instances are drawn to avoid the evaluation instances either way, so building one
    alone gives the same files as building both. The data stage builds only the evaluation world
    (a fifth of the images); the zoo's pretraining stage builds the pool. Returns `out`."""
    if (
        not 0 <= val_per_category <= instances_per_category
        or instances_per_category < 1
        or pool_per_category < 1
    ):
        raise ValueError(
            "need 1 <= instances_per_category, 0 <= val_per_category <= instances_per_category, "
            "1 <= pool_per_category"
        )
    if min(test_per_split, pool_test_per_split) < 1 or dense_per_split < 0 or size < 32 or seed < 0:
        raise ValueError(
            "need test_per_split >= 1, pool_test_per_split >= 1, dense_per_split >= 0, size >= 32, seed >= 0"
        )
    if not datasets or set(datasets) - {EVAL_NAME, POOL_NAME}:
        raise ValueError(f"datasets must be a non-empty subset of ({EVAL_NAME!r}, {POOL_NAME!r}), got {datasets!r}")
    out = Path(out)
    created = not out.exists()
    out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".toybox-build-", dir=out.resolve().parent))
    try:
        evaluation, pool = world_instances(seed, instances_per_category, pool_per_category)
        eval_root, pool_root = tmp / EVAL_NAME, tmp / POOL_NAME
        jobs = []
        if EVAL_NAME in datasets:
            jobs += [
                _Job(eval_root, EVAL_NAME, n, inst, seed, size, test_per_split, dense_per_split)
                for n, inst in evaluation.items()
            ]
        if POOL_NAME in datasets:
            jobs += [
                _Job(pool_root, POOL_NAME, n, inst, seed, size, pool_test_per_split, 0)
                for n, inst in pool.items()
            ]
        for name in datasets:
            (tmp / name).mkdir()
        annos: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in datasets}
        for job, result in zip(jobs, _run(jobs, workers), strict=True):
            annos[job.dataset].update(result)
        eval_split = {
            n: "val" if i % instances_per_category < val_per_category else "test"
            for i, n in enumerate(evaluation)
        }
        infos = {EVAL_NAME: _info(eval_split), POOL_NAME: _info({n: "pool" for n in pool})}
        for name in datasets:
            _write_json(tmp / name / f"{name}_info.json", infos[name])
            _write_json(tmp / name / ANNOS_FILE, annos[name])
        for name in datasets:  # swap in: the old dataset moves into tmp and dies with it
            target = out / name
            if target.exists():
                os.replace(target, tmp / f"{name}.previous")
            os.replace(tmp / name, target)
    except BaseException:
        if created and out.exists() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
