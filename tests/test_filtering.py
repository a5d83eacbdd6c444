"""The filter stage: keep/reject against hand-computed scores, the attempt cap, the written outputs,
real crops from masks, dense+Otsu localization, PerSAM with a tiny local SAM, and the whole stage."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from prpg.data import DatasetError, load_dataset
from prpg.filter.filtering import (
    DenseLocalizer,
    PerSamLocalizer,
    TimmPatchFeatures,
    filter_instance,
    filter_stream,
    load_sam,
    real_views,
    score,
    target_feature,
    top_points,
    whole_image,
    write_filtered,
)
from prpg.zoo.encoder import build_encoder, model_args
from tests.conftest import box_for, experiment_params, make_pods_tree, toybox_params, write_mask, toybox_config

RED, GREEN, BLUE, ORANGE = (230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 130, 20)
TINY_ENCODER = toybox_config("pretrain.encoder", image_size=32, resize=36, patch_size=8, embed_dim=32,
                             depth=1, heads=2)


class MeanColour:
    """A SimilarityModel whose embedding is the image's mean RGB, L2-normalised."""

    def embed(self, images):
        means = np.stack([np.asarray(im, np.float64).reshape(-1, 3).mean(0) for im in images])
        return F.normalize(torch.from_numpy(means).float(), dim=-1)


def solid(colour, size=(24, 16)) -> Image.Image:
    return Image.new("RGB", size, colour)


def unit(v) -> np.ndarray:
    v = np.asarray(v, np.float64)
    return v / np.linalg.norm(v)


def stream(candidates, references, localize=whole_image, **kw):
    """filter_stream with the MeanColour model against `references` (images)."""
    model = MeanColour()
    args = dict(n_keep=10, max_attempts=10, threshold=0.9) | kw
    reference = model.embed(references)
    return filter_stream(candidates, model=model, reference=reference, localize=localize, **args)


def counting(images):
    """Wrap an iterable; `pulled[0]` counts how many items the consumer took."""
    pulled = [0]

    def gen():
        for im in images:
            pulled[0] += 1
            yield im

    return gen(), pulled


def test_keeps_and_rejects_against_hand_computed_scores():
    candidates = [solid(RED), solid(BLUE), solid(ORANGE), solid(GREEN)]
    verdicts = list(stream(candidates, [solid(RED), solid(ORANGE)], threshold=0.9))
    expected = [np.mean([unit(c) @ unit(RED), unit(c) @ unit(ORANGE)]) for c in (RED, BLUE, ORANGE, GREEN)]
    assert [v.score for v in verdicts] == pytest.approx(expected, abs=1e-5)
    assert [v.kept for v in verdicts] == [s >= 0.9 for s in expected] == [True, False, True, False]
    assert [v.attempt for v in verdicts] == [0, 1, 2, 3]
    assert all(v.box == (0, 0, 24, 16) for v in verdicts)


def test_mean_versus_max():
    reference = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    on_first = torch.tensor([1.0, 0.0, 0.0])
    between = F.normalize(torch.tensor([1.0, 1.0, 0.0]), dim=0)
    assert score(on_first, reference, "mean") == pytest.approx(0.5)
    assert score(on_first, reference, "max") == pytest.approx(1.0)
    assert score(between, reference, "mean") == pytest.approx(2**-0.5)
    assert score(between, reference, "max") == pytest.approx(2**-0.5)

    # Through the loop: pure red against {red, green} scores 0.5 by mean, 1.0 by max.
    def run(reduce):
        references = [solid((255, 0, 0)), solid((0, 255, 0))]
        return next(stream([solid((255, 0, 0))], references, threshold=0.75, reduce=reduce))

    assert (run("mean").score, run("mean").kept) == (pytest.approx(0.5), False)
    assert (run("max").score, run("max").kept) == (pytest.approx(1.0), True)


def test_attempt_cap_counts_failed_localizations():
    """An endless generator and a localizer that never finds the object: returns after max_attempts
    (the reference would loop forever here; the islice turns such a bug into a failure, not a hang)."""
    endless, pulled = counting(itertools.islice(itertools.repeat(solid(RED)), 1000))
    verdicts = list(stream(endless, [solid(RED)], localize=lambda im: None, n_keep=5, max_attempts=7,
                           threshold=0.0))
    assert len(verdicts) == 7 and pulled[0] == 7
    assert not any(v.kept or v.localized for v in verdicts) and all(v.score is None for v in verdicts)


