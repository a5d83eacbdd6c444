"""Read a PODS-format dataset (PODS, DF2, Dogs, toybox, your own photos) into plain records.

Layout: <root>/{train,test,test_dense}/<instance>/<image> with masks in <split>_masks/<instance>/
under the same stem, plus `<name>_info.json` (instances) and an optional `<name>_image_annos.json`
(per-image test split). Everything is listed once, eagerly, so errors surface at load time.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prpg.data.images import is_image_file
from prpg.data.names import BadNameError, case_duplicates, contained, name_error

SPLITS = ("train", "test", "test_dense")
INSTANCE_SPLITS = ("val", "test", "pool")  # class_to_split values
TEST_SPLITS = ("in_distribution", "pose", "distractors", "pose_and_distractors")  # annos test_split values
INFO_SUFFIX = "_info.json"
ANNOS_SUFFIX = "_image_annos.json"


class DatasetError(ValueError):
    """A dataset on disk that cannot be read as it is; the message names the file and the fix."""


@dataclass(frozen=True)
class Problem:
    path: Path
    message: str  # what is wrong, then what to do

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Instance:
    name: str  # folder name under train/
    idx: int  # class_to_idx
    category: str  # class_to_sc, e.g. "mug"
    split: str | None  # class_to_split: "val" | "test" | "pool"; None without an info json


@dataclass(frozen=True)
class ImageRecord:
    path: Path
    instance: str  # Instance.name
    split: str  # "train" | "test" | "test_dense" (the folder)
    mask_path: Path | None  # same stem in <split>_masks/<instance>/, any extension
    test_split: str | None  # from the annos file, e.g. "pose"; None when not annotated


def natural_key(name: str) -> tuple:
    """Sort key where digit runs compare as numbers: 9.jpg < 10.jpg. Ties fall back to the raw name."""
    parts = re.split(r"(\d+)", name.lower())
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, naturally sorted; [] when the folder does not exist."""
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.iterdir() if is_image_file(p)), key=lambda p: natural_key(p.name))


def list_folders(folder: Path) -> list[str]:
    """Visible subfolder names, naturally sorted."""
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(names, key=natural_key)


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(f"{path}: cannot be read as JSON ({e}); fix or re-download the file") from e


def find_one(root: Path, suffix: str) -> Path | None:
    """The single `*<suffix>` file at the root, None if absent; several is an error (which one?)."""
    found = sorted(root.glob(f"*{suffix}"))
    if len(found) > 1:
        names = ", ".join(p.name for p in found)
        raise DatasetError(f"{root}: several *{suffix} files ({names}); keep exactly one")
    return found[0] if found else None


def _anno_split(split: str) -> str:
    return "train" if split == "train" else "test"  # PODS annos say "test" for test and test_dense images


def anno_keys(rel_path: str) -> tuple[str, ...]:
    """The keys an image may have in the annos file, in lookup order: relative path,
    <instance>/<file name>, file name, file stem."""
    p = Path(rel_path)
    return rel_path, f"{p.parent.name}/{p.name}", p.name, p.stem


def anno_matches(entry: Any, instance: str, split: str) -> bool:
    """An entry keyed by a bare file name may belong to another instance or split; its own
    `class` / `split` fields (when present) decide."""
    if not isinstance(entry, Mapping):
        return False
    cls, sp = entry.get("class"), entry.get("split")
    return (cls is None or cls == instance) and (sp is None or sp in (split, _anno_split(split)))


def find_anno(annos: Mapping[str, Any], rel_path: str, instance: str, split: str) -> Mapping[str, Any] | None:
    for key in anno_keys(rel_path):
        entry = annos.get(key)
        if entry is not None and anno_matches(entry, instance, split):
            return entry
    return None


def normalize_anno_key(key: str) -> str:
    key = key.replace("\\", "/")
    return key.removeprefix("./")


