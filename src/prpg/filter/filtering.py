"""Stage "filter": keep the generated images that look like the instance (docs/protocol.md §1.3, reference
generate_data.py --filter).

Once per instance: crop each real train image to the bounding box of its mask (a box crop with its
background, not a cut-out, as the reference) and embed the crops. Per generated image: localize the
object, crop the image to that box, embed, score = MEAN cosine to the real crops (the paper; `max` as
an option), keep if score >= threshold (0.6). The kept set is the full generated images.

Fixed against the reference (docs/protocol.md §5.13): images and masks pair by stem through the dataset
reader, not by two globs' order; any image extension; and an image whose localization fails still
counts as an attempt, so the loop always ends after `max_attempts`.

Localization of the generated object:
- "dense_otsu" (toybox default): cosine of the backbone's patch features to the instance's feature
  (from the first train image's mask), Otsu threshold, largest component; the dense-eval recipe
  (docs/protocol.md §2.3)
- "persam": SAM prompted with points of that similarity map. `persam="reference"` (paper runs) is the
  reference's PerSAM (docs/protocol.md §2.3): up to 5 spaced points for DINOv2 (top-2 otherwise), the
  multimask output mixed by 2 weights learned on the first train image, two cascaded refinements.
  `persam="simple"`: the top points, one SAM call, the mask SAM rates best, largest component.
- "none": the whole image

How the localizing backbone sees an image (`dense_input`): "sam_pad" is the reference's (SAM processor:
long side resized, normalized, padded to a square, at `dense_resolution` px: 896 for /14 -> 64x64);
"squash" resizes straight to the square (toybox images are square, where the two agree).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass as plain_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from tqdm.auto import tqdm

from prpg.core.atomic import atomic_dir
from prpg.core.configs import DreamSimType, FilterConfig  # noqa: F401 (re-exported)
from prpg.data import Dataset, DatasetError, load_image, load_mask, mask_to_box
from prpg.filter.similarity import BackboneModel, DreamSimModel, SimilarityModel, backbone_data_config

if TYPE_CHECKING:  # prpg.evaluate imports this module: its geometry is imported where it is used
    from prpg.evaluate.geometry import PadGeometry

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive, as prpg.data.mask_to_box
Localizer = Callable[[Image.Image], Box | None]

# Otsu specks smaller than this fraction of the image are dropped before closing (the reference drops
# < 100 px on photos of ~1 Mpx; a fraction keeps that meaning on 64 px toybox images).
MIN_OBJECT_FRACTION = 1e-3
PERSAM_POINT_SPACING = 0.1  # prompt points at least this fraction of the image's long side apart




# --- the real instance ---------------------------------------------------------------------------


@plain_dataclass(frozen=True)
class RealView:
    """One real train image of the instance with its mask and the mask's box."""

    path: Path
    image: Image.Image
    mask: np.ndarray  # bool (H, W)
    box: Box

    @property
    def crop(self) -> Image.Image:
        return self.image.crop(self.box)


def real_views(ds: Dataset, instance: str) -> list[RealView]:
    """The instance's train images with their masks (paired by stem by the reader), in reader order;
    the first one defines the localization target."""
    records = ds.images("train", instance)
    if not records:
        raise DatasetError(f"{ds.root / 'train' / instance}: no train images; the filter compares to them")
    views = []
    for r in records:
        if r.mask_path is None:
            raise DatasetError(
                f"{r.path}: no mask with stem {r.path.stem!r} in {ds.root / 'train_masks' / instance}; "
                "filtering crops each real image to its mask's box, so add the mask"
            )
        image, mask = load_image(r.path), load_mask(r.mask_path)
        if mask.shape != (image.height, image.width):
            raise DatasetError(
                f"{r.mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but {r.path.name} is "
                f"{image.width}x{image.height}; a mask must match its photo"
            )
        box = mask_to_box(mask)
        if box is None:
            raise DatasetError(f"{r.mask_path}: empty mask (no foreground); fix or redraw it")
        views.append(RealView(r.path, image, mask, box))
    return views


# --- localization --------------------------------------------------------------------------------


def whole_image(image: Image.Image) -> Box:
    return 0, 0, image.width, image.height