def test_stops_at_n_keep_without_sampling_more():
    endless, pulled = counting(itertools.islice(itertools.repeat(solid(RED)), 1000))
    verdicts = list(stream(endless, [solid(RED)], n_keep=3, max_attempts=100, threshold=0.5))
    assert [v.kept for v in verdicts] == [True] * 3 and pulled[0] == 3


def test_write_filtered_layout_and_scores_csv(tmp_path):
    candidates = [solid(RED), solid(BLUE), solid(GREEN), solid(RED, (30, 20)), solid(BLUE)]
    boxes = iter([(1, 2, 10, 12), None, (0, 0, 24, 16), (0, 0, 30, 20), (3, 3, 9, 9)])

    def localize(image):
        return next(boxes)

    verdicts = stream(candidates, [solid(RED)], localize=localize, n_keep=2, max_attempts=50, threshold=0.9)
    out = tmp_path / "filtered/mug_00/dreambooth"
    summary = write_filtered(verdicts, out, n_keep=2, max_attempts=50, keep_rejected=1,
                             config={"threshold": 0.9})
    assert sorted(p.name for p in (out / "kept").iterdir()) == ["0000.png", "0003.png"]
    assert sorted(p.name for p in (out / "rejected").iterdir()) == ["0001.png"]  # only the first K=1
    assert np.array_equal(np.asarray(Image.open(out / "kept/0003.png")), np.asarray(solid(RED, (30, 20))))
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert [r["attempt"] for r in rows] == ["0", "1", "2", "3"]  # stopped at 2 kept: 0004 never judged
    assert [r["file"] for r in rows] == ["kept/0000.png", "rejected/0001.png", "", "kept/0003.png"]
    assert [r["kept"] for r in rows] == ["1", "0", "0", "1"]
    assert [r["localized"] for r in rows] == ["1", "0", "1", "1"]
    assert rows[0]["box"] == "1 2 10 12" and rows[1]["box"] == "" and rows[1]["score"] == ""
    assert float(rows[2]["score"]) == pytest.approx(unit(GREEN) @ unit(RED), abs=1e-5)
    assert summary == json.loads((out / "summary.json").read_text())
    counts = (summary["attempts"], summary["kept"], summary["not_localized"], summary["stopped"])
    assert counts == (4, 2, 1, "n_keep")
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_write_filtered_keep_all_rejected_and_stop_reasons(tmp_path):
    def run(candidates, out, **kw):
        verdicts = stream(candidates, [solid(RED)], n_keep=5, max_attempts=3, threshold=0.9)
        return write_filtered(verdicts, out, n_keep=5, max_attempts=3, **kw)

    s = run([solid(BLUE)] * 10, tmp_path / "a", keep_rejected="all")
    assert s["stopped"] == "max_attempts" and len(list((tmp_path / "a/rejected").iterdir())) == 3
    s = run([solid(BLUE)] * 2, tmp_path / "b", keep_rejected=0)
    assert s["stopped"] == "candidates_exhausted" and not list((tmp_path / "b/rejected").iterdir())


