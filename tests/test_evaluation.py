"""prpg.evaluate against sklearn, pycocotools and hand computations on constructed cases."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import average_precision_score, ndcg_score

from prpg.data import load_dataset
from prpg.evaluate import (
    TASKS,
    DenseRecord,
    PadGeometry,
    aggregate,
    bootstrap_ci,
    box_cells,
    cached_dense_features,
    cached_features,
    classification_ap,
    coco_metrics,
    dense_records,
    embed_records,
    evaluate_instance,
    global_metrics,
    predict,
    retrieval_metrics,
)
from prpg.evaluate.dense import box_feature, instance_target
from prpg.evaluate.geometry import canvas_mask, grid_to_image
from prpg.evaluate.metrics import coco_inputs, run_cocoeval
from tests.conftest import TEST_SPLITS, make_pods_tree, toybox_config


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# --- a Backbone with the prpg.core.backbones interface: a tiny random timm ViT -------------------------


@dataclass
class TinyBackbone:
    name: str
    model: torch.nn.Module
    patch_size: int = 8
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    resize: int = 32
    crop: int = 32

    def global_transform(self):
        from torchvision import transforms as T

        return T.Compose([T.Resize(self.resize), T.CenterCrop(self.crop), T.ToTensor(),
                          T.Normalize(self.mean, self.std)])

    def tokens(self, x):
        out = self.model.forward_features(x)
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return out[:, 0], out[:, self.model.num_prefix_tokens :].reshape(len(x), h, w, -1)

    def embedding(self, x, feature="cls"):
        cls, patches = self.tokens(x)
        return cls if feature == "cls" else torch.cat([cls, patches.mean((1, 2))], dim=-1)


def tiny_backbone(name: str, seed: int) -> TinyBackbone:
    import timm

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8,
                              embed_dim=32, depth=1, num_heads=2, dynamic_img_size=True)
    return TinyBackbone(name, model.eval())


# --- classification ------------------------------------------------------------------------------


def test_classification_ap_with_ties_matches_hand_and_sklearn():
    # Scores as max cosine of unit vectors; the first two tie at 0.9.
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.9, 0.9, 0.5, 0.1])
    # Tied pair = one threshold: P = 1/2 at R = 1/2, then P = 2/3 at R = 1: AP = .5 * .5 + .5 * 2/3.
    assert classification_ap(labels, scores) == pytest.approx(7 / 12)
    assert classification_ap(labels, scores) == pytest.approx(average_precision_score(labels, scores))
    assert classification_ap(np.zeros(4), scores) is None  # no positives: undefined, left out


def unit_rows(a) -> torch.Tensor:
    return F.normalize(torch.as_tensor(np.asarray(a, np.float32)), dim=-1)


def world(n_inst=10, n_train=3, n_test=60, dim=64, seed=0, oracle=False):
    """Embeddings of n_inst instances: one-hot per instance (oracle) or random."""
    rng = np.random.default_rng(seed)
    train_of = [f"i{k}" for k in range(n_inst) for _ in range(n_train)]
    test_of = [f"i{k}" for k in range(n_inst) for _ in range(n_test)]
    if oracle:
        tr, te = np.eye(dim)[[int(n[1:]) for n in train_of]], np.eye(dim)[[int(n[1:]) for n in test_of]]
    else:
        tr, te = rng.normal(size=(len(train_of), dim)), rng.normal(size=(len(test_of), dim))
    return unit_rows(tr), train_of, unit_rows(te), test_of


def test_oracle_features_are_perfect_and_random_features_are_at_chance():
    tr, train_of, te, test_of = world(oracle=True)
    m = global_metrics(tr, train_of, te, test_of, "i3")
    assert m == {"classification": 1.0, "retrieval": 1.0, "retrieval_ndcg": pytest.approx(1.0),
                 "retrieval_mrr": 1.0, "retrieval_top10": 1.0}

    tr, train_of, te, test_of = world(oracle=False)
    ms = [global_metrics(tr, train_of, te, test_of, f"i{k}") for k in range(10)]
    assert np.mean([m["classification"] for m in ms]) == pytest.approx(0.1, abs=0.04)  # positive rate
    # 3 relevant of 30 gallery items: a random ranking has AP ~ 0.19, first hit at rank ~ 8.
    assert np.mean([m["retrieval"] for m in ms]) == pytest.approx(0.19, abs=0.05)


# --- retrieval -----------------------------------------------------------------------------------


def dcg(gains) -> float:
    return sum(g / math.log2(i + 2) for i, g in enumerate(gains))


def test_retrieval_ndcg_mrr_topk_by_hand():
    relevant = np.array([0, 1, 0, 0, 1, 0], bool)
    sims = np.array([[0.9, 0.8, 0.1, 0.2, 0.3, 0.0],  # ranking: irr, REL, REL, ...
                     [0.5, 0.2, 0.5, 0.1, 0.5, 0.0]])  # items 0, 2 (irr) tie with 4 (rel) at the top
    m = retrieval_metrics(sims, relevant, top_k=2)
    ideal = dcg([1, 1])
    # sklearn NDCG averages the gains of tied items: the tied top 3 hold one relevant item.
    ndcg = [dcg([0, 1, 1]) / ideal, (dcg([1 / 3, 1 / 3, 1 / 3]) + 1 / math.log2(5)) / ideal]
    assert m["retrieval_ndcg"] == pytest.approx(np.mean(ndcg))
    assert m["retrieval_ndcg"] == pytest.approx(ndcg_score(np.tile(relevant, (2, 1)), sims))
    # First relevant item: rank 2; rank 3 for the tie (irrelevant tied items count as ranked before it).
    assert m["retrieval_mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["retrieval_top2"] == 0.5
    ap0 = (1 / 2 + 2 / 3) / 2
    assert m["retrieval"] == pytest.approx((ap0 + average_precision_score(relevant, sims[1])) / 2)
    assert retrieval_metrics(sims, relevant, top_k=3)["retrieval_top3"] == 1.0
    assert retrieval_metrics(sims[:0], relevant) is None  # no query: undefined
    # A constant model gets no credit from the tie rule.
    flat = retrieval_metrics(np.zeros((1, 6)), relevant, top_k=2)
    assert flat["retrieval_mrr"] == pytest.approx(1 / 5) and flat["retrieval_top2"] == 0.0


# --- COCO detection / segmentation ---------------------------------------------------------------


def box_mask(box, size=(40, 60)) -> np.ndarray:
    m = np.zeros(size, bool)
    x0, y0, x1, y1 = box
    m[y0:y1, x0:x1] = True
    return m


def rec(gt=None, pred=None, score=0.5, split=None) -> DenseRecord:
    g = None if gt is None else box_mask(gt)
    p = None if pred is None else box_mask(pred)
    return DenseRecord.from_masks(40, 60, g, p, score, split)


B = (10, 10, 30, 30)  # 20 x 20 = 400 px: a "small" COCO object in both types, so area ranges agree


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_coco_perfect_and_false_positive_on_a_non_target_image(iou_type):
    perfect = coco_metrics([rec(B, B, 0.5), rec(pred=None)], iou_type)
    assert perfect["ap"] == pytest.approx(1.0) and perfect["ap50"] == pytest.approx(1.0)
    assert perfect["f1"] == pytest.approx(1.0, abs=1e-5) and perfect["f1_50"] == pytest.approx(1.0, abs=1e-5)

    # A detection on a non-target image (no GT of category 1) is a false positive ranked by its score.
    above = coco_metrics([rec(B, B, 0.5), rec(pred=B, score=0.9)], iou_type)
    assert above["ap"] == pytest.approx(0.5) and above["ap50"] == pytest.approx(0.5)
    assert above["f1"] == pytest.approx(2 * 0.5 / 1.5, abs=1e-5)  # P = 1/2 at every recall point, R = 1
    below = coco_metrics([rec(B, B, 0.5), rec(pred=B, score=0.1)], iou_type)
    assert below["ap"] == pytest.approx(1.0)  # ranked after the only TP: AP does not see it


def test_empty_prediction_is_no_record_same_as_the_references_category_0_record():
    records = [rec(B, B, 0.7), rec(B, None), rec(pred=B, score=0.3)]
    gt, dets = coco_inputs(records, "bbox")
    assert len(dets) == 2  # the empty prediction wrote nothing
    ours = run_cocoeval(gt, dets, "bbox").stats
    ref = run_cocoeval(gt, dets + [{"image_id": 2, "category_id": 0, "bbox": [0, 0, 0, 0], "score": 0.0}],
                       "bbox").stats
    np.testing.assert_allclose(ours, ref)
    # 101-point AP: recall reaches 1/2 at precision 1 and nothing further.
    assert coco_metrics(records, "bbox")["ap"] == pytest.approx(51 / 101)
    nothing = coco_metrics([rec(B, None), rec(pred=None)], "segm")  # GT, but no detection at all
    assert nothing == {"ap": 0.0, "ap50": 0.0, "f1": 0.0, "f1_50": 0.0}


def test_empty_gt_mask_does_not_crash_and_counts_its_prediction_as_a_false_positive():
    empty = DenseRecord.from_masks(40, 60, np.zeros((40, 60), bool), box_mask(B), 0.9)
    assert empty.gt is None and empty.pred is not None
    assert coco_metrics([empty], "segm") is None  # no ground truth at all: undefined, left out
    assert coco_metrics([empty, rec(B, B, 0.5)], "bbox")["ap"] == pytest.approx(0.5)


# --- geometry and the dense pipeline -------------------------------------------------------------


def test_box_cells_full_cells_or_touched_never_empty():
    geom = PadGeometry(64, 64, grid=8, patch=8)  # 1 px = 1/8 cell
    cells = box_cells((8, 8, 32, 24), geom)
    assert cells.sum() == 3 * 2 and cells[1:3, 1:4].all()
    part = box_cells((4, 4, 20, 20), geom)  # covers cell (1, 1) fully, others partly
    assert part.sum() == 1 and part[1, 1]
    tiny = box_cells((9, 9, 12, 11), geom)  # inside one cell, covers none fully: the touched cell
    assert tiny.sum() == 1 and tiny[1, 1]
    # Non-square: the image fills the top half of the canvas; "reference" stretches over the padding.
    wide = PadGeometry(32, 64, grid=8, patch=8)
    assert box_cells((0, 0, 64, 32), wide).sum() == 8 * 4
    assert box_cells((0, 0, 64, 32), wide, "reference").sum() == 8 * 8


def test_canvas_mask_and_map_round_trip_on_a_non_square_image():
    geom = PadGeometry(48, 96, grid=8, patch=4)
    assert geom.side == 32 and geom.resized == (16, 32)
    m = canvas_mask(box_mask((24, 12, 72, 36), (48, 96)), geom)
    assert m.shape == (32, 32) and m[16:].max() == 0 and m[5:11, 9:23].min() == pytest.approx(1.0)
    grid = torch.zeros(8, 8)
    grid[1:3, 2:6] = 1.0  # the object's cells
    back = grid_to_image(grid, geom)
    assert back.shape == (48, 96) and back[24, 48] > 0.9 and back[2, 2] < 0.1


def object_features(geom: PadGeometry, cells, dim=16, seed=0) -> torch.Tensor:
    """(g, g, D) unit features: e0 on the object's cells, e1 elsewhere in the image, e2 on the padding."""
    rng = np.random.default_rng(seed)
    f = np.tile(np.eye(dim)[1], (geom.grid, geom.grid, 1))
    h, w = geom.resized
    f[math.ceil(h / geom.patch) :, :] = np.eye(dim)[2]
    f[:, math.ceil(w / geom.patch) :] = np.eye(dim)[2]
    f[cells] = np.eye(dim)[0]
    return F.normalize(torch.as_tensor(f + 0.05 * rng.normal(size=f.shape), dtype=torch.float32), dim=-1)


