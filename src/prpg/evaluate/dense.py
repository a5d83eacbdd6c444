"""Detection and segmentation by similarity to the instance (docs/protocol.md §2.3), one prediction per image.

target = (max + mean) / 2 of the patch features under the first train image's mask (prpg.filter.filtering's
`target_feature`, the mask mapped through the canvas geometry; a patch is under the mask when the mask
covers half of it) -> cosine map -> back to the original image (geometry.grid_to_image) -> min-max ->
Otsu -> remove_small_objects, binary closing, dilation then erosion with disk(1) -> largest connected
component, holes filled (the reference keeps the largest filled external contour). Its tight box is the
predicted box; the reference boxes all foreground left after clean-up, we box the kept component, so the
mask and the box describe the same object.

Confidence = max over the train images of the cosine between the mean patch feature of the cells inside
the predicted box and that train image's mean feature inside its GT box (geometry.box_cells).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from prpg.core.configs import EvalConfig
from prpg.data import Dataset, DatasetError, load_image, load_mask, mask_to_box
from prpg.evaluate.features import cached_dense_features, relative_key
from prpg.evaluate.geometry import (
    Box,
    BoxGeometry,
    PadGeometry,
    box_cells,
    box_cells_sampled,
    canvas_mask,
    grid_to_image,
)
from prpg.evaluate.metrics import DenseRecord
from prpg.evaluate.protocol import fill_largest, is_reference, mean_target, reference_box, target_pooling
from prpg.filter.filtering import PerSamLocalizer, largest_component, real_views, target_feature

if TYPE_CHECKING:
    from prpg.core.backbones import Backbone

REFERENCE_MIN_SIZE = 100  # px, remove_small_objects in the reference, on ~1024 px photos
REFERENCE_AREA = 1024 * 1024


def default_min_size(height: int, width: int) -> int:
    """The reference's 100 px, scaled by image area to a 1024 x 1024 px photo (2 px on a 128 px toybox
    image), so "small" means the same fraction of the image at every size."""
    return max(1, round(REFERENCE_MIN_SIZE * height * width / REFERENCE_AREA))


def dense_similarity(features: torch.Tensor, target: torch.Tensor, geom: PadGeometry) -> np.ndarray | None:
    """(H, W) cosine map of the (g, g, D) patches to the target, un-padded, min-max to [0, 1]; None
    when it is flat (nothing stands out, no prediction)."""
    sim = grid_to_image(features.float() @ target.float(), geom)
    lo, hi = float(sim.min()), float(sim.max())
    if hi - lo < 1e-6:
        return None
    return (sim - lo) / (hi - lo)


def _remove_small(fg: np.ndarray, min_size: int) -> np.ndarray:
    from skimage.morphology import remove_small_objects

    if "max_size" in inspect.signature(remove_small_objects).parameters:  # scikit-image >= 0.26
        return remove_small_objects(fg, max_size=min_size - 1)
    return remove_small_objects(fg, min_size=min_size)


def threshold_mask(sim: np.ndarray, min_size: int) -> np.ndarray | None:
    """The reference's threshold mode on a [0, 1] map; None when nothing is left."""
    from scipy.ndimage import binary_fill_holes
    from skimage.filters import threshold_otsu
    from skimage.morphology import closing, dilation, disk, erosion

    fg = _remove_small(sim > threshold_otsu(sim), min_size)
    fg = closing(fg)  # binary_closing's default footprint (a cross); binary_* are deprecated in 0.26
    fg = erosion(dilation(fg, disk(1)), disk(1))
    keep = largest_component(fg)
    return None if keep is None else binary_fill_holes(keep)


_CROSS = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], bool)  # 4-connectivity: each step's 2-D default, disk(1)
_SQUARE = np.ones((3, 3), bool)  # 8-connectivity: skimage.measure.label's 2-D default (largest_component)


def _in_plane(structure: np.ndarray) -> np.ndarray:
    """A 2-D connectivity as the 3 x 3 x 3 one scipy.ndimage.label takes, linking no two maps of a stack."""
    out = np.zeros((3, 3, 3), bool)
    out[1] = structure
    return out


