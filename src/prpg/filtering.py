"""Stage "filter": keep the generated images that look like the instance (protocol §1.3, reference
generate_data.py --filter).

Once per instance: crop each real train image to the bounding box of its mask (a box crop with its
background, not a cut-out, as the reference) and embed the crops. Per generated image: localize the
object, crop the image to that box, embed, score = MEAN cosine to the real crops (the paper; `max` as
an option), keep if score >= threshold (0.6). The kept set is the full generated images.

Fixed against the reference (protocol §5.13): images and masks pair by stem through the dataset
reader, not by two globs' order; any image extension; and an image whose localization fails still
counts as an attempt, so the loop always ends after `max_attempts`.

Localization of the generated object:
- "dense_otsu" (toybox default): cosine of the backbone's patch features to the instance's feature
  (from the first train image's mask), Otsu threshold, largest component; the dense-eval recipe (§2.3)
- "persam": SAM prompted with the top points of that similarity map, one call (reference: PerSAM with
  learned mask-mixing weights and two refinement passes, SAM ViT-H)
- "none": the whole image
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass as plain_dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from tqdm.auto import tqdm

from prpg.atomic import atomic_dir
from prpg.configs import DreamSimType, FilterConfig  # noqa: F401 (re-exported)
from prpg.data import Dataset, DatasetError, load_image, load_mask, mask_to_box
from prpg.similarity import BackboneModel, DreamSimModel, SimilarityModel, backbone_data_config

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), x1/y1 exclusive, as prpg.data.mask_to_box
Localizer = Callable[[Image.Image], Box | None]

# Otsu specks smaller than this fraction of the image are dropped before closing (the reference drops
# < 100 px on photos of ~1 Mpx; a fraction keeps that meaning on 64 px toybox images).
MIN_OBJECT_FRACTION = 1e-3
PERSAM_POINT_SPACING = 0.1  # prompt points at least this fraction of the image's long side apart


# The reference: DreamSim ensemble, PerSAM (SAM ViT-H) located with DINOv2-B/14 patch features on the
# 64x64 grid of the dense eval (896 px for /14), threshold 0.6 on the mean, max_image_count 5000.
PAPER_FILTER = FilterConfig(model="dreamsim", backbone="dinov2_vitb14", dreamsim_type="ensemble",
                            localize="persam", dense_resolution=896)
# Toybox: filtering on toybox uses the toybox encoder, for similarity and localization alike.
TOYBOX_FILTER = FilterConfig(model="backbone", backbone="toybox", localize="dense_otsu")


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


class TimmPatchFeatures:
    """(gh, gw, D) L2-normalised last-layer patch features of a timm ViT (CLS/register tokens dropped).
    The image is resized (squashed) to a square of `resolution` px, so the grid maps back onto the
    image by a plain resize."""

    def __init__(self, model, resolution: int | None = None, device: str = "cpu"):
        from torchvision import transforms as T

        cfg = backbone_data_config(model)
        self.model, self.device = model.eval().to(device), device
        ph, pw = model.patch_embed.patch_size
        side = resolution or cfg["input_size"][-1]
        self.grid = (max(1, round(side / ph)), max(1, round(side / pw)))
        size = (self.grid[0] * ph, self.grid[1] * pw)
        self.transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                                    T.Normalize(cfg["mean"], cfg["std"])])

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


def similarity_map(features: torch.Tensor, target: torch.Tensor, size: tuple[int, int]) -> np.ndarray | None:
    """Cosine to the target per patch, upsampled (bilinear) to `size` = (H, W), min-max to [0, 1];
    None when the map is flat (nothing stands out)."""
    sim = (features @ target)[None, None]
    up = F.interpolate(sim, size=size, mode="bilinear", align_corners=False)[0, 0]
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
        self.target = target_feature(patch_features(reference_image), reference_mask)

    def similarity(self, image: Image.Image) -> np.ndarray | None:
        return similarity_map(self.patch_features(image), self.target, (image.height, image.width))

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

    from prpg.models import _missing, hub_offline

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
            bar.set_postfix(kept=n_kept)
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
    from prpg.models import load_backbone

    needs_backbone = cfg.model == "backbone" or cfg.localize != "none"
    backbone = load_backbone(cfg.backbone) if needs_backbone else None
    if cfg.model == "backbone":
        return BackboneModel(backbone, device=device, resize=cfg.backbone_resize), backbone
    return DreamSimModel(cfg.cache_dir, cfg.dreamsim_type, device=device), backbone


def build_localizer(cfg: FilterConfig, view: RealView, backbone, device: str = "cpu") -> Localizer:
    if cfg.localize == "none":
        return whole_image
    dense = DenseLocalizer(TimmPatchFeatures(backbone, cfg.dense_resolution, device), view.image, view.mask)
    if cfg.localize == "dense_otsu":
        return dense
    return PerSamLocalizer(dense, *load_sam(cfg.sam, device), n_points=cfg.persam_points, device=device)


def filter_instance(candidates: Iterable[Image.Image], ds: Dataset, instance: str, out_dir: Path,
                    cfg: FilterConfig, n_keep: int, device: str = "cpu") -> dict:
    """Filter generated images of one instance into out_dir (outputs/filtered/<instance>/<method>/)."""
    from prpg.paths import ensure_not_under_data

    ensure_not_under_data(Path(out_dir))
    views = real_views(ds, instance)
    model, backbone = build_similarity(cfg, device)
    reference = model.embed([v.crop for v in views])
    localize = build_localizer(cfg, views[0], backbone, device)
    verdicts = filter_stream(candidates, model=model, reference=reference, localize=localize, n_keep=n_keep,
                             max_attempts=cfg.max_attempts, threshold=cfg.threshold, reduce=cfg.reduce)
    return write_filtered(verdicts, out_dir, n_keep=n_keep, max_attempts=cfg.max_attempts,
                          keep_rejected=cfg.keep_rejected, config=dataclasses.asdict(cfg))