def iou(a, b) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("size", [(64, 64), (48, 96)])  # (H, W) of the test image: square and wide
def test_dense_pipeline_finds_a_known_object_and_fixed_geometry_scores_it_best(size):
    h, w = size
    geom = PadGeometry(h, w, grid=8, patch=4)
    obj = (w // 4, h // 4, 3 * w // 4, 3 * h // 4)  # original px; on the grid rows/cols of the object
    feats = object_features(geom, box_cells(obj, geom).numpy())
    # The train image is square (its box maps onto the grid alike in both modes), its GT box = object.
    tgeom, tobj = PadGeometry(64, 64, grid=8, patch=4), (16, 16, 48, 48)
    train = object_features(tgeom, box_cells(tobj, tgeom).numpy(), seed=1)
    target = instance_target([train], [box_mask(tobj, (64, 64))], [tgeom])
    scores = {}
    for mode in ("fixed", "reference"):
        cfg = toybox_config("evaluate", box_geometry=mode)
        train_box = box_feature(train, tobj, tgeom, mode)[None]
        mask, scores[mode] = predict(feats, geom, target, train_box, cfg)
        assert mask is not None and mask.shape == size
        assert iou(mask, box_mask(obj, size)) > 0.5
    assert scores["fixed"] > 0.95
    if h == w:
        assert scores["fixed"] == pytest.approx(scores["reference"])
    else:  # reference: the test box stretched over background and padding rows (weak point 16)
        assert scores["fixed"] > scores["reference"] + 0.3


def test_batched_threshold_masks_are_the_per_map_masks_exactly():
    from scipy.ndimage import gaussian_filter

    from prpg.evaluate.dense import default_min_size, threshold_mask, threshold_masks

    rng = np.random.default_rng(0)
    maps = []
    for k in range(60):  # smooth blobs, speckle (small objects, holes, many equal-size components), shapes
        shape = [(48, 48), (40, 56), (16, 16)][k % 3]
        m = gaussian_filter(rng.standard_normal(shape), sigma=[0.5, 1.0, 2.5, 4.0][k % 4])
        maps.append((m - m.min()) / (m.max() - m.min()))
    tie = np.zeros((16, 16))
    tie[2:5, 2:5] = tie[10:13, 10:13] = 1.0  # two equal largest components: the first in raster order wins
    ring = np.zeros((16, 16))
    ring[3:12, 3:12], ring[6:9, 6:9] = 1.0, 0.2  # a hole to fill
    maps += [tie, ring, np.eye(16)]  # the diagonal: 8-connected, one pixel per row, cleaned away
    for min_size in (None, 1, 5, 40):
        batched = threshold_masks(maps, min_size)
        for k, (m, got) in enumerate(zip(maps, batched)):
            want = threshold_mask(m, min_size or default_min_size(*m.shape))
            assert (got is None) == (want is None), (k, min_size)
            if want is not None:
                np.testing.assert_array_equal(got, want, err_msg=f"map {k}, min_size {min_size}")
    assert threshold_masks([tie])[0][3, 3] and not threshold_masks([tie])[0][11, 11]
    assert threshold_masks([ring])[0][7, 7]
    assert sum(m is None for m in threshold_masks(maps, 40)) > 0 and threshold_masks([]) == []


def test_flat_similarity_gives_no_prediction():
    geom = PadGeometry(32, 32, grid=4, patch=8)
    feats = F.normalize(torch.ones(4, 4, 8), dim=-1)
    assert predict(feats, geom, feats[0, 0], feats[0, 0][None], toybox_config("evaluate")) == (None, 0.0)


def test_persam_mode_runs_with_a_tiny_random_sam():
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    sam_cfg = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=1, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[0],
                           num_pos_feats=8, mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
    )
    processor = SamProcessor(SamImageProcessor(
        size={"longest_edge": 64}, pad_size={"height": 64, "width": 64}, mask_size={"longest_edge": 16},
        mask_pad_size={"height": 16, "width": 16}))
    geom = PadGeometry(48, 96, grid=8, patch=4)
    obj = (24, 12, 72, 36)
    feats = object_features(geom, box_cells(obj, geom).numpy())
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 96, 3), dtype=np.uint8))
    cfg = toybox_config("evaluate", dense_mode="persam")
    mask, score = predict(feats, geom, feats[2, 3], feats[2, 3][None], cfg, image=image,
                          sam=(SamModel(sam_cfg).eval(), processor))
    assert mask is not None and mask.shape == (48, 96) and mask.dtype == bool and -1 <= score <= 1


