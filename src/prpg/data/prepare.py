"""The data stage: build (toybox) or verify (real data) the dataset, then summarize it.

Kept apart from the reader so that `prpg.data` stays a plain PODS-format library and this module is
the only place that knows about params groups and the pipeline's output folder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from prpg.atomic import write_text_atomic
from prpg.data.check import check_dataset, format_report
from prpg.data.dataset import Dataset, DatasetError, load_dataset
from prpg.params import CommonParams, DataParams
from prpg.paths import ensure_not_under_data

DATA_OUT = Path("outputs/data")  # the data stage's DVC out; toybox/ and toybox_pool/ live inside
TEST_SPLITS = ("in_distribution", "pose", "distractors", "pose_and_distractors")


def prepare_dataset(common: CommonParams, data: DataParams, out: Path = DATA_OUT) -> Path:
    """Return the dataset root, building toybox into `out` or checking a real dataset in place."""
    ensure_not_under_data(out)
    if common.dataset == "toybox":
        from prpg.toybox import build_toybox  # heavy-ish import only when needed

        root = out / "toybox"
        if not root.exists():  # DVC removes outs before running; in Jupyter we reuse a built world
            build_toybox(out, seed=common.seed, **data.toybox.model_dump())
        return root
    root = Path(common.data_root)
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
