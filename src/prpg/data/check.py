"""Validate a PODS-format dataset and report every problem at once, each with what to do about it.

`load_dataset` stops at the first thing it cannot read; this is the strict gate run before a
pipeline spends hours on a dataset: it decodes every file, pairs every mask, and cross-checks the
json files, so one run lists everything a person has to fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

from prpg.data.dataset import (
    ANNOS_SUFFIX,
    INFO_SUFFIX,
    INSTANCE_SPLITS,
    SPLITS,
    TEST_SPLITS,
    Problem,
    anno_keys,
    anno_matches,
    layout_problems,
    list_folders,
    list_images,
    normalize_anno_key,
    outside_links,
    single_file,
)
from prpg.data.images import load_mask

INFO_KEYS = ("class_to_idx", "class_to_sc", "class_to_split")
ROTATING_ORIENTATIONS = (5, 6, 7, 8)  # EXIF orientations that swap width and height


def format_report(problems: list[Problem]) -> str:
    if not problems:
        return "no problems found"
    lines = [str(p) for p in problems]
    return "\n".join(lines) + f"\n{len(problems)} problem(s)"


@dataclass(frozen=True)
class _Decoded:
    size: tuple[int, int] | None  # (W, H) after EXIF orientation; None when unreadable
    error: str | None
    sha256: str | None = None
    empty: bool = False  # masks only


def _describe(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):  # its text holds a memory address: not reproducible
        return "not an image format Pillow can read"
    return f"{type(e).__name__}: {e}"


def _decode_image(path: Path) -> _Decoded:
    try:
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a full decode: Image.open alone only reads the header
            w, h = img.size
            if img.getexif().get(ExifTags.Base.Orientation, 1) in ROTATING_ORIENTATIONS:
                w, h = h, w
        return _Decoded((w, h), None, hashlib.sha256(data).hexdigest())
    except Exception as e:  # noqa: BLE001 -- any decoder failure is the same problem: a bad file
        return _Decoded(None, _describe(e))


def _decode_mask(path: Path) -> _Decoded:
    try:
        mask = load_mask(path)
        return _Decoded((mask.shape[1], mask.shape[0]), None, empty=not mask.any())
    except Exception as e:  # noqa: BLE001 -- as above
        return _Decoded(None, _describe(e))


def _decode_all(images: list[Path], masks: list[Path]) -> tuple[dict[Path, _Decoded], dict[Path, _Decoded]]:
    # Decoding is mostly file reads and C code that releases the GIL, so threads overlap well.
    # A truncated file must fail here, not be padded with grey: the flag is global, so restore it.
    saved = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = False
    try:
        with ThreadPoolExecutor(max_workers=min(16, 4 * (os.cpu_count() or 1))) as pool:
            decoded_images = dict(zip(images, pool.map(_decode_image, images)))
            decoded_masks = dict(zip(masks, pool.map(_decode_mask, masks)))
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = saved
    return decoded_images, decoded_masks


def _load_json(path: Path, problems: list[Problem]) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        problems.append(Problem(path, f"cannot be read as JSON ({e}); fix the syntax or re-download it"))
        return None


def _names(items: list[str] | set[str], n: int = 8) -> str:
    items = sorted(items, key=str)
    return ", ".join(repr(i) for i in items[:n]) + (f", ... ({len(items)} in all)" if len(items) > n else "")


def _check_info(path: Path, problems: list[Problem]) -> list[str] | None:
    """Consistency of `<name>_info.json`; returns its class names when they are usable."""
    info = _load_json(path, problems)
    if info is None:
        return None
    if not isinstance(info, dict):
        problems.append(Problem(path, "must be a JSON object with classes, " + ", ".join(INFO_KEYS)))
        return None
    classes = info.get("classes")
    if not isinstance(classes, list) or not all(isinstance(c, str) and c for c in classes):
        problems.append(
            Problem(path, "'classes' must be a list of instance names (the train/ folder names); fix it")
        )
        return None
    dups = {c for c in classes if classes.count(c) > 1}
    if dups:
        problems.append(
            Problem(path, f"'classes' lists {_names(dups)} more than once; list each instance once")
        )
    for key in INFO_KEYS:
        mapping = info.get(key)
        if not isinstance(mapping, dict):
            problems.append(
                Problem(path, f"missing or malformed {key!r}: add an object mapping every class to its value")
            )
            continue
        missing, extra = set(classes) - set(mapping), set(mapping) - set(classes)
        if missing:
            problems.append(Problem(path, f"{key!r} has no entry for {_names(missing)}; add them"))
        if extra:
            problems.append(
                Problem(
                    path,
                    f"{key!r} has entries for {_names(extra)}, which are not in 'classes'; "
                    "add them to 'classes' or remove them",
                )
            )
    to_idx = info.get("class_to_idx")
    if isinstance(to_idx, dict):
        bad = {k for k, v in to_idx.items() if not isinstance(v, int) or isinstance(v, bool)}
        if bad:
            problems.append(Problem(path, f"class_to_idx values must be integers; fix {_names(bad)}"))
        ints = [v for v in to_idx.values() if isinstance(v, int)]
        if len(set(ints)) != len(ints):
            shared = {v for v in ints if ints.count(v) > 1}
            problems.append(
                Problem(
                    path,
                    f"class_to_idx gives several instances the index {_names(shared)}; "
                    "make the indices unique",
                )
            )
    to_sc = info.get("class_to_sc")
    if isinstance(to_sc, dict):
        bad = {k for k, v in to_sc.items() if not isinstance(v, str) or not v}
        if bad:
            problems.append(Problem(path, f"class_to_sc values must be category names; fix {_names(bad)}"))
    to_split = info.get("class_to_split")
    if isinstance(to_split, dict):
        bad = {k for k, v in to_split.items() if v not in INSTANCE_SPLITS}
        if bad:
            problems.append(
                Problem(
                    path,
                    f"class_to_split has values outside {', '.join(INSTANCE_SPLITS)} for "
                    f"{_names(bad)}; use one of those",
                )
            )
    return list(dict.fromkeys(classes))


def _check_stems(paths: list[Path], what: str, problems: list[Problem]) -> dict[str, Path]:
    by_stem: dict[str, Path] = {}
    for p in paths:
        if p.stem in by_stem:
            problems.append(
                Problem(
                    p,
                    f"has the same stem as {by_stem[p.stem].name}, so its {what} is ambiguous; "
                    "rename or delete one of them",
                )
            )
        else:
            by_stem[p.stem] = p
    return by_stem


def _check_annos(
    path: Path, images: dict[Path, tuple[str, str]], root: Path, known: set[str], problems: list[Problem]
) -> None:
    raw = _load_json(path, problems)
    if raw is None:
        return
    if not isinstance(raw, dict):
        problems.append(Problem(path, "must be a JSON object mapping image ids to entries; fix it"))
        return
    # Which (instance, split) each possible key can refer to, for the "points to no image" check.
    targets: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for img, (inst, split) in images.items():
        for key in set(anno_keys(img.relative_to(root).as_posix())):
            targets[key].append((inst, split))
    unmatched: list[Problem] = []
    for key, entry in raw.items():
        if not isinstance(entry, dict):
            problems.append(
                Problem(path, f"entry {key!r} must be an object with class / split / test_split; fix it")
            )
            continue
        test_split = entry.get("test_split")
        if test_split is not None and test_split not in TEST_SPLITS:
            problems.append(
                Problem(
                    path,
                    f"entry {key!r} has unknown test_split {test_split!r}; "
                    f"use one of {', '.join(TEST_SPLITS)}",
                )
            )
        if entry.get("split") not in (None, "train", "test", "test_dense"):
            problems.append(
                Problem(path, f"entry {key!r} has split {entry.get('split')!r}; use 'train' or 'test'")
            )
        cls = entry.get("class")
        if cls is not None and cls not in known:
            problems.append(
                Problem(
                    path,
                    f"entry {key!r} names class {cls!r}, which is not an instance; "
                    "fix the class or remove the entry",
                )
            )
        if not any(
            anno_matches(entry, inst, split) for inst, split in targets.get(normalize_anno_key(key), [])
        ):
            unmatched.append(
                Problem(
                    path,
                    f"entry {key!r} points to no image in the dataset; restore the image or remove the entry",
                )
            )
    if unmatched and len(unmatched) == len(raw):
        # Not one key matches: the ids follow another scheme, and listing every entry would bury the report.
        problems.append(
            Problem(
                path,
                f"none of its {len(raw)} entries matches an image (keys look like {next(iter(raw))!r}); key "
                "entries by relative path (test/<instance>/<file>), <instance>/<file>, file name or stem",
            )
        )
    else:
        problems += unmatched


def _check_duplicates(
    decoded: dict[Path, _Decoded], owner: dict[Path, tuple[str, str]], problems: list[Problem]
) -> None:
    groups: dict[str, list[Path]] = defaultdict(list)
    for p, d in decoded.items():
        if d.sha256 is not None:
            groups[d.sha256].append(p)
    for paths in groups.values():
        if len(paths) < 2:
            continue
        paths.sort(key=lambda p: (owner[p][1] != "train", str(p)))  # report the copies, not the train photo
        instances = {owner[p][0] for p in paths}
        has_train = any(owner[p][1] == "train" for p in paths)
        # test vs test_dense copies within one instance may be by design; anything touching train, or
        # spanning instances, corrupts the evaluation.
        if not has_train and len(instances) == 1:
            continue
        why = (
            "the same photo under two instances gives it contradictory labels"
            if len(instances) > 1
            else "a train photo repeated (or reused as a test photo) inflates the scores"
        )
        for p in paths[1:]:
            problems.append(Problem(p, f"is byte-identical to {paths[0]}; {why}; delete one copy"))


def _through(path: Path, links: set[Path]) -> bool:
    """Whether `path` is one of `links` or lies in a symlinked folder among them."""
    return path in links or any(parent in links for parent in path.parents)


def check_dataset(root: str | Path, *, min_train: int = 3, require_train_masks: bool = True) -> list[Problem]:
    """Every problem in the dataset at `root`, sorted by path then message; [] means ready to use."""
    root = Path(root)
    # The layout and names: the very function load_dataset refuses a dataset by (one definition).
    problems = layout_problems(root)
    if not root.is_dir():
        return problems
    info_path, annos_path = single_file(root, INFO_SUFFIX), single_file(root, ANNOS_SUFFIX)
    classes = _check_info(info_path, problems) if info_path is not None else None

    train_dir = root / "train"
    folders = list_folders(train_dir)
    if classes is not None:
        for name in classes:
            if name not in folders:
                problems.append(
                    Problem(
                        train_dir / name,
                        f"missing, but {name!r} is in {info_path.name}; add its "
                        f"train photos or remove it from {info_path.name}",
                    )
                )
        for name in folders:
            if name not in classes:
                problems.append(
                    Problem(
                        train_dir / name,
                        f"not listed in {info_path.name}; add it to classes "
                        "(and class_to_idx/sc/split) or remove the folder",
                    )
                )
    instances = list(dict.fromkeys(folders + (classes or [])))
    for split in SPLITS[1:]:
        for name in list_folders(root / split):
            if name not in instances:
                problems.append(
                    Problem(
                        root / split / name,
                        f"has no matching train/{name} folder; add the "
                        "instance's train photos or remove this folder",
                    )
                )

    owner: dict[Path, tuple[str, str]] = {}  # image -> (instance, split)
    pairs: list[tuple[Path, Path]] = []
    all_masks: list[Path] = []
    for inst in instances:
        for split in SPLITS:
            img_dir, mask_dir = root / split / inst, root / f"{split}_masks" / inst
            images = list_images(img_dir)
            masks = list_images(mask_dir)
            all_masks += masks
            owner.update({p: (inst, split) for p in images})
            if split == "train" and (train_dir / inst).is_dir() and len(images) < min_train:
                problems.append(
                    Problem(
                        img_dir,
                        f"has {len(images)} train image(s), fewer than {min_train}; add "
                        "photos of the instance (or lower min_train)",
                    )
                )
            need_masks = (
                (split == "train" and require_train_masks)
                or (split == "test_dense" and images)
                or (split == "test" and mask_dir.is_dir())
            )
            image_by_stem = _check_stems(images, "mask", problems)
            mask_by_stem = _check_stems(masks, "image", problems)
            for stem, img in image_by_stem.items():
                mask = mask_by_stem.get(stem)
                if mask is not None:
                    pairs.append((img, mask))
                elif need_masks:
                    problems.append(
                        Problem(
                            img,
                            f"has no mask; add {mask_dir}/{stem}.png (foreground > 0, same "
                            "size as the image)",
                        )
                    )
            for stem, mask in mask_by_stem.items():
                if stem not in image_by_stem:
                    problems.append(
                        Problem(
                            mask,
                            f"has no image with stem {stem!r} in {img_dir}; rename it to "
                            "match its image or delete it",
                        )
                    )

    # Never read through a symlink out of the dataset (reported above): it may be /dev/zero.
    outside = set(outside_links(root))
    owner = {p: o for p, o in owner.items() if not _through(p, outside)}
    all_masks = [m for m in all_masks if not _through(m, outside)]
    kept_masks = set(all_masks)
    pairs = [(i, m) for i, m in pairs if i in owner and m in kept_masks]
    decoded_images, decoded_masks = _decode_all(list(owner), all_masks)
    for p, d in {**decoded_images, **decoded_masks}.items():
        if d.error is not None:
            problems.append(
                Problem(
                    p,
                    f"cannot be decoded ({d.error}); the file is corrupt or truncated: "
                    "re-download or re-export it, or delete it",
                )
            )
    for img, mask in pairs:
        di, dm = decoded_images[img], decoded_masks[mask]
        if dm.size is not None and dm.empty:
            problems.append(
                Problem(mask, "is empty (no pixel > 0); redraw the mask or remove the image and mask")
            )
        if di.size is not None and dm.size is not None and di.size != dm.size:
            problems.append(
                Problem(
                    mask,
                    f"is {dm.size[0]}x{dm.size[1]} but its image {img.name} is "
                    f"{di.size[0]}x{di.size[1]} (after EXIF rotation); re-export the mask at "
                    "the image's size and orientation",
                )
            )
    _check_duplicates(decoded_images, owner, problems)
    if annos_path is not None:
        _check_annos(annos_path, owner, root, set(instances), problems)
    return sorted(problems, key=lambda p: (str(p.path), p.message))