def threshold_masks(sims: Sequence[np.ndarray], min_size: int | None = None,
                    largest: bool = True) -> list[np.ndarray | None]:
    """`threshold_mask` of each map (min_size None: default_min_size of its shape), exactly, with the
    maps of one shape cleaned up as one (N, H, W) stack: every structuring element lies in a map's plane
    (shape (1, 3, 3)), so no step reaches across maps. 2400 maps per evaluate stage made the per-map
    calls a third of its time. largest=False: all foreground left after the clean-up (the reference
    boxes that), no component chosen."""
    from scipy.ndimage import binary_fill_holes, label
    from skimage.filters import threshold_otsu
    from skimage.morphology import closing, dilation, erosion

    out: list[np.ndarray | None] = [None] * len(sims)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for i, sim in enumerate(sims):
        shapes.setdefault(sim.shape, []).append(i)
    for (h, w), idx in shapes.items():
        fg = np.stack([sims[i] > threshold_otsu(sims[i]) for i in idx])
        labels, _ = label(fg, structure=_in_plane(_CROSS))  # remove_small_objects: 4-connected, size < min_size
        fg &= (np.bincount(labels.ravel()) >= (min_size or default_min_size(h, w)))[labels]
        fg = closing(fg, _CROSS[None])
        fg = erosion(dilation(fg, _CROSS[None]), _CROSS[None])
        if not largest:
            for j, i in enumerate(idx):
                out[i] = fg[j] if fg[j].any() else None
            continue
        labels, _ = label(fg, structure=_in_plane(_SQUARE))  # numbered in raster order, map after map
        sizes = np.bincount(labels.ravel())
        keep = np.zeros_like(fg)
        for j in range(len(idx)):
            own = labels[j][labels[j] > 0]
            if own.size:  # the map's labels are one run lo..hi; argmax takes the first of equal sizes
                lo, hi = own.min(), own.max()
                keep[j] = labels[j] == lo + int(np.argmax(sizes[lo : hi + 1]))
        keep = binary_fill_holes(keep, structure=_CROSS[None])
        for j, i in enumerate(idx):
            if keep[j].any():
                out[i] = keep[j]
    return out


def box_feature(features: torch.Tensor, box: Box, geom: PadGeometry, mode: BoxGeometry,
                rule: str | None = None) -> torch.Tensor:
    """(D,) mean patch feature of the cells inside the box: fully inside (rule None, ours) or the
    reference's sampled cells (rule "centre" / "touch", geometry.box_cells_sampled)."""
    cells = box_cells(box, geom, mode) if rule is None else box_cells_sampled(box, geom, mode, rule)
    return features.float()[cells].mean(0)


def box_score(features: torch.Tensor, box: Box, geom: PadGeometry, train_box_features: torch.Tensor,
              mode: BoxGeometry) -> float:
    f = box_feature(features, box, geom, mode)
    return float(F.cosine_similarity(f[None], train_box_features, dim=-1).max())


class _GivenMap:
    """The `similarity(image)` PerSamLocalizer asks of its dense localizer, answered with our map."""

    def __init__(self, sim: np.ndarray):
        self.sim = sim

    def similarity(self, image) -> np.ndarray:
        return self.sim


@functools.lru_cache(maxsize=1)
def _sam(name: str, device: str):
    from prpg.filter.filtering import load_sam

    return load_sam(name, device)  # a clear ModelNotAvailableError when the weights are not there


def persam_mask(image, sim: np.ndarray, sam, cfg: EvalConfig) -> np.ndarray | None:
    """prpg.filter.filtering's PerSAM on our similarity map: SAM prompted with its top points, the best-rated
    mask, largest component. Simpler than the reference's PerSAM (no learned mask mixing, no refinement
    passes)."""
    return PerSamLocalizer(_GivenMap(sim), *sam, n_points=cfg.persam_points, device=cfg.device).mask(image)


def predict(features: torch.Tensor, geom: PadGeometry, target: torch.Tensor, train_box_features: torch.Tensor,
            cfg: EvalConfig, image: Image.Image | Path | None = None,
            sam=None) -> tuple[np.ndarray | None, float]:
    """(predicted mask (H, W) or None, confidence) for one image's (g, g, D) patch features; persam mode
    also needs the image (or its path) and `sam` = (SamModel, SamProcessor)."""
    sim = dense_similarity(features, target, geom)
    if sim is None:
        return None, 0.0
    if cfg.dense_mode == "threshold":
        mask = threshold_mask(sim, cfg.min_object_size or default_min_size(geom.height, geom.width))
    else:
        if image is None or sam is None:
            raise ValueError("dense_mode 'persam' needs the image and sam=(SamModel, SamProcessor)")
        mask = persam_mask(image if isinstance(image, Image.Image) else load_image(image), sim, sam, cfg)
    return scored(mask, features, geom, train_box_features, cfg)


def scored(mask: np.ndarray | None, features: torch.Tensor, geom: PadGeometry, train_box_features: torch.Tensor,
           cfg: EvalConfig) -> tuple[np.ndarray | None, float]:
    """(mask, confidence of its box); (None, 0.0) when there is no mask or it boxes nothing."""
    box = None if mask is None else mask_to_box(mask)
    if box is None:
        return None, 0.0
    return mask, box_score(features, box, geom, train_box_features, cfg.box_geometry)


def instance_target(train: Sequence[torch.Tensor], masks: Sequence[np.ndarray], geoms: Sequence[PadGeometry],
                    which: str = "first", pooling: str = "max+mean") -> torch.Tensor:
    """(D,) target from the first train image (the paper) or from the masked patches of all of them;
    pooling "mean" is the reference's MAE target (protocol.target_pooling)."""
    n = 1 if which == "first" else len(train)
    feats = torch.cat([t.float() for t in train[:n]], dim=0)  # stacked grids: area pooling stays per image
    canvas = np.concatenate([canvas_mask(m, g) for m, g in zip(masks[:n], geoms[:n])], axis=0)
    return mean_target(feats, canvas) if pooling == "mean" else target_feature(feats, canvas)


