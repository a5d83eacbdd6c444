"""Parity of the filter's localization with the reference (docs/protocol.md §1.3, §2.3), each derived here from
the protocol's description and checked against the reference mode:

- the dense input: the SAM-processor canvas (long side resized, normalized, padded square) at
  `filter.dense_resolution`, and a map on that grid mapped back to the right pixels;
- PerSAM's points: up to 5 within the top 10% of the map's range, spaced by sqrt(mean component area),
  for DINOv2; the 2 highest pixels otherwise;
- the 2 mask-mixing weights learned on the first train image (dice + focal, AdamW, cosine);
- two cascaded refinements (box + mask logits), each taking the mask SAM rates best;
- the paper experiment resolving to that mode.
"""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from prpg.filter.filtering import (
    SQUASH,
    DenseLocalizer,
    FilterConfig,
    ReferencePerSam,
    SamImage,
    TimmPatchFeatures,
    build_localizer,
    dice_loss,
    focal_loss,
    full_weights,
    inclusive_box,
    learn_mask_weights,
    mix,
    real_views,
    reference_points,
    spaced_points,
)
from tests.conftest import experiment_params, toybox_group, toybox_params
from tests.test_filtering import box_mask, colour_patches, iou, scene, tiny_sam  # noqa: F401 (fixture)

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# --- points ---------------------------------------------------------------------------------------


def described_points(sim: np.ndarray, n: int = 5) -> list[tuple[float, float]]:
    """§2.3 written out independently: threshold at the top 10% of the range, 8-connected components
    (scipy), spacing = floor(sqrt(mean area)) (at least 1), candidates in the reference's argpartition
    order, greedy: take a candidate when it is at least the spacing from every point taken."""
    thr = sim.max() - 0.1 * (sim.max() - sim.min())
    high = sim > thr
    labels, count = ndimage.label(high, structure=np.ones((3, 3)))
    areas = [int((labels == i).sum()) for i in range(1, count + 1)]
    spacing = max(math.floor(math.sqrt(sum(areas) / len(areas))), 1)
    k = int(high.sum())
    taken = []
    for idx in np.argpartition(sim.ravel(), -k)[-k:]:
        y, x = divmod(int(idx), sim.shape[1])
        if len(taken) < n and all(math.dist((x, y), t) >= spacing for t in taken):
            taken.append((x, y))
    return [(float(x), float(y)) for x, y in taken]


CENTRES = ((10, 15), (45, 20), (30, 70))  # (y, x)


def plateaus(size=(60, 90)) -> np.ndarray:
    """A smooth low background and three 3x3 plateaus at the top: each high region has area 9, so the
    spacing is 3, more than any two pixels of one plateau are apart (2.83)."""
    yy, xx = np.mgrid[: size[0], : size[1]]
    sim = 0.5 * np.exp(-((yy - 30) ** 2 + (xx - 45) ** 2) / 800)
    for cy, cx in CENTRES:
        window = (slice(cy - 1, cy + 2), slice(cx - 1, cx + 2))
        sim[window] = 1.0 - 0.01 * ((yy - cy) ** 2 + (xx - cx) ** 2)[window]  # a slight peak, no ties
    return sim


def test_spaced_points_take_one_point_per_separate_high_region():
    sim = plateaus()
    points = spaced_points(sim)
    thr = sim.max() - 0.1 * (sim.max() - sim.min())
    assert len(points) == 3
    assert all(sim[int(y), int(x)] > thr for x, y in points)
    near = sorted(min(range(3), key=lambda i, p=p: math.dist((p[1], p[0]), CENTRES[i])) for p in points)
    assert near == [0, 1, 2]
    assert points == described_points(sim)