class SquashLayout:
    """The image resized straight onto the whole square grid: a plain resize maps a grid map back, and
    the mask is area-pooled onto the grid as it is."""

    def to_image(self, grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        up = F.interpolate(grid_map.float()[None, None], size=size, mode="bilinear", align_corners=False)
        return up[0, 0]

    def grid_mask(self, mask: np.ndarray) -> np.ndarray:
        return mask


@plain_dataclass(frozen=True)
class PaddedLayout:
    """The reference's canvas (docs/protocol.md §2.3): long side resized to grid x patch px, aspect kept,
    image top-left on a padded square. A grid map goes back through the padding (prpg.evaluate.geometry)."""

    grid: int
    patch: int

    def geometry(self, height: int, width: int) -> PadGeometry:
        from prpg.evaluate.geometry import PadGeometry

        return PadGeometry(height, width, self.grid, self.patch)

    def to_image(self, grid_map: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        from prpg.evaluate.geometry import grid_to_image

        return torch.from_numpy(grid_to_image(grid_map, self.geometry(*size)))

    def grid_mask(self, mask: np.ndarray) -> np.ndarray:
        """The mask on the same canvas, so that target_feature pools it onto the patches it covers."""
        from prpg.evaluate.geometry import canvas_mask

        return canvas_mask(mask, self.geometry(*np.shape(mask)))


SQUASH = SquashLayout()


class TimmPatchFeatures:
    """(gh, gw, D) L2-normalised last-layer patch features of a timm ViT (CLS/register tokens dropped)
    at `resolution` px (None: the backbone's input size). `layout` "squash": the image resized to the
    square; "sam_pad": the reference's padded canvas (normalized, then zero-padded, as SAM's processor).
    `self.layout` maps grid maps and masks between the image and the grid."""

    def __init__(self, model, resolution: int | None = None, device: str = "cpu",
                 layout: Literal["squash", "sam_pad"] = "squash"):
        from torchvision import transforms as T

        cfg = backbone_data_config(model)
        self.model, self.device = model.eval().to(device), device
        ph, pw = model.patch_embed.patch_size
        side = resolution or cfg["input_size"][-1]
        self.grid = (max(1, round(side / ph)), max(1, round(side / pw)))
        self.mean, self.std = cfg["mean"], cfg["std"]
        if layout == "sam_pad":
            if ph != pw:
                raise ValueError(f"dense_input 'sam_pad' needs square patches, got {ph}x{pw}")
            self.layout = PaddedLayout(self.grid[0], ph)
            self.transform = self._canvas
        elif layout == "squash":
            self.layout = SQUASH
            size = (self.grid[0] * ph, self.grid[1] * pw)
            self.transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
                                        T.ToTensor(), T.Normalize(self.mean, self.std)])
        else:
            raise ValueError(f"dense_input must be 'squash' or 'sam_pad', got {layout!r}")

    def _canvas(self, image: Image.Image) -> torch.Tensor:
        from prpg.evaluate.geometry import canvas_tensor

        return canvas_tensor(image, self.layout.geometry(image.height, image.width), self.mean, self.std)

    @torch.no_grad()
    def __call__(self, image: Image.Image) -> torch.Tensor:
        x = self.transform(image.convert("RGB"))[None].to(self.device)
        tokens = self.model.forward_features(x)[0, self.model.num_prefix_tokens :].float().cpu()
        return F.normalize(tokens, dim=-1).reshape(*self.grid, -1)


def target_feature(features: torch.Tensor, mask: np.ndarray) -> torch.Tensor:
    """(max + mean) / 2 of the patch features inside the mask, L2-normalised (reference dense eval).
    A patch is inside when the mask covers at least half of it; a tiny object uses its best-covered patch."""
    gh, gw, _ = features.shape
    mask = torch.from_numpy(np.asarray(mask, np.float32))[None, None]
    cover = F.interpolate(mask, size=(gh, gw), mode="area")[0, 0]  # fraction of each patch inside
    inside = cover >= 0.5
    if not inside.any():
        inside = cover == cover.max()
    f = features[inside]
    return F.normalize((f.max(0).values + f.mean(0)) / 2, dim=0)