def test_persam_without_sam_weights_is_a_clear_error(tmp_path, monkeypatch):
    from prpg.core.models import ModelNotAvailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = make_pods_tree(tmp_path / "pods", n_test=1, n_dense=1)
    cfg = toybox_config("evaluate", tasks=("dense",), dense_mode="persam", sam=str(tmp_path / "no-sam"),
                        dense_grid=4)
    with pytest.raises(ModelNotAvailableError, match="no-sam"):
        evaluate_instance(load_dataset(root), "mug_01", {"pretrained": tiny_backbone("tiny", 0)}, cfg)


# --- aggregation ---------------------------------------------------------------------------------


def result(name, split, cls, det=None, pose=None):
    metrics = {"classification": {"pretrained": cls, "personalized": cls + 0.1}}
    if det is not None:
        metrics["detection"] = {"pretrained": det}
    return {"instance": name, "category": "mug", "instance_split": split, "metrics": metrics,
            "per_split": {} if pose is None else {"pose": {"classification": {"pretrained": pose}}}}


def test_aggregate_means_ci_and_instance_split():
    rs = [result("a", "test", 0.2, det=0.5, pose=0.1), result("b", "test", 0.4, pose=0.3),
          result("c", "test", 0.6, det=0.7), result("v", "val", 0.0, det=0.0, pose=0.0)]
    agg = aggregate(rs, n_boot=200, seed=3)
    assert agg["n_instances"] == 3
    assert agg["metrics"]["classification"] == {"pretrained": pytest.approx(0.4),
                                                "personalized": pytest.approx(0.5)}
    assert agg["metrics"]["detection"] == {"pretrained": pytest.approx(0.6)}  # b has none: mean of a, c
    assert agg["n"]["detection"] == {"pretrained": 2}
    assert agg["per_split"] == {"pose": {"classification": {"pretrained": pytest.approx(0.2)}}}
    # The CI by hand: 200 resamples of the 3 instances with default_rng(3), 2.5 / 97.5 percentiles.
    v = np.array([0.2, 0.4, 0.6])
    means = v[np.random.default_rng(3).integers(0, 3, size=(200, 3))].mean(axis=1)
    hand = list(np.percentile(means, [2.5, 97.5]))
    assert agg["ci95"]["classification"]["pretrained"] == pytest.approx(hand)
    low, high = agg["ci95"]["classification"]["personalized"]
    assert low <= 0.5 <= high
    assert bootstrap_ci(np.array([0.3, 0.3, 0.3])) == pytest.approx((0.3, 0.3))
    assert aggregate(rs, instance_split=None)["n_instances"] == 4
    assert aggregate(rs, instance_split="val")["metrics"]["classification"]["pretrained"] == 0.0
    with pytest.raises(ValueError, match="instance_split=None"):
        aggregate(rs, instance_split="pool")