def test_spaced_points_stop_at_five_and_keep_their_spacing():
    rng = np.random.default_rng(0)
    sim = ndimage.gaussian_filter(rng.normal(size=(40, 240)), 4)  # low noise
    # one long ridge above it all: one component, spacing sqrt(880) -> 29 px along 220 px
    sim[18:22, 10:230] = sim.max() + 1 + rng.random((4, 220)) * 0.01
    points = spaced_points(sim)
    assert points == described_points(sim)
    assert len(points) == 5
    high = sim > sim.max() - 0.1 * (sim.max() - sim.min())
    labels, count = ndimage.label(high, structure=np.ones((3, 3)))
    spacing = max(int(math.sqrt(high.sum() / count)), 1)
    assert all(math.dist(a, b) >= spacing for a, b in itertools.combinations(points, 2))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spaced_points_match_the_description_on_random_maps(seed):
    rng = np.random.default_rng(seed)
    sim = ndimage.gaussian_filter(rng.normal(size=(64, 96)), 3)
    assert spaced_points(sim) == described_points(sim)


def test_other_backbones_take_the_two_highest_pixels_even_adjacent():
    sim = np.zeros((20, 30))
    sim[5, 7], sim[5, 8], sim[15, 25] = 1.0, 0.99, 0.8
    assert reference_points(sim, spaced=False) == [(7.0, 5.0), (8.0, 5.0)]
    assert reference_points(sim, spaced=True) == spaced_points(sim)


# --- mask weights ---------------------------------------------------------------------------------


def test_dice_and_focal_losses_follow_their_formulas():
    rng = np.random.default_rng(0)
    logits, target = rng.normal(size=(12, 9)), (rng.random((12, 9)) > 0.6).astype(np.float64)
    p = 1 / (1 + np.exp(-logits))
    dice = 1 - (2 * (p * target).sum() + 1) / (p.sum() + target.sum() + 1)
    ce = -(target * np.log(p) + (1 - target) * np.log(1 - p))
    p_t = np.where(target == 1, p, 1 - p)
    focal = (np.where(target == 1, 0.25, 0.75) * ce * (1 - p_t) ** 2).mean()
    lt, tt = torch.from_numpy(logits), torch.from_numpy(target)
    assert float(dice_loss(lt, tt)) == pytest.approx(dice, rel=1e-9)
    assert float(focal_loss(lt, tt)) == pytest.approx(focal, rel=1e-9)