def similarity_map(features: torch.Tensor, target: torch.Tensor, size: tuple[int, int],
                   layout=SQUASH) -> np.ndarray | None:
    """Cosine to the target per patch, mapped back (bilinear, through the layout) to `size` = (H, W),
    min-max to [0, 1]; None when the map is flat (nothing stands out)."""
    up = layout.to_image(features @ target, size)
    lo, hi = float(up.min()), float(up.max())
    if hi - lo < 1e-6:
        return None
    return ((up - lo) / (hi - lo)).numpy()


def largest_component(mask: np.ndarray) -> np.ndarray | None:
    from skimage.measure import label

    labels = label(mask)
    if labels.max() == 0:
        return None
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == sizes.argmax()


def otsu_object(sim: np.ndarray, min_fraction: float = MIN_OBJECT_FRACTION) -> np.ndarray | None:
    """Otsu foreground of a [0, 1] map, specks removed, closed with disk(1), largest component."""
    from skimage.filters import threshold_otsu
    from skimage.morphology import area_opening, closing, disk

    fg = sim > threshold_otsu(sim)
    min_area = max(1, round(min_fraction * sim.size))
    fg = area_opening(fg.astype(np.uint8), area_threshold=min_area) > 0
    fg = closing(fg, disk(1)).astype(bool)
    return largest_component(fg)


class DenseLocalizer:
    """Where is the instance? Patch similarity to the first train image's masked feature + Otsu."""

    def __init__(self, patch_features: Callable[[Image.Image], torch.Tensor], reference_image: Image.Image,
                 reference_mask: np.ndarray, min_fraction: float = MIN_OBJECT_FRACTION):
        self.patch_features, self.min_fraction = patch_features, min_fraction
        # A plain callable sees the image squashed; TimmPatchFeatures says how it placed the image.
        self.layout = getattr(patch_features, "layout", SQUASH)
        self.target = target_feature(patch_features(reference_image), self.layout.grid_mask(reference_mask))

    def similarity(self, image: Image.Image) -> np.ndarray | None:
        size = (image.height, image.width)
        return similarity_map(self.patch_features(image), self.target, size, self.layout)

    def mask(self, image: Image.Image) -> np.ndarray | None:
        sim = self.similarity(image)
        return None if sim is None else otsu_object(sim, self.min_fraction)

    def __call__(self, image: Image.Image) -> Box | None:
        mask = self.mask(image)
        return None if mask is None else mask_to_box(mask)


def top_points(sim: np.ndarray, n: int, min_distance: float) -> list[tuple[float, float]]:
    """The n highest (x, y) of the map, greedily, each at least min_distance from those before."""
    s = np.array(sim, dtype=np.float64)
    yy, xx = np.mgrid[: s.shape[0], : s.shape[1]]
    points = []
    for _ in range(n):
        y, x = np.unravel_index(np.argmax(s), s.shape)
        if not np.isfinite(s[y, x]):
            break
        points.append((float(x), float(y)))
        s[(yy - y) ** 2 + (xx - x) ** 2 < min_distance**2] = -np.inf
    return points


def load_sam(name_or_path: str | Path, device: str = "cpu"):
    """(SamModel, SamProcessor) from a hub id or a local save_pretrained folder."""
    from transformers import SamModel, SamProcessor

    from prpg.core.models import _missing, hub_offline

    local_only = Path(name_or_path).is_dir() or hub_offline()
    try:
        model = SamModel.from_pretrained(str(name_or_path), local_files_only=local_only)
        processor = SamProcessor.from_pretrained(str(name_or_path), local_files_only=local_only)
    except OSError as err:
        raise _missing(str(name_or_path), err) from err
    return model.eval().to(device), processor