# ---------------------------------------------------------------- what a dataset is
# One function, `layout_problems`, decides whether a folder is a dataset the pipeline can use: the
# reader raises on what it finds and `prpg data check` reports it, so the two never disagree.

MASK_FOLDERS = tuple(f"{s}_masks" for s in SPLITS)
NO_INFO = (
    f"no *{INFO_SUFFIX}: the pipeline reads the instances and their categories from <name>{INFO_SUFFIX} "
    "(classes, class_to_idx, class_to_sc, class_to_split), <name> being the dataset's name (common.dataset); "
    "add one (a Python caller may instead pass categories={instance: category} or category=... "
    "to load_dataset)"
)


def single_file(root: Path, suffix: str) -> Path | None:
    """The one `*<suffix>` file at the root; None when there is none or several (a layout problem)."""
    found = sorted(root.glob(f"*{suffix}"))
    return found[0] if len(found) == 1 else None


def dataset_name_of(info_path: Path) -> str:
    """A dataset's name is its info json's prefix: pods_info.json -> pods."""
    return info_path.name[: -len(INFO_SUFFIX)]


def outside_links(root: Path) -> dict[Path, Path | None]:
    """Symlinks under root whose target is outside it (link -> target; None for a loop): reading
    through them takes data from elsewhere, and a link to /dev/zero never ends."""
    root_real = root.resolve()
    found: dict[Path, Path | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):  # does not descend into symlinked folders
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                continue
            try:
                target = path.resolve()
            except (OSError, RuntimeError):  # a symlink loop
                found[path] = None
                continue
            if not target.is_relative_to(root_real):
                found[path] = target
    return found


