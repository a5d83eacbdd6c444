"""evaluate.protocol "reference" vs "fixed": each reference rule re-derived here from its description
(docs/protocol.md §2.0-2.3, §5.16; prpg.evaluate.protocol) on synthetic cases, and "fixed" unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from prpg import report
from prpg.core import backbones
from prpg.core.backbones import IMAGENET_MEAN, IMAGENET_STD, Backbone, from_model, hub_resample
from prpg.evaluate.dense import reference_prediction, threshold_masks
from prpg.evaluate.geometry import PadGeometry, _sampled, box_cells, box_cells_sampled
from prpg.evaluate.metrics import DenseRecord, coco_inputs, retrieval_metrics
from prpg.evaluate.protocol import (
    dense_stats,
    fill_largest,
    global_feature,
    is_reference,
    mean_target,
    reference_box,
    target_pooling,
)
from tests.conftest import toybox_config

torch.set_num_threads(1)


def tiny_vit(seed=0, num_classes=0, patch=8):
    import timm

    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=4 * patch, patch_size=patch,
                             embed_dim=32, depth=2, num_heads=2, num_classes=num_classes,
                             dynamic_img_size=True).eval()


def test_protocol_field_defaults_to_fixed_and_rejects_others():
    assert toybox_config("evaluate").protocol == "fixed" and toybox_config("evaluate",
                                                                           protocol="reference").protocol == "reference"
    with pytest.raises(ValueError):
        is_reference("paper")


# 1. Ret column ---------------------------------------------------------------------------------------

def test_report_ret_is_ndcg_beside_the_paper_and_map_is_an_extra_column():
    assert report.TASK_LABELS["retrieval_ndcg"] == "Ret" and report.TASK_LABELS["retrieval"] == "Ret mAP"
    paper = report.paper_table()
    assert paper.loc["DINOv2 [paper]", "Ret PODS"] == pytest.approx(71.7)
    assert "Ret mAP PODS" not in paper.columns  # the paper has no mAP
    # NDCG by hand: 1 query, relevant items ranked 1st and 3rd of 4
    m = retrieval_metrics(np.array([[0.9, 0.5, 0.7, 0.1]]), np.array([True, True, False, False]))
    ideal = 1 + 1 / np.log2(3)
    assert m["retrieval_ndcg"] == pytest.approx((1 + 1 / np.log2(4)) / ideal)


# 3. segmentation GT ----------------------------------------------------------------------------------

def blob_with_hole_and_speck():
    m = np.zeros((40, 50), bool)
    m[5:25, 10:30] = True
    m[10:15, 15:20] = False  # a hole
    m[35, 45] = True  # a speck
    m[30:32, 2:4] = True  # a second small blob
    filled = np.zeros_like(m)
    filled[5:25, 10:30] = True
    return m, filled


def test_reference_seg_gt_is_the_filled_largest_contour_and_the_box_is_the_raw_masks():
    raw, filled = blob_with_hole_and_speck()
    assert np.array_equal(fill_largest(raw), filled)
    # detection GT: raw mask box (speck included), w = xmax - xmin as the reference writes it
    assert reference_box(raw) == (2.0, 5.0, 45.0 - 2.0, 35.0 - 5.0)
    rec = DenseRecord.from_masks(40, 50, fill_largest(raw), filled, 0.5, gt_box=reference_box(raw))
    gt, _ = coco_inputs([rec], "bbox")
    assert gt["annotations"][0]["bbox"] == [2.0, 5.0, 43.0, 30.0]
    # fixed keeps the raw mask and its tight box
    fixed = DenseRecord.from_masks(40, 50, raw, filled, 0.5)
    gt, _ = coco_inputs([fixed], "bbox")
    assert gt["annotations"][0]["bbox"] == [2.0, 5.0, 44.0, 31.0]
    assert fill_largest(np.zeros((4, 4), bool)) is None and reference_box(None) is None


# 5. detection box ------------------------------------------------------------------------------------

def test_reference_box_is_of_all_cleaned_foreground_and_the_mask_the_filled_largest_part():
    sim = np.zeros((64, 64))
    sim[10:30, 10:30] = 1.0  # big blob
    sim[40:46, 50:56] = 1.0  # smaller, well above min size
    fixed = threshold_masks([sim], min_size=4)[0]
    allfg = threshold_masks([sim], min_size=4, largest=False)[0]
    assert fixed[42, 52] == 0 and allfg[42, 52] == 1  # fixed keeps one component, reference sees both
    geom = PadGeometry(64, 64, 8, 8)
    feats = F.normalize(torch.randn(8, 8, 16, generator=torch.Generator().manual_seed(0)), dim=-1)
    train = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(1)), dim=-1)
    pred, box, score = reference_prediction(allfg, feats, geom, train,
                                            toybox_config("evaluate", protocol="reference"))
    ys, xs = np.nonzero(allfg)
    assert box == (xs.min(), ys.min(), xs.max() - xs.min(), ys.max() - ys.min())  # both blobs, reference w/h
    assert np.array_equal(pred, fixed)  # the mask: largest component filled, as ours
    cells = torch.zeros(8, 8, dtype=torch.bool)
    cells[1:6, 1:7] = True  # centres 12..44 (y) and 12..52 (x) lie in y 10..45, x 10..55
    expect = F.cosine_similarity(feats[cells].mean(0)[None], train).max()
    assert score == pytest.approx(float(expect), abs=1e-6)
    assert reference_prediction(None, feats, geom, train, toybox_config("evaluate"))[:2] == (None, None)


# 7. confidence cells ---------------------------------------------------------------------------------

def test_centre_in_box_11_vs_13_cells_on_1024x768():
    geom = PadGeometry(768, 1024, 64, 16)
    box = (7, 100, 201, 300)  # x 7..200: full cells 1..11, centres (16 i + 7.5) of cells 0..12
    assert box_cells(box, geom, "reference").any(0).sum() == 11
    assert box_cells_sampled(box, geom, "reference", "centre").any(0).sum() == 13


@pytest.mark.parametrize("grid", [64, 13, 7])
def test_sampled_cells_are_the_bilinear_resize_of_the_box_mask(grid):
    """The reference's own description: box mask at original resolution, bilinear to the grid, == 1 for
    the prediction, > 0 for train boxes (odd grids and sizes)."""
    rng = np.random.default_rng(grid)
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(grid + 3, 700, 2))
        x0, y0 = int(rng.integers(0, w - 1)), int(rng.integers(0, h - 1))
        x1, y1 = int(rng.integers(x0 + 1, w + 1)), int(rng.integers(y0 + 1, h + 1))
        m = torch.zeros(1, 1, h, w)
        m[..., y0:y1, x0:x1] = 1
        r = F.interpolate(m, size=(grid, grid), mode="bilinear")[0, 0]
        geom = PadGeometry(h, w, grid, 8)
        for rule, want in (("centre", r == 1), ("touch", r > 0)):
            if want.any():
                assert torch.equal(box_cells_sampled((x0, y0, x1, y1), geom, "reference", rule), want)
        # the rule is "centre in box": the analytic sampling agrees except where float32 rounding
        # leaves the reference's value a hair under 1
        centre = torch.from_numpy(_sampled(y0, y1, grid, h, grid / h, "centre")[:, None]
                                  & _sampled(x0, x1, grid, w, grid / w, "centre")[None, :])
        differ = centre != (r == 1)
        assert bool((r[differ] > 1 - 1e-5).all())


# 8. / 9. dense input statistics, MAE target -----------------------------------------------------------

def named(name: str, model=None) -> Backbone:
    bb = from_model("tiny", model or tiny_vit())
    bb.name = name
    return bb


def test_clip_dense_input_uses_imagenet_stats_under_reference_only():
    clip = named("clip_vitb16")
    assert clip.mean != IMAGENET_MEAN
    assert dense_stats(clip, "reference") == (IMAGENET_MEAN, IMAGENET_STD)
    assert dense_stats(clip, "fixed") == (clip.mean, clip.std)


def test_mae_target_is_the_masked_mean_under_reference_only():
    feats = torch.randn(4, 4, 8, generator=torch.Generator().manual_seed(0))
    canvas = np.zeros((32, 32), np.float32)
    canvas[0:16, 8:24] = 1  # cells (0..1, 1..2) fully covered
    want = F.normalize(feats[0:2, 1:3].reshape(-1, 8).mean(0), dim=0)
    assert torch.allclose(mean_target(feats, canvas), want, atol=1e-6)
    assert target_pooling(named("mae_vitb16"), "reference") == "mean"
    assert target_pooling(named("mae_vitb16"), "fixed") == "max+mean"
    assert target_pooling(named("dinov2_vitb14"), "reference") == "max+mean"


# 10. pretrained CLIP projection -----------------------------------------------------------------------

def test_projected_feature_is_the_checkpoint_head_on_the_cls(tmp_path):
    from timm.models import save_for_hf

    model = tiny_vit(num_classes=12)  # the head stands in for CLIP's 768 -> 512 proj
    save_for_hf(model, str(tmp_path))
    bb = backbones.load(tmp_path, projection=True)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(bb.embedding(x, "proj"), model(x), atol=1e-5)  # timm forward = head(norm CLS)
        assert bb.embedding(x, "cls").shape[-1] == 32
    assert global_feature(bb, "cls", "reference") == "proj" and global_feature(bb, "cls", "fixed") == "cls"
    plain = backbones.load(tmp_path)
    assert plain.projection is None and global_feature(plain, "cls", "reference") == "cls"
    with pytest.raises(ValueError, match="projection"):
        plain.embedding(x, "proj")


# 11. eval mode (dropout) ------------------------------------------------------------------------------

def lora_backbone(dropout=0.5):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny_vit(), LoraConfig(r=4, lora_alpha=4, lora_dropout=dropout, target_modules=["qkv"]))
    torch.manual_seed(3)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            p.data.normal_(0, 0.5)  # a trained adapter (B = 0 at init would hide the dropout)
    return from_model("tiny", model.eval())


def test_dropout_gap_measures_train_mode_and_eval_stays_deterministic():
    from PIL import Image

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(6)]
    bb = lora_backbone()
    a = backbones.embed_images(bb, images)
    assert torch.equal(a, backbones.embed_images(bb, images))  # ours: deterministic
    gap = backbones.dropout_gap(bb, images, seed=0)
    assert gap["mean_cos"] < 0.9999 and gap == backbones.dropout_gap(bb, images, seed=0)
    assert not bb.model.training  # mode restored


# 12. position embeddings -----------------------------------------------------------------------------

def cubic(t, a=-0.75):
    t = abs(t)
    if t <= 1:
        return (a + 2) * t**3 - (a + 3) * t**2 + 1
    if t < 2:
        return a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a
    return 0.0


def hand_resample(grid: np.ndarray, n: int) -> np.ndarray:
    """(M, M) -> (n, n): plain bicubic (a = -0.75, border clamp), sampled at (i + 0.5) M / (n + 0.1) - 0.5
    (scale factor (n + 0.1) / M), no antialiasing: the DINO / DINOv2 hub rule."""
    m = grid.shape[0]
    wts = np.zeros((n, m))
    for i in range(n):
        src = (i + 0.5) * m / (n + 0.1) - 0.5
        f = np.floor(src)
        for k in range(-1, 3):
            wts[i, int(np.clip(f + k, 0, m - 1))] += cubic(src - (f + k))
    return wts @ grid @ wts.T


@pytest.mark.parametrize("n", [3, 9])
def test_hub_resampling_is_plain_bicubic_with_offset_and_timm_differs(n):
    m, d = 5, 3
    pos = torch.randn(1, 1 + m * m, d, generator=torch.Generator().manual_seed(n))
    out = hub_resample(pos, (n, n), 1)
    assert torch.equal(out[:, :1], pos[:, :1])
    grid = pos[0, 1:].reshape(m, m, d).numpy()
    want = np.stack([hand_resample(grid[..., c].astype(np.float64), n) for c in range(d)], -1)
    assert np.allclose(out[0, 1:].reshape(n, n, d).numpy(), want, atol=1e-5)
    from timm.layers import resample_abs_pos_embed

    assert not torch.allclose(resample_abs_pos_embed(pos, (n, n), (m, m), 1), out, atol=1e-4)


def test_hub_pos_embed_context_switches_and_restores():
    bb = from_model("tiny", tiny_vit())
    x = torch.randn(1, 3, 48, 48, generator=torch.Generator().manual_seed(0))  # 6x6 from the native 4x4
    with torch.no_grad():
        before = bb.tokens(x)[1]
        with backbones.hub_pos_embed(bb):
            hub = bb.tokens(x)[1]
        after = bb.tokens(x)[1]
    assert torch.equal(before, after) and not torch.allclose(before, hub, atol=1e-4)
    assert "_pos_embed" not in vars(bb.model)