# --- features, caching and the whole instance ----------------------------------------------------


@pytest.fixture(scope="module")
def pods(tmp_path_factory):
    return load_dataset(make_pods_tree(tmp_path_factory.mktemp("eval") / "pods", n_test=8, n_dense=4))


@pytest.fixture(scope="module")
def models():
    return {"pretrained": tiny_backbone("tiny", 0), "personalized": tiny_backbone("tiny", 1)}


CFG = toybox_config("evaluate", dense_grid=4, batch=8)


def test_cache_gives_the_uncached_numbers_and_is_reused(pods, models, tmp_path, monkeypatch):
    bb = models["pretrained"]
    recs = pods.images("train")
    fresh = cached_features(bb, recs, None, root=pods.root)
    cached = cached_features(bb, recs, tmp_path, root=pods.root)
    torch.testing.assert_close(fresh, cached, rtol=0, atol=0)
    dense = cached_dense_features(bb, recs, tmp_path, root=pods.root, grid=4)
    torch.testing.assert_close(dense.features, dense_records(bb, recs, 4).features, rtol=0, atol=0)
    assert dense.sizes[0] == (32, 48)

    import prpg.evaluate.features as features

    def fail(*a, **k):
        raise AssertionError("recomputed although cached")

    monkeypatch.setattr(features, "embed_records", fail)
    monkeypatch.setattr(features, "dense_records", fail)
    torch.testing.assert_close(cached_features(bb, recs[::-1], tmp_path, root=pods.root), fresh.flip(0))
    cached_dense_features(bb, recs[:2], tmp_path, root=pods.root, grid=4)
    # Other weights under the same name: a separate entry, never the stale one.
    with pytest.raises(AssertionError, match="recomputed"):
        cached_features(models["personalized"], recs, tmp_path, root=pods.root)
    assert len(list((tmp_path / pods.name).iterdir())) == 2