class PerSamLocalizer:
    """SAM prompted with the top points of the dense similarity map; the mask SAM rates best (its IoU
    head) of the multimask output, largest component."""

    def __init__(self, dense: DenseLocalizer, sam_model, sam_processor, n_points: int = 2,
                 device: str = "cpu"):
        self.dense, self.sam, self.processor = dense, sam_model, sam_processor
        self.n_points, self.device = n_points, device

    @torch.no_grad()
    def mask(self, image: Image.Image) -> np.ndarray | None:
        sim = self.dense.similarity(image)
        if sim is None:
            return None
        points = top_points(sim, self.n_points, PERSAM_POINT_SPACING * max(sim.shape))
        inputs = self.processor(images=image.convert("RGB"), input_points=[[list(p) for p in points]],
                                input_labels=[[1] * len(points)], return_tensors="pt")
        inputs = {k: v.to(self.device) for k, v in inputs.items()}
        out = self.sam(**inputs, multimask_output=True)
        masks = self.processor.image_processor.post_process_masks(
            out.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0][0]  # (n_masks, H, W) for our one image and one prompt
        best = int(out.iou_scores[0, 0].argmax())
        return largest_component(masks[best].numpy().astype(bool))

    def __call__(self, image: Image.Image) -> Box | None:
        mask = self.mask(image)
        return None if mask is None else mask_to_box(mask)


# --- PerSAM as the reference (docs/protocol.md §1.3, §2.3) --------------------------------------------------

REFERENCE_POINTS = 5  # at most, for DINOv2 backbones
REFERENCE_TOP_FRACTION = 0.1  # candidates: within the top 10% of the map's range
MASK_WEIGHT_STEPS = 2000  # AdamW lr 1e-3 eps 1e-4, cosine schedule, dice + focal (alpha .25, gamma 2)


def spaced_points(sim: np.ndarray, n: int = REFERENCE_POINTS,
                  top_fraction: float = REFERENCE_TOP_FRACTION) -> list[tuple[float, float]]:
    """The reference's DINOv2 point prompts: up to n (x, y) among the pixels above max - top_fraction x
    range, each at least sqrt(mean area of the above-threshold 8-connected components) px from those
    taken before. The candidates are visited in np.argpartition's order, as the reference does: not
    sorted, so the first point is some candidate, not necessarily the peak."""
    from skimage.measure import label

    s = np.asarray(sim, dtype=np.float64)
    hi, lo = s.max(), s.min()
    high = s > hi - (hi - lo) * top_fraction
    labels = label(high)
    areas = np.bincount(labels.ravel())[1:]
    spacing = max(int(np.sqrt(areas.mean())), 1) if areas.size else 50  # the reference's fallback
    k = int(high.sum())
    if k == 0:
        return []
    order = np.argpartition(s.ravel(), -k)[-k:]
    ys, xs = np.unravel_index(order, s.shape)
    chosen: list[tuple[int, int]] = []
    for y, x in zip(ys, xs, strict=True):
        if len(chosen) == n:
            break
        if all((x - cx) ** 2 + (y - cy) ** 2 >= spacing**2 for cx, cy in chosen):
            chosen.append((int(x), int(y)))
    return [(float(x), float(y)) for x, y in chosen]


def reference_points(sim: np.ndarray, spaced: bool) -> list[tuple[float, float]]:
    """DINOv2 (spaced=True): spaced_points; other backbones: the 2 highest pixels, adjacent or not."""
    return spaced_points(sim) if spaced else top_points(sim, 2, min_distance=0.5)


def dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """1 - (2 sum(p t) + 1) / (sum p + sum t + 1) of sigmoid probabilities, over all pixels."""
    p = logits.sigmoid()
    return 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 0.25,
               gamma: float = 2.0) -> torch.Tensor:
    """Sigmoid focal loss (RetinaNet), mean over pixels."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean()


def full_weights(learned: torch.Tensor) -> torch.Tensor:
    """(1 - w1 - w2, w1, w2): two free weights, three that sum to one."""
    return torch.cat([1 - learned.sum().reshape(1), learned])


def mix(logits: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(3, ...) SAM multimask logits -> (...) their weighted sum."""
    return (logits * weights.reshape(-1, *[1] * (logits.dim() - 1))).sum(0)


