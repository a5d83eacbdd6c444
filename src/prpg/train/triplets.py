"""Triplet sampling for the contrastive stage (docs/protocol.md §1.6, reference contrastive/make_triplets.py).

1. The synthetic positives (any mix of sources: DreamBooth, masked DreamBooth, Cut/Paste, or the real
   images themselves for the "augmented real" baseline) are shuffled with the seed and the first
   `num_synthetic` (train.num_synthetic) are kept; with none, the real images stand in, with a warning.
2. Each of `num_triplets` (train.num_triplets) triplets draws, uniformly and with replacement:
   a negative from all negatives, an anchor from the `ref_type` pool (real | synthetic | both) and a
   positive from the kept synthetic list; then (positive, negative) is put in random order and
   `label` says where the positive is: 0 = left, 1 = right.

The reference draws with Python's `random`; we use a seeded numpy Generator, so the same seed gives
the same triplets, not the reference's triplets. The CSV has the reference's columns
id,label,ref_path,left_path,right_path plus positive_source (which source the positive came from).
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from prpg.core.atomic import write_text_atomic
from prpg.core.configs import RefType

REAL_SOURCE = "real"  # positive_source of real images used as positives (fallback or baseline)
COLUMNS = ("id", "label", "ref_path", "left_path", "right_path", "positive_source")


@dataclass(frozen=True)
class Triplet:
    id: int
    label: int  # 0: the positive is left_path, 1: right_path
    ref_path: str
    left_path: str
    right_path: str
    positive_source: str

    @property
    def positive_path(self) -> str:
        return self.left_path if self.label == 0 else self.right_path

    @property
    def negative_path(self) -> str:
        return self.right_path if self.label == 0 else self.left_path


def _paths(items: Iterable) -> list[str]:
    return [Path(p).as_posix() for p in items]


def positive_sets(sources: Iterable[str], instance: str, real: Sequence) -> dict[str, list]:
    """The positives of `instance` from each source, read from where that source's stage writes them
    (prpg.core.params.POSITIVE_SOURCES); the "real" source is the real train images `real` themselves."""
    from prpg.core.params import POSITIVE_SOURCES
    from prpg.data.dataset import list_images

    sets = {s: list(real) if s == REAL_SOURCE else list_images(Path(POSITIVE_SOURCES[s].format(instance=instance)))
            for s in sources}
    if "oracle" in sets and not sets["oracle"]:  # asked for by name: no silent fallback to the real images
        raise ValueError(f"train.sources has oracle but {POSITIVE_SOURCES['oracle'].format(instance=instance)} holds "
                         "no images: set synthesize.oracle.n > 0 (toybox only) and run the synthesize stage")
    return sets


def negative_set(choice: str, category: str) -> list[Path]:
    """The negatives of `category` that train.negatives names (prpg.core.params.NEGATIVE_SOURCES); none is an
    error naming the params key that makes them."""
    from prpg.core.params import NEGATIVE_SOURCES
    from prpg.data.dataset import list_images

    if choice not in NEGATIVE_SOURCES:
        raise ValueError(f"train.negatives = {choice!r}: use one of {', '.join(NEGATIVE_SOURCES)}")
    folder = NEGATIVE_SOURCES[choice].format(category=category)
    images = list_images(Path(folder))
    if not images:
        key = "priors.oracle_negatives.n > 0 (toybox only)" if choice == "oracle" else "priors.negatives.n >= 1"
        raise ValueError(f"train.negatives = {choice}: {folder} holds no images; set {key} and run the priors stage")
    return images


def select_positives(synthetic: Mapping[str, Sequence] | Sequence, real: Sequence, num_synthetic: int | None,
                     rng: np.random.Generator) -> list[tuple[str, str]]:
    """(source, path) of the kept positives: all sources pooled (sources in sorted order, paths as given,
    so the result does not depend on dict order), shuffled, first `num_synthetic` kept."""
    if not isinstance(synthetic, Mapping):
        synthetic = {"synthetic": synthetic}
    pool = [(src, p) for src in sorted(synthetic) for p in _paths(synthetic[src])]
    order = rng.permutation(len(pool))
    kept = [pool[i] for i in order[: num_synthetic if num_synthetic is not None else len(pool)]]
    if not kept:
        sources = ", ".join(sorted(synthetic)) or "none"
        warnings.warn(f"no synthetic positives (sources: {sources}); using the {len(real)} real images as "
                      "positives instead (the reference's fallback)", stacklevel=3)
        kept = [(REAL_SOURCE, p) for p in _paths(real)]
    elif num_synthetic is not None and len(kept) < num_synthetic:
        warnings.warn(f"only {len(kept)} synthetic positives, fewer than num_synthetic={num_synthetic}",
                      stacklevel=3)
    return kept


def make_triplets(real: Sequence, synthetic: Mapping[str, Sequence] | Sequence, negatives: Sequence, *,
                  num_triplets: int, ref_type: RefType = "real", num_synthetic: int | None = None,
                  seed: int = 0) -> list[Triplet]:
    """num_triplets triplets for one instance (train.num_triplets). `real`: its train image paths;
    `synthetic`: source name -> positive paths (or one list); `negatives`: other objects of its category;
    num_synthetic: positives kept after the seeded shuffle (None: all)."""
    real = _paths(real)
    negatives = _paths(negatives)
    if not negatives:
        raise ValueError("make_triplets: `negatives` is empty; pass the category's negative images "
                         "(other objects of the same category, e.g. the negatives stage's output folder)")
    if num_triplets < 1:
        raise ValueError(f"make_triplets: num_triplets must be >= 1, got {num_triplets}")
    rng = np.random.default_rng(seed)
    positives = select_positives(synthetic, real, num_synthetic, rng)
    if not positives:
        raise ValueError("make_triplets: no positives: both `synthetic` and `real` are empty; pass the "
                         "instance's train images (`real`) and/or its synthetic images")
    pools = {"real": real, "synthetic": [p for _, p in positives], "both": real + [p for _, p in positives]}
    if ref_type not in pools:
        raise ValueError(f"make_triplets: unknown ref_type {ref_type!r}; use real, synthetic or both")
    anchors = pools[ref_type]
    if not anchors:
        raise ValueError(f"make_triplets: no anchors: ref_type={ref_type!r} but `real` is empty; pass the "
                         "instance's train images, or use ref_type='synthetic'")
    neg = rng.integers(len(negatives), size=num_triplets)
    ref = rng.integers(len(anchors), size=num_triplets)
    pos = rng.integers(len(positives), size=num_triplets)
    label = rng.integers(2, size=num_triplets)
    out = []
    for i in range(num_triplets):
        source, p = positives[pos[i]]
        n = negatives[neg[i]]
        left, right = (p, n) if label[i] == 0 else (n, p)
        out.append(Triplet(i, int(label[i]), anchors[ref[i]], left, right, source))
    return out


def triplets_csv(triplets: Sequence[Triplet]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(asdict(t) for t in triplets)
    return buf.getvalue()


def save_triplets(triplets: Sequence[Triplet], path: str | Path) -> Path:
    return write_text_atomic(Path(path), triplets_csv(triplets))


def _from_dict(r: Mapping) -> Triplet:
    return Triplet(int(r["id"]), int(r["label"]), str(r["ref_path"]), str(r["left_path"]),
                   str(r["right_path"]), str(r.get("positive_source") or "unknown"))


def load_triplets(path: str | Path) -> list[Triplet]:
    """Read a triplet CSV; a reference CSV without positive_source reads as source 'unknown'."""
    path = Path(path)
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in COLUMNS[:5] if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; a triplet CSV needs "
                             f"{','.join(COLUMNS[:5])} (+ positive_source); regenerate it with make_triplets")
        rows = []
        for k, r in enumerate(reader, start=2):
            if r["label"] not in ("0", "1"):
                raise ValueError(f"{path}: line {k}: label must be 0 or 1, got {r['label']!r}")
            rows.append(_from_dict(r))
    if not rows:
        raise ValueError(f"{path}: no triplets (header only); regenerate it with make_triplets")
    return rows


def as_triplets(triplets_csv_or_rows) -> list[Triplet]:
    """A CSV path, Triplet rows, or dicts with the CSV's columns -> Triplet rows."""
    if isinstance(triplets_csv_or_rows, (str, Path)):
        return load_triplets(triplets_csv_or_rows)
    rows = [t if isinstance(t, Triplet) else _from_dict(dict(t)) for t in triplets_csv_or_rows]
    if not rows:
        raise ValueError("no triplets given; build them with prpg.train.triplets.make_triplets")
    return rows


def positives_per_source(triplets_csv_or_rows) -> dict[str, int]:
    """Distinct positive images the triplets use, per source (sorted by source). A run whose filter
    kept nothing shows only REAL_SOURCE here: the fallback of select_positives."""
    counts: dict[str, set[str]] = {}
    for t in as_triplets(triplets_csv_or_rows):
        counts.setdefault(t.positive_source, set()).add(t.positive_path)
    return {source: len(paths) for source, paths in sorted(counts.items())}