def _try_json(path: Path) -> Any:
    """Parsed JSON, or None when unreadable (the reader and the check each report that their way)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def info_name_problems(info_path: Path, info: Any) -> list[Problem]:
    """Bad instance and category names in a parsed info json (its other contents are checked elsewhere)."""
    if not isinstance(info, dict):
        return []
    problems = []
    classes = info.get("classes")
    classes = [c for c in classes if isinstance(c, str)] if isinstance(classes, list) else []
    for name in classes:
        msg = name_error(name, "instance name")
        if msg:
            problems.append(Problem(info_path, f"'classes': {msg}"))
    for group in case_duplicates(classes):
        problems.append(
            Problem(info_path, f"'classes' lists {' and '.join(map(repr, group))}, which differ only by case "
                    "(one folder on case-insensitive file systems); rename one of them")
        )
    to_sc = info.get("class_to_sc")
    for inst, cat in (to_sc.items() if isinstance(to_sc, dict) else ()):
        msg = name_error(cat, "category") if isinstance(cat, str) and cat else None
        if msg:
            problems.append(Problem(info_path, f"class_to_sc[{inst!r}]: {msg}"))
    return problems


def _annos_key_problems(root: Path, annos_path: Path) -> list[Problem]:
    raw = _try_json(annos_path)
    problems = []
    for key in raw if isinstance(raw, dict) else ():
        try:
            contained(root, normalize_anno_key(key))
        except BadNameError:
            problems.append(
                Problem(annos_path, f"entry {key!r} points outside the dataset; key entries by a path "
                        "relative to the dataset root (test/<instance>/<file>), "
                        "never '..' or an absolute path")
            )
    return problems


def layout_problems(root: str | Path, *, require_info: bool = True) -> list[Problem]:
    """What keeps the folder at `root` from being a dataset the pipeline can use, before any image
    is decoded: the root and train/, exactly one `<name>_info.json` (at most one annos file), every
    name under the naming rule, no case-only duplicate instances, no symlink out of the dataset, no
    annos key outside it. `require_info=False` is for Python callers who pass categories themselves."""
    root = Path(root)
    if not root.is_dir():
        return [Problem(root, "dataset root does not exist or is not a folder; download or build the dataset "
                        "there, or point to the right path")]
    problems = []
    for suffix in (INFO_SUFFIX, ANNOS_SUFFIX):
        found = sorted(root.glob(f"*{suffix}"))
        if len(found) > 1:
            problems.append(
                Problem(root, f"several *{suffix} files ({', '.join(p.name for p in found)}); "
                        "keep exactly one")
            )
    info_path, annos_path = single_file(root, INFO_SUFFIX), single_file(root, ANNOS_SUFFIX)
    if info_path is not None:
        msg = name_error(dataset_name_of(info_path), "dataset name (this file's name before _info.json)")
        if msg:
            problems.append(Problem(info_path, msg))
        problems += info_name_problems(info_path, _try_json(info_path))
    elif require_info and not list(root.glob(f"*{INFO_SUFFIX}")):
        problems.append(Problem(root, NO_INFO))
    if annos_path is not None:
        problems += _annos_key_problems(root, annos_path)

    train_dir = root / "train"
    if not train_dir.is_dir():
        problems.append(Problem(train_dir, "missing; a dataset needs train/<instance>/ folders with the "
                                "reference photos (3 or more) of each instance"))
    for folder in SPLITS + MASK_FOLDERS:
        for name in list_folders(root / folder):
            msg = name_error(name, "instance folder name")
            if msg:
                problems.append(Problem(root / folder / name, msg))
    for group in case_duplicates(list_folders(train_dir)):
        problems.append(
            Problem(train_dir, f"instance folders {' and '.join(map(repr, group))} differ only by case "
                    "(one folder on case-insensitive file systems); rename or merge them")
        )
    for link, target in outside_links(root).items():
        where = f"to {target}, outside the dataset" if target is not None else "in a loop"
        problems.append(Problem(link, f"is a symlink {where}; a dataset must be self-contained: copy the "
                                "file or folder into the dataset instead"))
    return problems


def problems_error(root: Path, problems: list[Problem]) -> DatasetError:
    """One DatasetError listing every problem (load_dataset refuses what `prpg data check` reports)."""
    if len(problems) == 1:
        return DatasetError(str(problems[0]))
    lines = "\n".join(f"  {p}" for p in problems)
    head = f"{root}: {len(problems)} problems (`prpg data check {root}` lists them all)"
    return DatasetError(f"{head}:\n{lines}")


def check_dataset_name(root: str | Path, dataset: str, *, where: str = "common.dataset",
                       missing_ok: bool = False) -> None:
    """The pairing of a dataset's name and its folder made explicit: the dataset at `root` is named by
    its info json (`<name>_info.json`), and `dataset` (e.g. params common.dataset) must be that name.
    DatasetError naming both otherwise. `missing_ok`: no root or no info json yet is fine (not built)."""
    root = Path(root)
    infos = sorted(root.glob(f"*{INFO_SUFFIX}")) if root.is_dir() else []
    if not infos:
        if missing_ok:
            return
        raise DatasetError(f"{root}: {NO_INFO}")
    if len(infos) > 1:
        raise DatasetError(f"{root}: several *{INFO_SUFFIX} files ({', '.join(p.name for p in infos)}); "
                           "keep exactly one: its prefix is the dataset's name")
    name = dataset_name_of(infos[0])
    if name != dataset:
        raise DatasetError(
            f"{where} is {dataset!r} but the dataset at {root} is named {name!r} (its info json is "
            f"{infos[0]}); a dataset's name is its info json's prefix: set {where}: {name}, or rename the "
            f"file to {dataset}{INFO_SUFFIX} if the dataset really is {dataset!r}"
        )


@dataclass(frozen=True)
class Dataset:
    root: Path
    name: str
    instances: tuple[Instance, ...]  # sorted by idx
    records: Mapping[str, tuple[ImageRecord, ...]]  # split -> records, instance order then natural order
    annos: Mapping[str, Any]  # raw annos entries by normalized key; {} without an annos file
    has_test_dense: bool  # PODS: a test_dense/ folder; DF2/Dogs: dense eval uses masked test images

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(sorted({i.category for i in self.instances}))

    def instance(self, name: str) -> Instance:
        for inst in self.instances:
            if inst.name == name:
                return inst
        raise DatasetError(
            f"{self.root}: no instance {name!r}; known: {_preview([i.name for i in self.instances])}"
        )

    def images(self, split: str, instance: str | None = None) -> list[ImageRecord]:
        if split not in SPLITS:
            raise DatasetError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        if instance is None:
            return list(self.records[split])
        self.instance(instance)  # unknown name -> clear error rather than a silent []
        return [r for r in self.records[split] if r.instance == instance]

    def dense_images(self, instance: str | None = None) -> list[ImageRecord]:
        """Images for segmentation / detection: PODS's test_dense, else (DF2, Dogs) masked test images."""
        if self.has_test_dense:
            return self.images("test_dense", instance)
        return [r for r in self.images("test", instance) if r.mask_path is not None]

    def instances_in(self, category: str | None = None, split: str | None = None) -> list[Instance]:
        if category is not None and category not in self.categories:
            raise DatasetError(f"{self.root}: no category {category!r}; known: {', '.join(self.categories)}")
        if split is not None and split not in INSTANCE_SPLITS:
            raise DatasetError(f"unknown instance split {split!r}; use one of {', '.join(INSTANCE_SPLITS)}")
        return [
            i
            for i in self.instances
            if (category is None or i.category == category) and (split is None or i.split == split)
        ]

    def annotation(self, record: ImageRecord) -> Mapping[str, Any] | None:
        """The record's raw annos entry (e.g. toybox `caption`, `scene`), None if not annotated."""
        rel = record.path.relative_to(self.root).as_posix()
        return find_anno(self.annos, rel, record.instance, record.split)