def learn_mask_weights(logits: torch.Tensor, mask: np.ndarray,
                       steps: int = MASK_WEIGHT_STEPS) -> torch.Tensor:
    """The 3 mixing weights (1 - w1 - w2, w1, w2) that fit SAM's multimask logits (3, H, W) of the first
    train image to its mask: w = 1/3 each at the start, dice + focal loss, AdamW (lr 1e-3, eps 1e-4,
    torch's weight decay), cosine schedule over `steps`. SAM's output does not change while the weights
    learn, so it is computed once (the reference re-runs the decoder every step, to the same logits)."""
    logits = logits.detach().float()
    target = torch.as_tensor(np.asarray(mask, dtype=np.float32), device=logits.device)
    learned = torch.nn.Parameter(torch.full((2,), 1 / 3, device=logits.device))
    opt = torch.optim.AdamW([learned], lr=1e-3, eps=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):
        mixed = mix(logits, full_weights(learned))
        loss = dice_loss(mixed, target) + focal_loss(mixed, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        schedule.step()
    return full_weights(learned.detach())


@plain_dataclass(frozen=True)
class SamPrediction:
    low: torch.Tensor  # (3, h, w) logits at SAM's mask resolution (padded frame): the mask prompt
    high: torch.Tensor  # (3, H, W) logits on the original image
    iou: torch.Tensor  # (3,) SAM's IoU estimates


class SamImage:
    """One image for SAM: its embedding computed once, prompts in original pixels mapped to SAM's frame
    (scaled like the processor: long side to SAM's input size), outputs un-padded to the image."""

    def __init__(self, sam_model, sam_processor, image: Image.Image, device: str = "cpu"):
        self.sam, self.processor, self.device = sam_model, sam_processor, device
        self.inputs = sam_processor(images=image.convert("RGB"), return_tensors="pt")
        with torch.no_grad():
            self.embeddings = sam_model.get_image_embeddings(self.inputs["pixel_values"].to(device))
        h, w = self.inputs["original_sizes"][0].tolist()
        rh, rw = self.inputs["reshaped_input_sizes"][0].tolist()
        self.scale = torch.tensor([rw / w, rh / h])

    @torch.no_grad()
    def predict(self, points: list[tuple[float, float]], box: Box | None = None,
                mask_prompt: torch.Tensor | None = None) -> SamPrediction:
        """Multimask output for positive points, optionally with a box (x0, y0, x1, y1) and (h, w) logits."""
        xy = torch.tensor(points, dtype=torch.float32) * self.scale
        kw = {"input_points": xy[None, None].to(self.device),
              "input_labels": torch.ones(1, 1, len(points), dtype=torch.long, device=self.device)}
        if box is not None:
            corners = torch.tensor(box, dtype=torch.float32) * self.scale.repeat(2)
            kw["input_boxes"] = corners[None, None].to(self.device)
        if mask_prompt is not None:
            kw["input_masks"] = mask_prompt[None, None].to(self.device, torch.float32)
        out = self.sam(image_embeddings=self.embeddings, multimask_output=True, **kw)
        high = self.processor.image_processor.post_process_masks(
            out.pred_masks.float().cpu(), self.inputs["original_sizes"], self.inputs["reshaped_input_sizes"],
            binarize=False)[0][0]
        return SamPrediction(out.pred_masks[0, 0].float().cpu(), high, out.iou_scores[0, 0].float().cpu())


def inclusive_box(mask: np.ndarray | torch.Tensor) -> Box | None:
    """(x min, y min, x max, y max) of the foreground, max inclusive: the box prompt the reference gives."""
    ys, xs = np.nonzero(np.asarray(mask))
    return None if xs.size == 0 else (int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max()))


def refine(sam_image: SamImage, points, box: Box, mask_prompt: torch.Tensor) -> tuple[SamPrediction, int]:
    """One cascaded refinement: points + box + mask logits; the mask SAM rates best (its IoU head)."""
    pred = sam_image.predict(points, box, mask_prompt)
    return pred, int(pred.iou.argmax())