def test_a_process_waiting_for_the_cache_takes_what_the_other_one_filled(pods, models, tmp_path, monkeypatch):
    """Two evaluate stages at once (prpg repro --jobs): the second waits on the cache folder's lock,
    then finds the features there and computes nothing."""
    import shutil
    import threading

    from filelock import FileLock

    import prpg.evaluate.features as features

    bb, recs = models["pretrained"], pods.images("train")
    expected = cached_features(bb, recs, tmp_path / "donor", root=pods.root)
    donor = features.model_dir(bb, tmp_path / "donor", pods.name)
    folder = features.model_dir(bb, tmp_path / "shared", pods.name)
    holding, done = threading.Event(), []

    def other_process():
        with FileLock(str(folder / ".lock")):
            holding.set()
            threading.Event().wait(0.5)
            shutil.copytree(donor, folder, dirs_exist_ok=True)
            done.append(True)

    def fail(*a, **k):
        raise AssertionError("computed although the other process filled the cache")

    monkeypatch.setattr(features, "embed_records", fail)
    holder = threading.Thread(target=other_process)
    holder.start()
    holding.wait()
    got = cached_features(bb, recs, tmp_path / "shared", root=pods.root)
    holder.join()
    assert done  # it waited for the holder
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_cache_key_is_the_path_relative_to_the_root_and_outside_is_an_error(tmp_path, monkeypatch):
    from prpg.data import DatasetError
    from prpg.evaluate.features import relative_key

    root = tmp_path / "pods"
    assert relative_key(root / "test" / "mug_06" / "0001.jpg", root) == "test/mug_06/0001.jpg"
    monkeypatch.chdir(tmp_path)
    assert relative_key(Path("pods/test/./a/../b.png"), Path("pods")) == "test/b.png"  # relative, normalized
    for outside in (tmp_path / "other" / "x.png", root / ".." / "x.png", root):
        with pytest.raises(DatasetError, match="not under the dataset root"):
            relative_key(outside, root)