def test_learned_weights_reduce_the_loss_on_the_reference_mask():
    """Three candidate masks, the third the right one: the learned mix moves weight onto it."""
    target = box_mask((6, 4, 20, 16), size=(32, 24))
    right = torch.from_numpy(np.where(target, 4.0, -4.0)).float()
    too_big = torch.full_like(right, 3.0)
    shifted = torch.roll(right, shifts=(6, 8), dims=(0, 1))
    logits = torch.stack([too_big, shifted, right])
    t = torch.from_numpy(target.astype(np.float32))

    def loss(weights):
        m = mix(logits, weights)
        return float(dice_loss(m, t) + focal_loss(m, t))

    weights = learn_mask_weights(logits, target, steps=2000)
    start = full_weights(torch.full((2,), 1 / 3))
    assert weights.shape == (3,) and float(weights.sum()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(start, torch.full((3,), 1 / 3))
    assert loss(weights) < loss(start) - 0.05
    assert weights[2] > 1 / 3 + 0.3 and weights[0] < 1 / 3
    # fewer steps move less: the cosine schedule over `steps` anneals to the end either way
    assert loss(weights) < loss(learn_mask_weights(logits, target, steps=50))


# --- refinement -----------------------------------------------------------------------------------


def test_reference_persam_learns_weights_then_refines_twice_with_the_best_iou_mask(tiny_sam, monkeypatch):
    from prpg.filter.filtering import load_sam

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    sam, processor = load_sam(tiny_sam)
    ref_box = (8, 8, 32, 40)
    dense = DenseLocalizer(colour_patches(4), scene(ref_box), box_mask(ref_box))

    calls = []
    predict = SamImage.predict

    def spy(self, points, box=None, mask_prompt=None):
        out = predict(self, points, box, mask_prompt)
        calls.append(SimpleNamespace(points=points, box=box, prompt=mask_prompt, out=out))
        return out

    monkeypatch.setattr(SamImage, "predict", spy)
    loc = ReferencePerSam(dense, sam, processor, scene(ref_box), box_mask(ref_box), spaced=True, steps=20)
    # set-up: one call with the top-1 point of the train image's own map, on the object
    assert len(calls) == 1 and len(calls[0].points) == 1 and calls[0].box is None
    x, y = calls[0].points[0]
    assert 8 <= x < 32 and 8 <= y < 40
    assert loc.weights.shape == (3,) and float(loc.weights.sum()) == pytest.approx(1.0, abs=1e-6)

    calls.clear()
    image = scene((30, 20, 58, 44), size=(80, 48), seed=3)  # odd aspect: SAM pads, outputs are un-padded
    masks = loc.steps(image)
    assert masks is not None and len(masks) == 3 and len(calls) == 3
    first, ref1, ref2 = calls
    assert first.points == spaced_points(dense.similarity(image)) == ref1.points == ref2.points
    assert first.box is None and first.prompt is None
    assert first.out.high.shape == (3, 48, 80) and first.out.low.shape[0] == 3
    mixed = (first.out.high * loc.weights[:, None, None]).sum(0) > 0
    assert np.array_equal(masks[0], mixed.numpy())
    # refinement 1: the mixed mask's box (max inclusive) and the mixed low-res logits
    assert ref1.box == inclusive_box(mixed.numpy())
    assert torch.allclose(ref1.prompt, (first.out.low * loc.weights[:, None, None]).sum(0))
    best1 = int(ref1.out.iou.argmax())
    assert np.array_equal(masks[1], (ref1.out.high[best1] > 0).numpy())
    # refinement 2: that mask's box and its low-res logits; the final mask is the best-rated again
    assert ref2.box == inclusive_box(masks[1])
    assert torch.equal(ref2.prompt, ref1.out.low[best1])
    best2 = int(ref2.out.iou.argmax())
    assert np.array_equal(masks[2], (ref2.out.high[best2] > 0).numpy())
    assert np.array_equal(loc.mask(image), masks[2]) and masks[2].shape == (48, 80)


def test_inclusive_box_is_the_reference_box_prompt():
    m = np.zeros((10, 12), bool)
    m[2:5, 3:9] = True
    assert inclusive_box(m) == (3, 2, 8, 4)
    assert inclusive_box(np.zeros((3, 3), bool)) is None


# --- the dense input ------------------------------------------------------------------------------


class ColourViT(torch.nn.Module):
    """A timm-shaped stand-in: each patch's feature is the mean of its normalized input pixels, so an
    object of one colour lights up wherever it lands on the grid. Records the inputs it sees."""

    num_prefix_tokens = 0

    def __init__(self, patch=8, size=32):
        super().__init__()
        self.patch_embed = SimpleNamespace(patch_size=(patch, patch))
        self.pretrained_cfg = {"input_size": (3, size, size), "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                               "interpolation": "bilinear", "crop_pct": 1.0}
        self.inputs = []

    def forward_features(self, x):
        self.inputs.append(x.detach().clone())
        p = self.patch_embed.patch_size[0]
        return F.avg_pool2d(x, p).flatten(2).transpose(1, 2)


def test_sam_pad_input_is_the_described_canvas():
    """Long side resized to the dense resolution, aspect kept (SAM's int(x + 0.5)), normalized, zero
    (= the mean colour) padding bottom and right."""
    model = ColourViT(patch=8)
    features = TimmPatchFeatures(model, resolution=64, layout="sam_pad")
    image = Image.new("RGB", (90, 40), (255, 128, 0))
    assert features(image).shape == (8, 8, 3)
    x = model.inputs[-1][0]
    assert x.shape == (3, 64, 64)
    h = int(40 * 64 / 90 + 0.5)  # 28 rows of image, 36 of padding
    mean, std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
    expected = (torch.tensor([1.0, 128 / 255, 0.0]) - mean) / std
    assert torch.allclose(x[:, :h, :].mean((1, 2)), expected, atol=1e-3)
    assert torch.count_nonzero(x[:, h:, :]) == 0
    # squash fills the square with the image instead
    model.inputs.clear()
    TimmPatchFeatures(model, resolution=64, layout="squash")(image)
    assert torch.allclose(model.inputs[-1][0].mean((1, 2)), expected, atol=1e-3)


def test_a_box_found_on_the_padded_grid_maps_back_to_the_right_pixels():
    size, true_box = (96, 40), (54, 6, 86, 34)  # wide image, object on the right: the grid is 1/2 padding
    ref_box = (10, 8, 40, 30)
    for layout in ("sam_pad", "squash"):
        features = TimmPatchFeatures(ColourViT(patch=4), resolution=96, layout=layout)
        loc = DenseLocalizer(features, scene(ref_box, size=size), box_mask(ref_box, size=size))
        box = loc(scene(true_box, size=size, seed=1))
        assert iou(box, true_box) > 0.75, (layout, box)
    # The same padded-grid map read as if squashed lands on the wrong rows: the padding is real geometry.
    features = TimmPatchFeatures(ColourViT(patch=4), resolution=96, layout="sam_pad")
    loc = DenseLocalizer(features, scene(ref_box, size=size), box_mask(ref_box, size=size))
    image = scene(true_box, size=size, seed=1)
    loc.layout = SQUASH
    wrong = loc(image)
    assert iou(wrong, true_box) < 0.6



# --- config: the value reaches the backbone; the paper resolves to the reference mode -------------


def test_dense_resolution_reaches_the_backbone_input(tmp_path):
    """params -> FilterStageConfig -> build_localizer -> the backbone's input size and grid."""
    from prpg.data import load_dataset
    from prpg.core.params import parse_group
    from tests.conftest import make_pods_tree

    view = real_views(load_dataset(make_pods_tree(tmp_path / "pods")), "mug_00")[0]
    for resolution, layout, side in ((64, "sam_pad", 64), (None, "sam_pad", 32), (48, "squash", 48)):
        model = ColourViT(patch=8, size=32)
        values = {"dense_input": layout, "localize": "dense_otsu"}
        if resolution:
            values["dense_resolution"] = resolution
        cfg = parse_group("filter", toybox_group("filter", values))
        loc = build_localizer(cfg, view, model)
        assert model.inputs[-1].shape == (1, 3, side, side)
        assert loc.patch_features.grid == (side // 8, side // 8)
        assert type(loc.layout).__name__ == ("PaddedLayout" if layout == "sam_pad" else "SquashLayout")


def test_paper_filter_is_the_reference_mode_and_the_toybox_default_is_unchanged():
    paper = experiment_params("pods-dinov2_vitb14", "filter")["filter"]
    assert (paper.localize, paper.persam) == ("persam", "reference")
    assert (paper.dense_input, paper.dense_resolution) == ("sam_pad", 896)
    assert 896 // 14 == 64  # the reference's 64x64 grid for /14 backbones
    toybox = toybox_params()["filter"]
    assert (toybox.localize, toybox.persam, toybox.dense_input, toybox.dense_resolution) == (
        "dense_otsu", "simple", "squash", None)


def test_paper_experiments_resolve_to_the_reference_localization():
    """Every paper experiment's filter group (params.yaml + its overrides) is the reference's localization."""
    from prpg.runs.experiments import names_in

    for name in names_in():  # the paper runs and toybox
        if name != "toybox":
            cfg = experiment_params(name, "filter")["filter"]
            got = (cfg.localize, cfg.persam, cfg.dense_input, cfg.dense_resolution, cfg.backbone)
            assert got == ("persam", "reference", "sam_pad", 896, "dinov2_vitb14"), name