class ReferencePerSam:
    """The reference's PerSAM. Set-up: prompt SAM with the top-1 point of the first train image's own
    similarity map and learn 2 weights that mix its multimask output into that image's mask. Per image:
    points (reference_points) -> mixed mask (> 0) -> refinement 1 with its box and the mixed low-res
    logits -> refinement 2 with the new mask's box and logits -> the final best-IoU mask (all of it;
    the caller boxes it). An empty mask at any step: not found."""

    def __init__(self, dense: DenseLocalizer, sam_model, sam_processor, reference_image: Image.Image,
                 reference_mask: np.ndarray, spaced: bool = True, device: str = "cpu",
                 steps: int = MASK_WEIGHT_STEPS):
        self.dense, self.sam, self.processor = dense, sam_model, sam_processor
        self.spaced, self.device = spaced, device
        sim = dense.similarity(reference_image)
        if sim is None:
            raise ValueError("PerSAM: the first train image's similarity map is flat; no point to learn from")
        top = top_points(sim, 1, min_distance=0.5)
        first = SamImage(sam_model, sam_processor, reference_image, device).predict(top)
        self.weights = learn_mask_weights(first.high.to(device), reference_mask, steps).cpu()

    def steps(self, image: Image.Image) -> list[np.ndarray] | None:
        """The masks of the three passes (mixed, refinement 1, refinement 2); None once one is empty."""
        sim = self.dense.similarity(image)
        if sim is None:
            return None
        points = reference_points(sim, self.spaced)
        sam_image = SamImage(self.sam, self.processor, image, self.device)
        pred = sam_image.predict(points)
        masks = [(mix(pred.high, self.weights) > 0).numpy()]
        prompt = mix(pred.low, self.weights)
        for _ in range(2):
            box = inclusive_box(masks[-1])
            if box is None:
                return None
            pred, best = refine(sam_image, points, box, prompt)
            masks.append((pred.high[best] > 0).numpy())
            prompt = pred.low[best]
        return masks if masks[-1].any() else None

    def mask(self, image: Image.Image) -> np.ndarray | None:
        masks = self.steps(image)
        return None if masks is None else masks[-1]

    def __call__(self, image: Image.Image) -> Box | None:
        mask = self.mask(image)
        return None if mask is None else mask_to_box(mask)


# --- scoring and the bounded loop ----------------------------------------------------------------


def score(embedding: torch.Tensor, reference: torch.Tensor, reduce: Literal["mean", "max"] = "mean") -> float:
    """Cosine of one L2-normalised embedding (D,) to each real crop (R, D), reduced by mean or max."""
    sims = reference @ embedding
    return float(sims.mean() if reduce == "mean" else sims.max())


@plain_dataclass(frozen=True)
class Verdict:
    attempt: int  # 0-based position of the image in the candidate stream
    image: Image.Image
    box: Box | None  # where the object was found; None: localization failed
    score: float | None  # None when not localized
    kept: bool

    @property
    def localized(self) -> bool:
        return self.box is not None


def filter_stream(candidates: Iterable[Image.Image], *, model: SimilarityModel, reference: torch.Tensor,
                  localize: Localizer, n_keep: int, max_attempts: int, threshold: float,
                  reduce: Literal["mean", "max"] = "mean") -> Iterator[Verdict]:
    """One Verdict per generated image looked at. Pulls candidates lazily (the caller's generator may
    sample on demand) and stops at n_keep kept, at max_attempts images (a failed localization counts),
    or when the candidates run out; it never pulls an image it will not judge."""
    if n_keep < 0 or max_attempts < 0:
        raise ValueError(f"n_keep and max_attempts must be >= 0, got {n_keep}, {max_attempts}")
    kept = 0
    stream = iter(candidates)
    for attempt in range(max_attempts):
        if kept >= n_keep:
            return
        image = next(stream, None)
        if image is None:
            return
        box = localize(image)
        if box is None:
            yield Verdict(attempt, image, None, None, False)
            continue
        s = score(model.embed([image.crop(box)])[0], reference, reduce)
        kept += s >= threshold
        yield Verdict(attempt, image, box, s, s >= threshold)


SCORE_COLUMNS = ("attempt", "file", "score", "kept", "localized", "box")