def test_dense_cache_embeds_the_same_batches_whatever_is_cached(pods, models, tmp_path, monkeypatch):
    """A batch is embedded whole when any of it is missing, so every cached value comes from the same
    batch as in a fresh run (another process may have cached part of it: prpg repro --jobs)."""
    import prpg.evaluate.features as features

    bb = models["pretrained"]
    recs = pods.dense_images()
    assert len(recs) >= 5
    batches = []
    real = features.dense_records

    def spy(bb, records, *a, **k):
        batches.append([r.path.name for r in records])
        return real(bb, records, *a, **k)

    monkeypatch.setattr(features, "dense_records", spy)
    fresh = cached_dense_features(bb, recs, tmp_path / "fresh", root=pods.root, grid=4, batch=2)
    slices = [[r.path.name for r in recs[i:i + 2]] for i in range(0, len(recs), 2)]
    assert batches == slices
    batches.clear()
    cached_dense_features(bb, recs[1:4], tmp_path / "part", root=pods.root, grid=4, batch=2)  # images 1, 2, 3
    batches.clear()
    filled = cached_dense_features(bb, recs, tmp_path / "part", root=pods.root, grid=4, batch=2)
    # the batches holding a missing image are embedded whole ([0, 1] too); [2, 3] is all cached
    assert batches == [s for k, s in enumerate(slices) if k != 1]
    torch.testing.assert_close(filled.features, fresh.features, rtol=0, atol=0)


def test_evaluate_instance_end_to_end_schema_and_splits(pods, models, tmp_path):
    out = evaluate_instance(pods, "mug_01", models, CFG, cache_dir=tmp_path)
    assert (out["instance"], out["category"], out["instance_split"]) == ("mug_01", "mug", "test")
    assert set(out["metrics"]) == set(TASKS)
    assert all(set(by_model) == {"pretrained", "personalized"} for by_model in out["metrics"].values())
    assert set(out["per_split"]) == set(TEST_SPLITS)
    for split in out["per_split"].values():
        assert set(split) == set(TASKS)
    values = [v for t in [out["metrics"], *out["per_split"].values()] for m in t.values() for v in m.values()]
    assert all(isinstance(v, float) and 0 <= v <= 1 for v in values)
    json.dumps(out, allow_nan=False)
    assert (tmp_path / pods.name).is_dir()  # the pretrained model was cached ...
    assert len(list((tmp_path / pods.name).iterdir())) == 1  # ... the personalized one was not

    # Per split: positives = the instance's images of that split, negatives = everyone else's of it.
    bb = models["pretrained"]
    test = [r for r in pods.images("test") if r.test_split == "pose"]
    te, tr = embed_records(bb, test), embed_records(bb, pods.images("train"))
    own = torch.tensor([r.instance == "mug_01" for r in pods.images("train")])
    scores = (te @ tr[own].T).max(1).values.numpy()
    labels = np.array([r.instance == "mug_01" for r in test])
    assert out["per_split"]["pose"]["classification"]["pretrained"] == pytest.approx(
        average_precision_score(labels, scores))

    again = evaluate_instance(pods, "mug_01", models, CFG, cache_dir=None)  # cold: the same numbers
    assert again == out


def test_without_annos_only_the_all_split(tmp_path, models):
    ds = load_dataset(make_pods_tree(tmp_path / "plain", annos=False, n_test=2, n_dense=1))
    cfg = toybox_config("evaluate", dense_grid=4, tasks=("classification", "retrieval"),
                        eval_feature="cls+patch", top_k=2)
    out = evaluate_instance(ds, "shoe_00", {"pretrained": models["pretrained"]}, cfg)
    assert out["per_split"] == {}
    assert set(out["metrics"]) == {"classification", "retrieval", "retrieval_ndcg", "retrieval_mrr",
                                   "retrieval_top2"}