def test_write_filtered_is_atomic(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("old result")
    def failing():
        yield solid(RED)
        raise RuntimeError("generator crashed")

    verdicts = stream(failing(), [solid(RED)], n_keep=5, max_attempts=5, threshold=0.5)
    with pytest.raises(RuntimeError, match="crashed"):
        write_filtered(verdicts, out, n_keep=5, max_attempts=5)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # the temp dir is gone
    assert (out / "previous.txt").read_text() == "old result"  # the previous result is untouched


def test_real_crops_are_mask_boxes_paired_by_stem(tmp_path):
    root = make_pods_tree(tmp_path / "pods")
    # Re-save mask 0001 as .bmp: a separate glob of masks would now list it last, the reader pairs by stem.
    (root / "train_masks/mug_00/0001.png").unlink()
    write_mask(root / "train_masks/mug_00/0001.bmp", box_for(1))
    views = real_views(load_dataset(root), "mug_00")
    assert [v.path.name for v in views] == ["0000.jpg", "0001.jpg", "0002.jpg"]
    assert [v.box for v in views] == [box_for(0), box_for(1), box_for(2)]
    x0, y0, x1, y1 = box_for(1)
    assert views[1].crop.size == (x1 - x0, y1 - y0)  # a box crop, background included
    assert np.array_equal(np.asarray(views[1].crop), np.asarray(views[1].image)[y0:y1, x0:x1])


def test_real_views_errors_name_the_file(tmp_path):
    root = make_pods_tree(tmp_path / "pods")
    (root / "train_masks/mug_00/0002.png").unlink()
    with pytest.raises(DatasetError, match=r"0002\.jpg: no mask with stem '0002'"):
        real_views(load_dataset(root), "mug_00")
    write_mask(root / "train_masks/mug_00/0002.png", (0, 0, 0, 0))
    with pytest.raises(DatasetError, match=r"0002\.png: empty mask"):
        real_views(load_dataset(root), "mug_00")
    write_mask(root / "train_masks/mug_00/0002.png", (1, 1, 5, 5), size=(20, 20))
    with pytest.raises(DatasetError, match=r"0002\.png: mask is 20x20 but 0002\.jpg is 48x32"):
        real_views(load_dataset(root), "mug_00")


# --- localization --------------------------------------------------------------------------------


def scene(box, size=(64, 64), seed=0, colour=RED) -> Image.Image:
    """Blue-grey noisy background with a `colour` rectangle at box (x0, y0, x1, y1)."""
    rng = np.random.default_rng(seed)
    a = np.clip(rng.normal((90, 100, 140), 12, (size[1], size[0], 3)), 0, 255)
    x0, y0, x1, y1 = box
    a[y0:y1, x0:x1] = colour
    return Image.fromarray(a.astype(np.uint8))


def box_mask(box, size=(64, 64)) -> np.ndarray:
    m = np.zeros((size[1], size[0]), bool)
    m[box[1] : box[3], box[0] : box[2]] = True
    return m


def colour_patches(patch=8):
    """Patch features = per-cell mean colour, centred and L2-normalised (a stand-in for a trained ViT)."""

    def features(image):
        a = np.asarray(image, np.float32) / 255 - 0.5
        h, w = a.shape[0] // patch, a.shape[1] // patch
        cells = a[: h * patch, : w * patch].reshape(h, patch, w, patch, 3).mean((1, 3))
        return F.normalize(torch.from_numpy(cells), dim=-1)

    return features


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_target_feature_is_max_plus_mean_inside_the_mask():
    grid = [[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [-1.0, 0.0]]]  # 2x2 patches of 2-d features
    feats = F.normalize(torch.tensor(grid), dim=-1)
    mask = np.zeros((4, 4), bool)
    mask[:2, :] = True  # the top row of patches
    inside = feats[0]  # (1, 0) and (0, 1)
    expected = F.normalize((inside.max(0).values + inside.mean(0)) / 2, dim=0)
    assert torch.allclose(target_feature(feats, mask), expected)
    mask[:] = False
    mask[3, 3] = True  # covers a quarter of one patch: falls back to that patch
    assert torch.allclose(target_feature(feats, mask), feats[1, 1])


def test_dense_otsu_finds_a_known_object():
    """A 16x16 grid on a 64 px image, about the toybox encoder's (14x14 over a 64 px generated image)."""
    reference_box, true_box = (8, 8, 32, 40), (30, 20, 58, 44)  # edges off the patch grid
    loc = DenseLocalizer(colour_patches(4), scene(reference_box), box_mask(reference_box))
    mask = loc.mask(scene(true_box, seed=1))
    assert mask.shape == (64, 64)
    box = loc(scene(true_box, seed=1))
    assert iou(box, true_box) > 0.5
    assert loc(Image.new("RGB", (64, 64), (90, 100, 140))) is None  # a flat map: nothing to find


def test_dense_otsu_on_a_real_timm_vit_gives_a_valid_box():
    """Random weights localize nothing in particular; this checks the timm path end to end: prefix
    tokens (CLS + registers) dropped, the grid, and a box inside the image."""
    torch.manual_seed(0)
    model = build_encoder(TINY_ENCODER)
    feats = TimmPatchFeatures(model)(scene((4, 4, 20, 20), size=(48, 40)))
    assert feats.shape == (4, 4, 32) and torch.allclose(feats.norm(dim=-1), torch.ones(4, 4), atol=1e-5)
    assert TimmPatchFeatures(model, resolution=64)(scene((4, 4, 20, 20))).shape == (8, 8, 32)

    import timm

    regs = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=32,
                             patch_size=8, embed_dim=32, depth=1, num_heads=2, reg_tokens=4,
                             dynamic_img_size=True)
    assert regs.num_prefix_tokens == 5
    assert TimmPatchFeatures(regs, resolution=32)(scene((4, 4, 20, 20))).shape == (4, 4, 32)

    loc = DenseLocalizer(TimmPatchFeatures(model), scene((8, 8, 32, 40)), box_mask((8, 8, 32, 40)))
    x0, y0, x1, y1 = loc(scene((30, 20, 58, 44), size=(64, 48), seed=2))
    assert 0 <= x0 < x1 <= 64 and 0 <= y0 < y1 <= 48


