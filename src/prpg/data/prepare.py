"""The data stage: build (toybox) or verify (real data) the dataset, then summarize it.

Kept apart from the reader so that `prpg.data` stays a plain PODS-format library and this module is
the only place that knows about params groups and the pipeline's output folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from prpg.core.atomic import write_text_atomic
from prpg.data.check import check_dataset, format_report
from prpg.data.dataset import Dataset, DatasetError, check_dataset_name, load_dataset
from prpg.core.params import CommonParams, DataParams
from prpg.core.paths import ensure_not_under_data

DATA_OUT = Path("outputs/data")  # the data stage's DVC out; the toybox evaluation world lives inside
# The toybox pretraining pool: scratch of the frozen zoo stage, which rebuilds it first
# thing. Not a DVC out on purpose: a frozen stage whose cached out is missing (any fresh clone) makes
# `dvc repro` fail, and the pool (~14k images) is only needed to retrain the shipped zoo.
POOL_OUT = Path("outputs/pool")
TEST_SPLITS = ("in_distribution", "pose", "distractors", "pose_and_distractors")


def prepare_dataset(common: CommonParams, data: DataParams, out: Path = DATA_OUT) -> Path:
    """Return the dataset root, building toybox into `out` or checking a real dataset in place."""
    ensure_not_under_data(out)
    if common.dataset == "toybox":
        from prpg.toybox import build_toybox  # heavy-ish import only when needed

        root = out / "toybox"
        if not root.exists():  # DVC removes outs before running; in Jupyter we reuse a built world
            build_toybox(out, seed=common.seed, **data.toybox.model_dump(), datasets=("toybox",))
        check_dataset_name(root, common.dataset)
        return root
    root = Path(common.data_root)
    check_dataset_name(root, common.dataset)  # later stages read <data_root>/<dataset>_info.json
    problems = check_dataset(root, min_train=data.min_train_images, require_train_masks=data.require_train_masks)
    if problems:
        raise DatasetError(
            f"{root} has {len(problems)} problem(s); fix them (see `prpg data check {root}`):\n" + format_report(problems)
        )
    # The stage must leave its out; for real data it records what was verified.
    write_text_atomic(out / "check.txt", f"{root}: ok ({len(load_dataset(root).instances)} instances)\n")
    return root


def summarize(ds: Dataset) -> dict[str, Any]:
    """Counts per split, category and PODS test split, as numeric leaves (a DVC metrics file)."""
    by_cat: dict[str, dict[str, int]] = {}
    for cat in ds.categories:
        insts = ds.instances_in(category=cat)
        by_cat[cat] = {
            "instances": len(insts),
            **{split: sum(len(ds.images(split, i.name)) for i in insts) for split in ("train", "test", "test_dense")},
        }
    splits = Counter(r.test_split for r in ds.images("test") if r.test_split)
    return {
        "instances": {
            "total": len(ds.instances),
            **{s: len(ds.instances_in(split=s)) for s in sorted({i.split for i in ds.instances})},
        },
        "images": {split: len(ds.images(split)) for split in ("train", "test", "test_dense")},
        "masks": {split: sum(r.mask_path is not None for r in ds.images(split)) for split in ("train", "test", "test_dense")},
        "per_category": by_cat,
        "test_splits": {s: splits.get(s, 0) for s in TEST_SPLITS},
    }


def prepare_pool(common: CommonParams, data: DataParams, out: Path = POOL_OUT) -> Path:
    """(Re)build the toybox pretraining pool into out/toybox_pool; returns its root."""
    from prpg.toybox import POOL_NAME, build_toybox

    ensure_not_under_data(out)
    build_toybox(out, seed=common.seed, **data.toybox.model_dump(), datasets=(POOL_NAME,))
    return out / POOL_NAME


def load_pool(data: DataParams, out: Path = POOL_OUT) -> Dataset:
    """The pool, checked against data.toybox: it is scratch, so it may be missing or stale."""
    from prpg.toybox import POOL_NAME

    root = out / POOL_NAME
    fix = "build it with `prpg data build-pool` (the zoo stage does this first)"
    if not root.is_dir():
        raise DatasetError(f"{root}: no toybox pool; {fix}")
    pool = load_dataset(root)
    want = data.toybox.pool_per_category
    have = {c: len(pool.instances_in(category=c)) for c in pool.categories}
    if set(have.values()) != {want}:
        raise DatasetError(f"{root}: {have} instances per category, params say data.toybox.pool_per_category={want}; {fix}")
    return pool