def _preview(names: list[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _info_map(info: dict, key: str, info_path: Path, default: dict) -> dict:
    value = info.get(key, default)
    if not isinstance(value, dict):
        raise DatasetError(f"{info_path}: {key!r} must map instance names to values; see the PODS format")
    return value


def _instances_from_info(
    info_path: Path, categories: Mapping[str, str] | None, category: str | None
) -> list[Instance]:
    info = read_json(info_path)
    if not isinstance(info, dict) or not isinstance(info.get("classes"), list):
        raise DatasetError(f"{info_path}: needs a 'classes' list of instance names; see the PODS format")
    classes = info["classes"]
    if not all(isinstance(c, str) and c for c in classes) or len(set(classes)) != len(classes):
        raise DatasetError(
            f"{info_path}: 'classes' must be distinct, non-empty instance names (folder names)"
        )
    # The reader needs only `classes`; the other maps fall back (position, arguments, None).
    # `check_dataset` is the strict gate that wants all four keys.
    to_idx = _info_map(info, "class_to_idx", info_path, {c: k for k, c in enumerate(classes)})
    to_sc = _info_map(info, "class_to_sc", info_path, {})
    to_split = _info_map(info, "class_to_split", info_path, {})
    instances = []
    for name in classes:
        if not isinstance(to_idx.get(name), int) or isinstance(to_idx.get(name), bool):
            raise DatasetError(f"{info_path}: class_to_idx has no integer for {name!r}; add it")
        cat = to_sc.get(name) or _argument_category(name, categories, category)
        if not cat:
            raise DatasetError(
                f"{info_path}: class_to_sc has no category for {name!r}; "
                "add it, or pass categories= / category= to load_dataset"
            )
        split = to_split.get(name)
        if split is not None and split not in INSTANCE_SPLITS:
            raise DatasetError(
                f"{info_path}: class_to_split[{name!r}] is {split!r}; use one of {', '.join(INSTANCE_SPLITS)}"
            )
        instances.append(Instance(name, to_idx[name], cat, split))
    idxs = [i.idx for i in instances]
    if len(set(idxs)) != len(idxs):
        raise DatasetError(f"{info_path}: class_to_idx gives two instances the same index; make them unique")
    return instances


def _instances_from_folders(
    root: Path, categories: Mapping[str, str] | None, category: str | None
) -> list[Instance]:
    names = list_folders(root / "train")
    if not names:
        raise DatasetError(
            f"{root / 'train'}: no instance folders; put each instance's photos in train/<instance>/"
        )
    missing = [n for n in names if not ((categories or {}).get(n) or category)]
    if missing:
        raise DatasetError(
            f"{root}: no *{INFO_SUFFIX} and no category for {_preview(missing)}; add a <name>{INFO_SUFFIX} "
            "(classes, class_to_idx, class_to_sc, class_to_split) or pass categories={instance: category} "
            "or category=... to load_dataset"
        )
    return [Instance(n, k, _argument_category(n, categories, category), None) for k, n in enumerate(names)]


def _argument_category(name: str, categories: Mapping[str, str] | None, category: str | None) -> str | None:
    """The category the caller passed for `name` (None if none), under the naming rule like class_to_sc's."""
    cat = (categories or {}).get(name) or category
    msg = name_error(cat, "category") if cat else None
    if msg:
        raise DatasetError(f"load_dataset(categories= / category=) for {name!r}: {msg}")
    return cat


def _pair_masks(mask_dir: Path) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for p in list_images(mask_dir):
        if p.stem in by_stem:
            raise DatasetError(f"{p}: two masks with stem {p.stem!r} ({by_stem[p.stem].name}); keep one")
        by_stem[p.stem] = p
    return by_stem


def load_dataset(
    root: str | Path, *, categories: dict[str, str] | None = None, category: str | None = None
) -> Dataset:
    """Read a PODS-format dataset. Instances come from `<name>_info.json`; without one, from the
    train/ folder names, with categories from `categories` (per instance) or `category` (all).
    Masks pair with images by stem (never by list order), so extensions and sort orders may differ."""
    root = Path(root)
    # The same gate as `prpg data check`: whatever it reports about the layout and names, we refuse.
    problems = layout_problems(root, require_info=not (categories or category))
    if problems:
        raise problems_error(root, problems)
    info_path = find_one(root, INFO_SUFFIX)
    if info_path is not None:
        name = info_path.name[: -len(INFO_SUFFIX)]
        instances = _instances_from_info(info_path, categories, category)
    else:
        name = root.name
        instances = _instances_from_folders(root, categories, category)
    instances.sort(key=lambda i: i.idx)
    for inst in instances:
        if not (root / "train" / inst.name).is_dir():
            raise DatasetError(
                f"{root / 'train' / inst.name}: missing, but {inst.name!r} is in {info_path}; "
                "add its photos or remove it from the info json (run `prpg data check`)"
            )

    annos: dict[str, Any] = {}
    annos_path = find_one(root, ANNOS_SUFFIX)
    if annos_path is not None:
        raw = read_json(annos_path)
        if not isinstance(raw, dict):
            raise DatasetError(f"{annos_path}: must map image ids to entries; see the PODS format")
        annos = {normalize_anno_key(k): v for k, v in raw.items()}

    records: dict[str, tuple[ImageRecord, ...]] = {}
    for split in SPLITS:
        split_records = []
        for inst in instances:
            masks = _pair_masks(root / f"{split}_masks" / inst.name)
            for path in list_images(root / split / inst.name):
                entry = find_anno(annos, path.relative_to(root).as_posix(), inst.name, split)
                test_split = entry.get("test_split") if entry is not None else None
                split_records.append(ImageRecord(path, inst.name, split, masks.get(path.stem), test_split))
        records[split] = tuple(split_records)
    return Dataset(root, name, tuple(instances), records, annos, (root / "test_dense").is_dir())