def write_filtered(verdicts: Iterable[Verdict], out_dir: Path, *, n_keep: int, max_attempts: int,
                   keep_rejected: int | Literal["all"] = 15, config: dict | None = None) -> dict:
    """Consume the verdicts into out_dir/{kept,rejected}/<attempt>.png, scores.csv (one row per image
    looked at; `file` is empty for a rejected image not saved) and summary.json, atomically."""
    out_dir = Path(out_dir)
    rows, n_kept, n_saved_rejected, n_unlocalized = [], 0, 0, 0
    with atomic_dir(out_dir) as tmp:
        (tmp / "kept").mkdir()
        (tmp / "rejected").mkdir()
        bar = tqdm(verdicts, total=max_attempts, desc=f"filter {out_dir}", mininterval=5)
        for v in bar:
            name = f"{v.attempt:04d}.png"
            file = ""
            if v.kept:
                file, n_kept = f"kept/{name}", n_kept + 1
            elif keep_rejected == "all" or n_saved_rejected < keep_rejected:
                file, n_saved_rejected = f"rejected/{name}", n_saved_rejected + 1
            if file:
                v.image.save(tmp / file)
            n_unlocalized += not v.localized
            rows.append({"attempt": v.attempt, "file": file,
                         "score": "" if v.score is None else f"{v.score:.6f}",
                         "kept": int(v.kept), "localized": int(v.localized),
                         "box": "" if v.box is None else " ".join(map(str, v.box))})
            # refresh=False: a redraw on every image ignored mininterval, and inside the loop tqdm has not yet
            # stored its count, so each of those redraws showed 0 % (100 bars in the log).
            bar.set_postfix(kept=n_kept, refresh=False)
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=SCORE_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        (tmp / "scores.csv").write_text(buf.getvalue())
        stopped = ("n_keep" if n_kept >= n_keep else "max_attempts" if len(rows) >= max_attempts
                   else "candidates_exhausted")
        summary = {"attempts": len(rows), "kept": n_kept, "rejected": len(rows) - n_kept,
                   "not_localized": n_unlocalized, "n_keep": n_keep, "max_attempts": max_attempts,
                   "stopped": stopped, "config": config or {}}
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    if n_kept < n_keep:
        print(f"filter {out_dir}: kept {n_kept} of {n_keep} after {len(rows)} attempts (stopped: {stopped}); "
              "lower the threshold, raise max_attempts or check the generator")
    return summary


# --- the stage -----------------------------------------------------------------------------------


def build_similarity(cfg: FilterConfig, device: str = "cpu") -> tuple[SimilarityModel, object | None]:
    """The similarity model and the timm backbone for localization (None when not needed); with
    model="backbone" the two share one loaded backbone."""
    from prpg.core.models import load_backbone

    needs_backbone = cfg.model == "backbone" or cfg.localize != "none"
    backbone = load_backbone(cfg.backbone) if needs_backbone else None
    if cfg.model == "backbone":
        return BackboneModel(backbone, device=device, resize=cfg.backbone_resize), backbone
    return DreamSimModel(cfg.cache_dir, cfg.dreamsim_type, device=device), backbone


def build_localizer(cfg: FilterConfig, view: RealView, backbone, device: str = "cpu") -> Localizer:
    if cfg.localize == "none":
        return whole_image
    features = TimmPatchFeatures(backbone, cfg.dense_resolution, device, layout=cfg.dense_input)
    dense = DenseLocalizer(features, view.image, view.mask)
    if cfg.localize == "dense_otsu":
        return dense
    if cfg.persam == "reference":
        # The reference's point rule follows its backbone's name: spaced points for DINOv2 only.
        return ReferencePerSam(dense, *load_sam(cfg.sam, device), view.image, view.mask,
                               spaced="dinov2" in cfg.backbone, device=device)
    return PerSamLocalizer(dense, *load_sam(cfg.sam, device), n_points=cfg.persam_points, device=device)


def filter_instance(candidates: Iterable[Image.Image], ds: Dataset, instance: str, out_dir: Path,
                    cfg: FilterConfig, n_keep: int, device: str = "cpu") -> dict:
    """Filter generated images of one instance into out_dir (outputs/filtered/<instance>/<method>/)."""
    from prpg.core.paths import ensure_not_under_data

    ensure_not_under_data(Path(out_dir))
    views = real_views(ds, instance)
    model, backbone = build_similarity(cfg, device)
    reference = model.embed([v.crop for v in views])
    localize = build_localizer(cfg, views[0], backbone, device)
    verdicts = filter_stream(candidates, model=model, reference=reference, localize=localize, n_keep=n_keep,
                             max_attempts=cfg.max_attempts, threshold=cfg.threshold, reduce=cfg.reduce)
    return write_filtered(verdicts, out_dir, n_keep=n_keep, max_attempts=cfg.max_attempts,
                          keep_rejected=cfg.keep_rejected, config=dataclasses.asdict(cfg))