def test_top_points_are_the_peaks_spaced_apart():
    sim = np.zeros((20, 30))
    sim[5, 7], sim[5, 8], sim[15, 25] = 1.0, 0.99, 0.8  # (8, 5) is next to the first peak
    assert top_points(sim, 2, min_distance=3) == [(7.0, 5.0), (25.0, 15.0)]
    assert top_points(sim, 2, min_distance=0.5) == [(7.0, 5.0), (8.0, 5.0)]
    assert len(top_points(np.ones((2, 2)), 5, min_distance=10)) == 1  # everything else suppressed


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory) -> Path:
    """A SAM of random weights (64 px input, 8x8 embedding grid), saved the way facebook/sam-vit-huge is."""
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    torch.manual_seed(0)
    cfg = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=16, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1],
                           num_pos_feats=8, mlp_dim=64),
        prompt_encoder_config=dict(hidden_size=16, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=16, mlp_dim=32, num_attention_heads=2, iou_head_hidden_dim=16),
    )
    out = tmp_path_factory.mktemp("sam") / "tiny-sam"
    SamModel(cfg).save_pretrained(out)
    SamProcessor(SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                   mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})
                 ).save_pretrained(out)
    return out


def test_persam_with_a_tiny_local_sam_returns_an_image_size_mask(tiny_sam, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    sam, processor = load_sam(tiny_sam)
    dense = DenseLocalizer(colour_patches(4), scene((8, 8, 32, 40)), box_mask((8, 8, 32, 40)))
    loc = PerSamLocalizer(dense, sam, processor, n_points=2)
    image = scene((30, 20, 58, 44), size=(80, 48), seed=3)  # not square: SAM pads, post-processing unpads

    points = top_points(dense.similarity(image), 2, min_distance=8)  # the prompts PerSAM gives SAM
    assert len(points) == 2 and all(30 <= x < 58 and 20 <= y < 44 for x, y in points)  # on the object
    mask = loc.mask(image)
    assert mask is not None and mask.shape == (48, 80) and mask.dtype == bool
    x0, y0, x1, y1 = loc(image)
    assert 0 <= x0 < x1 <= 80 and 0 <= y0 < y1 <= 48


def test_missing_sam_offline_is_a_clear_error(tmp_path, monkeypatch):
    from prpg.core.models import ModelNotAvailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelNotAvailableError, match="facebook/sam-vit-huge"):
        load_sam("facebook/sam-vit-huge")


# --- configs and the whole stage -----------------------------------------------------------------


def test_configs():
    paper = experiment_params("pods-dinov2_vitb14", "filter")["filter"]
    toybox = toybox_params()["filter"]
    assert (paper.model, paper.dreamsim_type, paper.localize) == ("dreamsim", "ensemble", "persam")
    assert (paper.threshold, paper.reduce, paper.max_attempts) == (0.6, "mean", 5000)
    assert (toybox.model, toybox.backbone, toybox.localize) == ("backbone", "toybox", "dense_otsu")
    with pytest.raises(ValueError, match="treshold"):
        toybox_config("filter", treshold=0.5)
    with pytest.raises(ValueError, match="keep_rejected"):
        toybox_config("filter", keep_rejected=-1)
    with pytest.raises(ValueError, match="max_attempts"):
        toybox_config("filter", max_attempts=0)
    assert toybox_config("filter", keep_rejected="all").keep_rejected == "all"