def reference_prediction(fg: np.ndarray | None, features: torch.Tensor, geom: PadGeometry,
                         train_box_features: torch.Tensor, cfg: EvalConfig):
    """The reference's prediction from the cleaned foreground: (filled largest component, COCO box of ALL
    the foreground, score of that box over its centre cells); (None, None, 0.0) when empty."""
    box = None if fg is None else mask_to_box(fg)
    if box is None:
        return None, None, 0.0
    score = float(F.cosine_similarity(box_feature(features, box, geom, cfg.box_geometry, "centre")[None],
                                      train_box_features, dim=-1).max())
    return fill_largest(fg), reference_box(fg), score


def dense_predictions(ds: Dataset, instance: str, bb: Backbone, cfg: EvalConfig,
                      cache_dir: Path | None = None) -> list[DenseRecord]:
    """One DenseRecord per dense image of every instance (ds.dense_images: PODS test_dense, else masked
    test images); the ground truth is the mask for the instance's own images, none for the others.
    A target image with an empty GT mask gets no ground truth (its prediction is a false positive) and
    an empty prediction no detection (metrics.coco_inputs), where the reference crashes or writes a
    score-0 category-0 record (the same numbers)."""
    if cfg.dense_mode not in ("threshold", "persam"):
        raise ValueError(f"dense_mode must be 'threshold' or 'persam', got {cfg.dense_mode!r}")
    ref = is_reference(cfg.protocol)
    if ref and cfg.dense_mode != "threshold":
        raise ValueError("evaluate.protocol 'reference' reproduces the threshold mode only; "
                         "use dense_mode 'threshold' or protocol 'fixed'")
    sam = _sam(cfg.sam, cfg.device) if cfg.dense_mode == "persam" else None
    kw = dict(root=ds.root, grid=cfg.dense_grid, batch=cfg.batch, device=cfg.device, dataset=ds.name,
              protocol=cfg.protocol)
    views = real_views(ds, instance)  # train images + masks paired by stem, non-empty, sizes checked
    train = cached_dense_features(bb, ds.images("train", instance), cache_dir, **kw)
    geoms = [PadGeometry(h, w, cfg.dense_grid, bb.patch_size) for h, w in train.sizes]
    target = instance_target([train.patches(i) for i in range(len(train))], [v.mask for v in views], geoms,
                             cfg.target_images, target_pooling(bb, cfg.protocol))
    # the reference keeps the train GT box cells whose resized box mask is > 0 (touched), ours fully inside
    train_boxes = torch.stack([box_feature(train.patches(i), v.box, g, cfg.box_geometry, "touch" if ref else None)
                               for i, (v, g) in enumerate(zip(views, geoms))])

    out = []
    records = ds.dense_images()
    for start in range(0, len(records), cfg.batch):
        chunk = records[start : start + cfg.batch]
        dense = cached_dense_features(bb, chunk, cache_dir, **kw)
        geoms = [PadGeometry(h, w, cfg.dense_grid, bb.patch_size) for h, w in dense.sizes]
        if cfg.dense_mode == "threshold":  # predict's masks, the chunk's maps at once (threshold_masks)
            sims = [dense_similarity(dense.patches(i), target, g) for i, g in enumerate(geoms)]
            some = [i for i, sim in enumerate(sims) if sim is not None]
            masks = dict(zip(some, threshold_masks([sims[i] for i in some], cfg.min_object_size, largest=not ref)))
        for i, r in enumerate(chunk):
            h, w = dense.sizes[i]
            gt = None
            if r.instance == instance:
                if r.mask_path is None:
                    raise DatasetError(f"{r.path}: no mask with stem {r.path.stem!r} in "
                                       f"{ds.root / (r.split + '_masks') / r.instance}; add it (dense eval)")
                gt = load_mask(r.mask_path)
                if gt.shape != (h, w):
                    raise DatasetError(f"{r.mask_path}: mask is {gt.shape[1]}x{gt.shape[0]} but the image is "
                                       f"{w}x{h}; a mask must match its photo")
            rel = relative_key(r.path, ds.root)
            if ref:  # GT: filled largest contour for segm, the raw mask's box for bbox, as the reference
                pred, pred_box, score = reference_prediction(masks.get(i), dense.patches(i), geoms[i], train_boxes,
                                                             cfg)
                out.append(DenseRecord.from_masks(h, w, fill_largest(gt), pred, score, r.test_split, rel,
                                                  gt_box=reference_box(gt), pred_box=pred_box))
                continue
            if cfg.dense_mode == "threshold":
                pred, score = scored(masks.get(i), dense.patches(i), geoms[i], train_boxes, cfg)
            else:
                pred, score = predict(dense.patches(i), geoms[i], target, train_boxes, cfg, r.path, sam)
            out.append(DenseRecord.from_masks(h, w, gt, pred, score, r.test_split, rel))
    return out
