"""The reference implementation's evaluation rules, used when EvalConfig.protocol == "reference" (paper
runs); "fixed" keeps ours. Each rule, the reference's behaviour -> ours (docs/protocol.md §2, §5.16):

- Ret column: the reference computes NDCG / MRR / top-10, no mAP; the report's "Ret" is our NDCG and our
  mAP is an extra column (prpg.report), in both modes.
- segmentation GT: the filled largest external contour of the GT mask -> the raw mask (`fill_largest`).
- detection GT box: the raw mask's box written (x, y, xmax - xmin, ymax - ymin), one px short of the
  tight box -> the tight box of the raw mask (`reference_box`).
- predicted box: of ALL foreground left after the clean-up, in that same convention -> the tight box of
  the kept (largest) component; the predicted mask is the filled largest component in both.
- confidence cells: bilinear resize of the box mask, cells == 1 for the prediction (its centre in the
  box), > 0 for the train GT boxes -> cells fully inside the box (geometry.box_cells_sampled).
- dense input normalization: ImageNet statistics for every backbone (SAM's processor) -> the backbone's
  own (CLIP's for CLIP).
- MAE target: mean of the masked patch features -> (max + mean) / 2 as for the other backbones.
- pretrained CLIP global feature: the 512-d projected `encode_image` -> the 768-d CLS (backbones.load
  with projection=True gives feature "proj"; the personalized CLIP keeps the CLS in both modes).
- position embeddings: bicubic without antialiasing, scale (n + 0.1) / M (backbones.hub_pos_embed) ->
  timm's antialiased resize.
Not switched: the reference evaluates LoRA models in train mode (dropout active); both modes evaluate
in eval mode, and backbones.dropout_gap measures the difference. The selection of the largest contour
ranks by pixel count here, by polygon area (cv2.contourArea) in the reference: they differ only between
components of nearly equal size.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from prpg.core.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, paper_name

REFERENCE = "reference"


def is_reference(protocol: str) -> bool:
    if protocol not in ("fixed", REFERENCE):
        raise ValueError(f"evaluate.protocol must be 'fixed' or 'reference', got {protocol!r}")
    return protocol == REFERENCE


def fill_largest(mask: np.ndarray | None) -> np.ndarray | None:
    """The largest 8-connected foreground component with its holes filled: what cv2 draws when it fills
    the largest external contour (findContours traces 8-connected foreground). None when empty."""
    from scipy.ndimage import binary_fill_holes, label

    if mask is None:
        return None
    mask = np.asarray(mask, bool)
    labels, n = label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return binary_fill_holes(labels == int(np.argmax(sizes)))


def reference_box(mask: np.ndarray | None) -> tuple[float, float, float, float] | None:
    """(x, y, w, h) COCO box as the reference writes it: w = xmax - xmin, h = ymax - ymin with xmax, ymax
    the last foreground pixel (so one px less than the tight box). None when empty."""
    if mask is None:
        return None
    mask = np.asarray(mask, bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return float(cols[0]), float(rows[0]), float(cols[-1] - cols[0]), float(rows[-1] - rows[0])


def mean_target(features: torch.Tensor, canvas: np.ndarray) -> torch.Tensor:
    """(D,) L2-normalized MEAN of the patch features under the mask (the reference's MAE target), with
    prpg.filter.filtering.target_feature's patch selection (covered at least half; else the best covered)."""
    gh, gw, _ = features.shape
    mask = torch.from_numpy(np.asarray(canvas, np.float32))[None, None]
    cover = F.interpolate(mask, size=(gh, gw), mode="area")[0, 0]
    inside = cover >= 0.5
    if not inside.any():
        inside = cover == cover.max()
    return F.normalize(features.float()[inside].mean(0), dim=0)


def target_pooling(bb: Backbone, protocol: str) -> str:
    """"mean" for MAE under the reference protocol, else "max+mean"."""
    return "mean" if is_reference(protocol) and paper_name(bb) == "mae_vitb16" else "max+mean"


def dense_stats(bb: Backbone, protocol: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the dense input: ImageNet's for every backbone under the reference (SAM's processor
    normalizes before any backbone sees the pixels), the backbone's own otherwise."""
    return (IMAGENET_MEAN, IMAGENET_STD) if is_reference(protocol) else (bb.mean, bb.std)


def global_feature(bb: Backbone, feature: str, protocol: str) -> str:
    """The global feature: the projected embedding ("proj") for a backbone loaded with its projection
    (the pretrained CLIP baseline) under the reference, else `feature`."""
    return "proj" if is_reference(protocol) and getattr(bb, "projection", None) is not None else feature