@pytest.mark.parametrize("localize", ["dense_otsu", "none"])
def test_filter_instance_end_to_end(tmp_path, localize):
    """The stage on a PODS tree with a tiny saved encoder as the backbone (as `toybox` would be)."""
    from timm.models import save_for_hf

    torch.manual_seed(0)
    save_for_hf(build_encoder(TINY_ENCODER), str(tmp_path / "enc"), model_args=model_args(TINY_ENCODER),
                safe_serialization=True)
    ds = load_dataset(make_pods_tree(tmp_path / "pods"))
    cfg = toybox_config("filter", backbone=str(tmp_path / "enc"), localize=localize, threshold=-1.0,
                        max_attempts=4,
                       keep_rejected="all")
    candidates, pulled = counting(scene((10, 10, 40, 30), size=(64, 48), seed=s) for s in itertools.count())
    out = tmp_path / "outputs/filtered/mug_00/dreambooth"
    summary = filter_instance(candidates, ds, "mug_00", out, cfg, n_keep=3)
    # threshold -1 keeps every localized image; each failed localization is an attempt
    assert summary["kept"] == len(list((out / "kept").iterdir()))
    assert summary["kept"] == 3 or summary["stopped"] == "max_attempts"
    assert pulled[0] == summary["attempts"] <= 4
    rows = list(csv.DictReader((out / "scores.csv").open()))
    assert len(rows) == summary["attempts"] and summary["config"]["localize"] == localize
    if localize == "none":
        assert summary["kept"] == 3 and all(r["box"] == "0 0 64 48" for r in rows)


def test_candidate_images_are_the_files_then_fresh_samples_up_to_the_attempt_cap(tmp_path):
    from prpg.filter.candidates import candidate_images

    files = []
    for k, color in enumerate((RED, GREEN, BLUE)):
        Image.new("L", (4, 4), color[0]).save(tmp_path / f"{k}.png")
        files.append(tmp_path / f"{k}.png")
    started = []

    def more():
        started.append(True)
        while True:
            yield Image.new("RGB", (4, 4), ORANGE)

    first_two = list(candidate_images(files, more(), max_attempts=2))
    assert [im.getpixel((0, 0)) for im in first_two] == [(230, 230, 230), (20, 20, 20)]  # converted to RGB
    assert not started  # the sampler (a generator to load) is untouched while files remain
    five = list(candidate_images(files, more(), max_attempts=5))
    assert [im.getpixel((0, 0)) for im in five][2:] == [(20, 20, 20), ORANGE, ORANGE]
    assert len(list(candidate_images(files, max_attempts=10))) == 3  # no sampling: the files only


def test_personalized_samples_load_the_generator_only_when_asked(monkeypatch):
    from prpg.filter import candidates

    calls = []
    monkeypatch.setattr(candidates, "load_generator", lambda g, device: calls.append(("base", g, device)) or "base")
    monkeypatch.setattr(candidates, "load_personalized",
                        lambda base, path: calls.append(("personalized", base, path)) or "pipe")

    def fake_stream(pipe, cfg, instance, category, seed):
        calls.append(("sample", pipe, instance, category, seed))
        return itertools.repeat(Image.new("RGB", (4, 4), RED))

    monkeypatch.setattr(candidates, "sample_stream", fake_stream)
    samples = candidates.personalized_samples("models/toybox/generator", "outputs/personalize/mug_06", toybox_config("synthesize.positives"),
                                              "mug_06", "mug", seed=3, device="cpu")
    assert calls == []
    assert next(samples).getpixel((0, 0)) == RED
    assert calls == [("base", "models/toybox/generator", "cpu"),
                     ("personalized", "base", "outputs/personalize/mug_06"), ("sample", "pipe", "mug_06", "mug", 3)]
