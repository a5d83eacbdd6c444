"""A PODS-format stand-in for a paper dataset, rendered by toybox at a real photo size.

A rehearsal runs a paper experiment's exact pipeline on it: the folders, file names, info and annos
JSONs are those of the dataset the experiment names (`data/pods/pods_info.json`, ...), with the
dataset's own category words (Dogs: dog, DF2: shirt) and instance names of its style (DF2's numeric
`828_1_2`, which YAML and Hydra read as numbers unless quoted). Only the pictures are toybox's.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prpg.data.dataset import ANNOS_SUFFIX, INFO_SUFFIX

SPLIT_FOLDERS = ("train", "train_masks", "test", "test_masks", "test_dense", "test_dense_masks")


@dataclass(frozen=True)
class Style:
    categories: dict[str, str]  # toybox category -> the dataset's category word
    name: str  # instance name pattern: {category} (the dataset's word) and {k} (0, 1, ...)


STYLES = {
    "pods": Style({c: c for c in ("mug", "bottle", "screwdriver", "shoe", "tote")}, "{category}_rehearsal_{k:02d}"),
    "dogs": Style({"shoe": "dog"}, "dog{k}"),
    "df2": Style({"tote": "shirt"}, "8{k:02d}_1_2"),
}


def build_world(dest: str | Path, dataset: str, *, size: int = 512, per_category: int = 1, seed: int = 0,
                test_per_split: int = 6, dense_per_split: int = 3, workers: int = 2) -> Path:
    """Write dest (e.g. data/pods) as `dataset` in the PODS layout, `per_category` test instances per
    category, images size x size, test_per_split / dense_per_split images per instance in each of PODS's
    4 test splits (PODS: 24 test, 12 test_dense); all at once or not at all. Returns dest."""
    from prpg.toybox import build_toybox

    if dataset not in STYLES:
        raise ValueError(f"no rehearsal world for dataset {dataset!r} (known: {', '.join(STYLES)}); "
                         "pass a PODS-format folder of your own with --data-root")
    if per_category < 1 or size < 64:
        raise ValueError(f"need per_category >= 1 and size >= 64, got {per_category} and {size}")
    dest = Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists; remove it or pass another folder")
    style = STYLES[dataset]
    with tempfile.TemporaryDirectory(prefix=".world-", dir=dest.parent if dest.parent.exists() else None) as tmp:
        build_toybox(Path(tmp), seed=seed, size=size, instances_per_category=per_category, val_per_category=0,
                     test_per_split=test_per_split, dense_per_split=dense_per_split, workers=workers,
                     datasets=("toybox",))
        src = Path(tmp) / "toybox"
        info = json.loads((src / f"toybox{INFO_SUFFIX}").read_text())
        renamed: dict[str, tuple[str, str]] = {}  # toybox name -> (new name, category word)
        for toy_category, word in style.categories.items():
            names = sorted(n for n, c in info["class_to_sc"].items() if c == toy_category)
            for k, old in enumerate(names):
                renamed[old] = (style.name.format(category=word, k=k), word)
        out = Path(tmp) / "world"
        for folder in SPLIT_FOLDERS:
            for old, (new, _) in renamed.items():
                if (src / folder / old).is_dir():
                    shutil.copytree(src / folder / old, out / folder / new)
        names = sorted(new for new, _ in renamed.values())
        (out / f"{dataset}{INFO_SUFFIX}").write_text(json.dumps({
            "classes": names,
            "class_to_idx": {n: k for k, n in enumerate(names)},
            "class_to_sc": {new: word for new, word in renamed.values()},
            "class_to_split": {n: "test" for n in names},
        }, indent=1))
        annos = json.loads((src / f"toybox{ANNOS_SUFFIX}").read_text())
        moved = {}
        for path, entry in annos.items():
            split, old, file = path.split("/", 2)
            if old in renamed:
                moved[f"{split}/{renamed[old][0]}/{file}"] = {**entry, "class": renamed[old][0]}
        (out / f"{dataset}{ANNOS_SUFFIX}").write_text(json.dumps(moved, indent=1))
        dest.parent.mkdir(parents=True, exist_ok=True)
        out.rename(dest)
    return dest
