"""A gallery figure: per category, one instance's train images and one image of each test split,
with the mask outline drawn, so a reader sees at a glance what the dataset asks of a model."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from skimage.segmentation import find_boundaries  # noqa: E402

from prpg.data.dataset import Dataset, ImageRecord  # noqa: E402
from prpg.data.images import load_image, load_mask  # noqa: E402

SPLIT_LABELS = {"in_distribution": "ID", "pose": "pose", "distractors": "distractors", "pose_and_distractors": "both"}


def _with_outline(rec: ImageRecord, size: int) -> np.ndarray:
    img = np.asarray(load_image(rec.path).resize((size, size)))
    if rec.mask_path is None:
        return img
    mask = _resized_mask(rec.mask_path, size)
    out = img.copy()
    out[find_boundaries(mask, mode="inner")] = (255, 40, 40)
    return out


def _resized_mask(path: Path, size: int) -> np.ndarray:
    mask = load_mask(path)
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), Image.NEAREST)) > 0


def gallery_rows(ds: Dataset, per_category: int = 1) -> list[tuple[str, list[tuple[str, ImageRecord]]]]:
    """Pick, per category, the first `per_category` instances: 3 train images + the first test
    image of each test split (dense images preferred: they carry masks)."""
    rows = []
    for cat in ds.categories:
        for inst in ds.instances_in(category=cat)[:per_category]:
            cells = [(f"train {k}", r) for k, r in enumerate(ds.images("train", inst.name)[:3])]
            pool = ds.dense_images(inst.name) or ds.images("test", inst.name)
            for split, label in SPLIT_LABELS.items():
                rec = next((r for r in pool if r.test_split == split), None)
                if rec is not None:
                    cells.append((label, rec))
            if not any(c[0] in SPLIT_LABELS.values() for c in cells):  # no annos: show a few test images
                cells += [(f"test {k}", r) for k, r in enumerate(ds.images("test", inst.name)[:4])]
            rows.append((inst.name, cells))
    return rows


def save_gallery(ds: Dataset, out_png: Path, per_category: int = 1, cell_px: int = 128) -> Path:
    rows = gallery_rows(ds, per_category)
    ncols = max(len(cells) for _, cells in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(1.6 * ncols, 1.7 * len(rows)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for r, (name, cells) in enumerate(rows):
        for c, (label, rec) in enumerate(cells):
            axes[r, c].imshow(_with_outline(rec, cell_px))
            axes[r, c].set_title(label, fontsize=7)
        axes[r, 0].text(-0.08, 0.5, name, transform=axes[r, 0].transAxes, rotation=90, va="center", ha="right", fontsize=8)
    fig.suptitle(f"{ds.name}: train images and one image per test split (red: mask outline)", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", dir=out_png.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, metadata={"Software": None})  # no version stamp: stable bytes
        os.replace(tmp, out_png)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return out_png
