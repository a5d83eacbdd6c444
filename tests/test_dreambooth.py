"""Stage "personalize": DreamBooth (full / LoRA / masked) on tiny random SD-class pipelines at 32 px,
the mask transform and masked loss against hand computations, and the per-category class images."""

from __future__ import annotations

import copy
import csv
import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from prpg import priors as ci
from prpg import personalize as db
from prpg.data import load_dataset
from tests.conftest import experiment_params, make_pods_tree, toybox_params, toybox_config

TINY = toybox_config("pretrain.generator", resolution=32, vae_channels=(8, 16), unet_channels=(16, 32),
                     attention_head_dim=4,
                       text_hidden=16, text_layers=1, text_heads=1, max_length=16)
FAST = toybox_config("personalize", steps=3, lr=1e-3)
PROMPT = "a photo of <new1> mug"


@pytest.fixture(scope="module")
def base_pipe(tmp_path_factory):
    from prpg.zoo.generator import build_pipeline
    from prpg.zoo.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    pipe = build_pipeline(TINY, build_clip_tokenizer(tmp_path_factory.mktemp("tok"), max_length=16))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def pipe(base_pipe):
    return copy.deepcopy(base_pipe)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """PODS-format tree with non-square (48 x 32) train photos and box masks."""
    return load_dataset(make_pods_tree(tmp_path_factory.mktemp("pods") / "pods"))


@pytest.fixture(scope="module")
def class_paths(base_pipe, tmp_path_factory):
    root = tmp_path_factory.mktemp("cls")
    return ci.generate_class_images(base_pipe, "mug", 2, root, seed=0, steps=2, batch=2)


def sample_np(pipe, seed: int = 0) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return pipe([PROMPT], num_inference_steps=2, guidance_scale=5.0, generator=gen, height=32, width=32,
                output_type="np").images


# ------------------------------------------------------------------------------------------------
# personalize -> save -> load_personalized


@pytest.mark.parametrize("mode,masked", [("full", False), ("lora", False), ("full", True)])
def test_personalize_round_trip(pipe, world, class_paths, tmp_path, mode, masked):
    cfg = dataclasses.replace(FAST, mode=mode, masked=masked, lora_rank=4, lora_alpha=8.0)  # alpha != rank
    before = sample_np(pipe)
    train = world.images("train", "mug_00")
    out = db.personalize(pipe, train, "mug", class_paths, cfg, tmp_path / "p", seed=0)

    assert np.array_equal(sample_np(pipe), before), "personalize must not modify the base pipeline"
    tuned = sample_np(out.pipe)
    assert not np.array_equal(tuned, before), "3 steps at lr 1e-3 must change the samples"
    reloaded = db.load_personalized(pipe, tmp_path / "p")
    assert np.array_equal(sample_np(reloaded), tuned)

    info = json.loads((tmp_path / "p/config.json").read_text())
    assert info["config"] == dataclasses.asdict(dataclasses.replace(cfg, resolution=32, device="cpu"))
    assert info["mode"] == mode and info["instance"] == "mug_00" and info["instance_prompt"] == PROMPT
    assert (info["train_masks"] is not None) == masked
    rows = list(csv.DictReader(open(tmp_path / "p/losses.csv")))
    assert [int(r["step"]) for r in rows] == [0, 1, 2] and all(np.isfinite(float(r["loss"])) for r in rows)
    files = sorted(f.relative_to(out.path).as_posix() for f in out.path.rglob("*") if f.is_file())
    if mode == "lora":
        assert files == ["config.json", "losses.csv", db.LORA_WEIGHTS]
    else:
        assert {"unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"} <= set(files)
        assert not any(f.startswith("vae/") for f in files), "the frozen VAE is not saved per instance"


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_personalize_same_seed_same_files(pipe, world, class_paths, tmp_path, mode):
    cfg = dataclasses.replace(FAST, steps=2, mode=mode)
    contents = []
    for name in ("a", "b"):
        out = tmp_path / name
        db.personalize(pipe, world.images("train", "mug_00"), "mug", class_paths, cfg, out, seed=3)
        contents.append({f.relative_to(out): f.read_bytes() for f in out.rglob("*") if f.is_file()})
    assert contents[0] == contents[1]


def test_lora_trains_only_adapters_and_saves_lora_keys(pipe, world, class_paths, tmp_path, base_pipe):
    from safetensors.torch import load_file

    cfg = dataclasses.replace(FAST, mode="lora")
    train = world.images("train", "mug_00")
    out = db.personalize(pipe, train, "mug", class_paths, cfg, tmp_path / "p", seed=0)
    for name in ("unet", "text_encoder", "vae"):
        base = getattr(base_pipe, name).state_dict()
        tuned = getattr(out.pipe, name).state_dict()
        lora = {k for k in tuned if "lora_" in k}
        assert bool(lora) == (name != "vae")
        for k in lora:
            if "lora_B" in k:  # B starts at zero, so a trained B is non-zero
                assert tuned[k].abs().sum() > 0, k
        for k, v in tuned.items():
            if "lora_" not in k:  # peft renames a wrapped Linear's weight to <module>.base_layer.weight
                assert torch.equal(v, base[k.replace(".base_layer", "")]), f"{name}.{k} changed"

    sd = load_file(tmp_path / "p" / db.LORA_WEIGHTS)
    unet_mods = {n for n, _ in base_pipe.unet.named_modules()
                 if n.rsplit(".", 1)[-1] in ("to_q", "to_k", "to_v") or n.endswith(".to_out.0")}
    text_mods = {n for n, _ in base_pipe.text_encoder.named_modules()
                 if n.rsplit(".", 1)[-1] in ("q_proj", "k_proj", "v_proj", "out_proj")}
    expected = {f"unet.{m}.lora.{d}.weight" for m in unet_mods for d in ("down", "up")}
    expected |= {f"text_encoder.{m}.lora_linear_layer.{d}.weight" for m in text_mods for d in ("down", "up")}
    assert set(sd) == expected and all("lora" in k for k in sd)
    assert all(v.shape[0 if ".down." in k else 1] == cfg.lora_rank for k, v in sd.items())

    other = copy.deepcopy(base_pipe)
    with torch.no_grad():
        next(other.unet.parameters()).add_(1.0)
    with pytest.raises(db.DreamBoothError, match="another base generator"):
        db.load_personalized(other, tmp_path / "p")


def test_personalize_input_errors(pipe, world, class_paths, tmp_path):
    rec = world.images("train", "mug_00")[0]
    no_mask = type(rec)(rec.path, rec.instance, rec.split, None, rec.test_split)
    with pytest.raises(db.DreamBoothError, match=rf"{rec.path.name}.*train_masks/mug_00"):
        db.personalize(pipe, [no_mask], "mug", class_paths, dataclasses.replace(FAST, masked=True),
                       tmp_path / "p", seed=0)
    assert not (tmp_path / "p").exists()
    with pytest.raises(db.DreamBoothError, match="no class images: make them"):
        db.personalize(pipe, [rec], "mug", [], FAST, tmp_path / "p", seed=0)
    assert not (tmp_path / "p").exists()


# ------------------------------------------------------------------------------------------------
# Mask transform and masked loss


def test_mask_crop_matches_image_crop_pixel_for_pixel():
    """A non-square image whose pixels ARE its mask: after resize + random crop + flip, the image
    tensor and the mask tensor must agree everywhere (the reference resizes the mask to a square)."""
    rng = np.random.default_rng(0)
    mask = np.zeros((90, 150), bool)  # H x W, landscape
    mask[20:70, 100:140] = True
    mask |= rng.random(mask.shape) < 0.05
    image = Image.fromarray((mask * 255).astype(np.uint8)).convert("RGB")
    [(img_t, mask_t)] = db.prepare_images([image], 32, [mask])
    assert img_t.shape == (3, 32, 53) and mask_t.shape == (1, 32, 53)  # short side -> 32, aspect kept
    gen = torch.Generator().manual_seed(0)
    lefts = set()
    for _ in range(20):
        crop = db.draw_crop(32, 53, 32, center_crop=False, random_flip=True, generator=gen)
        lefts.add((crop.left, crop.flip))
        im = db.apply_crop(img_t, crop, 32)
        m = db.apply_crop(mask_t, crop, 32)
        assert im.shape == (3, 32, 32)
        assert torch.equal(((im[0] + 1) * 127.5).round(), (m[0] * 255).round())  # same uint8 values
    assert len(lefts) > 5 and {f for _, f in lefts} == {True, False}
    # The reference's mask (resized to a square, never cropped) is off the object on this image.
    square = torch.nn.functional.interpolate(torch.from_numpy(mask)[None, None].float(), size=(32, 32),
                                             mode="bilinear")
    crop = db.draw_crop(32, 53, 32, center_crop=True, random_flip=False, generator=gen)
    assert not torch.allclose(square[0], db.apply_crop(mask_t, crop, 32), atol=0.1)


def test_latent_weight_and_masked_mse_by_hand():
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2] = 1.0  # left half on the object
    w = db.latent_weight(mask, (2, 2))
    bg = 0.01 / 1.01
    assert torch.allclose(w, torch.tensor([[[[1.0, bg], [1.0, bg]]]]))
    pred, target = torch.ones(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)
    assert db.masked_mse(pred, target, w).item() == pytest.approx((2 * 1.0 + 2 * bg**2) / 4)


def test_masked_loss_on_a_known_mask_and_crop():
    """40 x 32 photo, resolution 32 (no resize), centre crop -> left = 4; object = columns 8..23.
    In the crop the object covers columns 4..19: latent cells (8 px wide) are 1/2, 1, 1/2, 0 covered."""
    mask = np.zeros((32, 40), bool)
    mask[:, 8:24] = True
    image = Image.fromarray(np.zeros((32, 40, 3), np.uint8))
    [(img_t, mask_t)] = db.prepare_images([image], 32, [mask])
    crop = db.draw_crop(32, 40, 32, center_crop=True, random_flip=False, generator=torch.Generator())
    assert (crop.top, crop.left) == (0, 4)
    w = db.latent_weight(db.apply_crop(mask_t, crop, 32)[None], (4, 4))
    cols = torch.tensor([0.51, 1.01, 0.51, 0.01]) / 1.01
    assert torch.allclose(w[0, 0], cols.expand(4, 4))
    # pred - target = 1 on the instance half, 2 on the prior half
    pred = torch.cat([torch.ones(1, 4, 4, 4), 2 * torch.ones(1, 4, 4, 4)])
    total, inst, prior = db.dreambooth_loss(pred, torch.zeros_like(pred), 1, prior_weight=1.0, weight=w)
    hand_inst = float((cols**2).mean())  # (0.505^2 + 1 + 0.505^2 + 0.0099^2) / 4
    assert inst.item() == pytest.approx(hand_inst, rel=1e-6)
    assert prior.item() == pytest.approx(4.0) and total.item() == pytest.approx(hand_inst + 4.0, rel=1e-6)


def test_per_sample_masks_with_batch_2(pipe, monkeypatch):
    """Two instance images with different masks in one batch: each gets its own weight."""
    seen = []
    real = db.latent_weight
    monkeypatch.setattr(db, "latent_weight", lambda m, hw: seen.append(real(m, hw)) or seen[-1])
    left, right = np.zeros((32, 32), bool), np.zeros((32, 32), bool)
    left[:, :16], right[:, 16:] = True, True
    ims = [Image.fromarray(np.full((32, 32, 3), v, np.uint8)) for v in (60, 200)]
    cfg = toybox_config("personalize", steps=1, lr=1e-3, batch=2, masked=True)
    db.train_dreambooth(pipe, ims, ims, "mug", cfg, seed=0, instance_masks=[left, right])
    [w] = seen
    expected = {tuple(real(torch.from_numpy(m).float()[None, None], (16, 16)).flatten().tolist())
                for m in (left, right)}
    assert w.shape == (2, 1, 16, 16) and not torch.equal(w[0], w[1])
    assert {tuple(w[i].flatten().tolist()) for i in range(2)} == expected


# ------------------------------------------------------------------------------------------------
# Training options


def _trained_params(pipe, cfg):
    instance, cls = Image.new("RGB", (40, 32), (200, 30, 30)), Image.new("RGB", (32, 32))
    db.train_dreambooth(pipe, [instance], [cls], "mug", cfg, seed=0)
    return {(n, k): v.clone() for n in ("unet", "text_encoder")
            for k, v in getattr(pipe, n).state_dict().items()}


def test_gradient_checkpointing_gives_the_same_updates(base_pipe):
    """LoRA on the text encoder too: non-reentrant checkpointing still reaches the adapters."""
    cfg = toybox_config("personalize", steps=2, lr=1e-3, mode="lora")
    plain = _trained_params(copy.deepcopy(base_pipe), cfg)
    ckpt = _trained_params(copy.deepcopy(base_pipe), dataclasses.replace(cfg, gradient_checkpointing=True))
    assert plain.keys() == ckpt.keys()
    assert any(n == "text_encoder" and "lora_B" in k and v.abs().sum() > 0 for (n, k), v in ckpt.items())
    for k in plain:
        assert torch.equal(plain[k], ckpt[k]), k


def test_8bit_adam_falls_back_on_cpu_and_bf16_autocast_runs(pipe, caplog):
    cfg = toybox_config("personalize", steps=1, lr=1e-3, use_8bit_adam=True, mixed_precision="bf16")
    with caplog.at_level(logging.WARNING, logger="prpg.personalize"):
        black = [Image.new("RGB", (32, 32))]
        res = db.train_dreambooth(pipe, black, black, "mug", cfg, seed=0)
    assert res["optimizer"] == "torch.optim.AdamW" and "bitsandbytes" in caplog.text
    assert np.isfinite(res["losses"][0]["loss"])


def test_paper_and_toybox_settings():
    paper = experiment_params("pods-dinov2_vitb14", "personalize")["personalize"]
    assert (paper.steps, paper.lr, paper.batch, paper.resolution) == (400, 2e-6, 1, 512)
    assert paper.mode == "full" and paper.masked
    from prpg.runs.experiments import resolve

    assert resolve("pods-dinov2_vitb14")["priors.class_images.n"] == 200  # (the priors group needs the prompts)
    assert paper.use_8bit_adam and paper.train_text_encoder and paper.prior_weight == 1.0
    toybox = toybox_params()["personalize"]
    assert (toybox.steps, toybox.lr, toybox.resolution, toybox.use_8bit_adam) == (80, 2e-4, None, False)
    with pytest.raises(ValueError, match="mode"):
        toybox_config("personalize", mode="qlora")


# ------------------------------------------------------------------------------------------------
# Class images


def test_class_images_once_per_category_and_reused(base_pipe, tmp_path, monkeypatch):
    calls = []
    real = ci.sample
    monkeypatch.setattr(ci, "sample", lambda *a, **k: calls.append(k) or real(*a, **k))
    root = tmp_path / "class_images"
    kw = dict(seed=0, steps=2, guidance=5.0, batch=2)

    first = ci.generate_class_images(base_pipe, "mug", 3, root, **kw)
    assert [p.name for p in first] == ["0000.png", "0001.png", "0002.png"] and len(calls) == 1
    assert all(p.parent == root / "mug" for p in first)
    stamp = {p: p.stat().st_mtime_ns for p in first}
    assert ci.generate_class_images(base_pipe, "mug", 3, root, **kw) == first and len(calls) == 1
    assert ci.generate_class_images(base_pipe, "mug", 2, root, **kw) == first[:2] and len(calls) == 1
    assert {p: p.stat().st_mtime_ns for p in first} == stamp
    assert json.loads((root / "mug" / ci.SETTINGS_FILE).read_text())["prompt"] == "A photo of mug"

    ci.generate_class_images(base_pipe, "mug", 4, root, **kw)  # more than there are
    assert len(calls) == 2 and len(list((root / "mug").glob("*.png"))) == 4
    ci.generate_class_images(base_pipe, "mug", 4, root, **{**kw, "guidance": 7.5})  # other settings
    assert len(calls) == 3
    tuned = copy.deepcopy(base_pipe)
    with torch.no_grad():
        next(tuned.unet.parameters()).mul_(2.0)
    ci.generate_class_images(tuned, "mug", 4, root, **{**kw, "guidance": 7.5})  # not the same generator
    assert len(calls) == 4
    shoe = ci.generate_class_images(base_pipe, "shoe", 2, root, **kw)
    assert len(calls) == 5 and all(p.parent == root / "shoe" for p in shoe)
    assert len(list((root / "mug").glob("*.png"))) == 4  # categories never mix
    assert not [p for p in root.iterdir() if p.name.startswith(".")], "no temp folders left behind"


def test_class_images_same_seed_same_pixels(base_pipe, tmp_path):
    a = ci.generate_class_images(base_pipe, "mug", 2, tmp_path / "a", seed=1, steps=2, batch=2)
    b = ci.generate_class_images(base_pipe, "mug", 2, tmp_path / "b", seed=1, steps=2, batch=2)
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode,precision", [("full", "fp16"), ("lora", "bf16")])
def test_personalize_on_cuda(pipe, world, class_paths, tmp_path, mode, precision):
    cfg = dataclasses.replace(FAST, mode=mode, mixed_precision=precision, use_8bit_adam=True, device="cuda")
    out = db.personalize(pipe, world.images("train", "mug_00"), "mug", class_paths, cfg, tmp_path / "p", seed=0)
    assert out.pipe.device.type == "cuda" and all(np.isfinite(r["loss"]) for r in out.losses)
    reloaded = db.load_personalized(pipe, tmp_path / "p", device="cuda")
    assert np.allclose(sample_np(reloaded), sample_np(out.pipe), atol=1e-3)


SHIPPED_GENERATOR = Path(__file__).resolve().parents[1] / "models/toybox/generator"


@pytest.mark.skipif(not (SHIPPED_GENERATOR / "model_index.json").is_file(), reason="models/toybox not built yet")
@pytest.mark.parametrize("mode,masked", [("full", False), ("lora", False), ("full", True)])
def test_personalize_round_trip_on_the_shipped_toybox_generator(world, tmp_path, mode, masked):
    """The same round trip on the shipped toybox generator (64 px), 2 steps."""
    from prpg.core.models import load_generator

    base = load_generator(SHIPPED_GENERATOR)
    classes = ci.generate_class_images(base, "mug", 2, tmp_path / "cls", seed=0, steps=2, batch=2)
    cfg = dataclasses.replace(FAST, steps=2, mode=mode, masked=masked)

    def sample(p):
        return p([PROMPT], num_inference_steps=2, guidance_scale=5.0, generator=torch.Generator().manual_seed(0),
                 output_type="np").images

    before = sample(base)
    out = db.personalize(base, world.images("train", "mug_00"), "mug", classes, cfg, tmp_path / "p", seed=0)
    tuned = sample(out.pipe)
    assert tuned.shape == (1, 64, 64, 3) and not np.array_equal(tuned, before)
    assert np.array_equal(sample(db.load_personalized(base, tmp_path / "p")), tuned)
    assert np.array_equal(sample(base), before)


def test_fp16_save_halves_the_weights_and_reloads_in_the_base_dtype(pipe, world, class_paths, tmp_path):
    train = world.images("train", "mug_00")
    sizes = {}
    for dtype in ("fp32", "fp16"):
        cfg = dataclasses.replace(FAST, steps=1, save_dtype=dtype)
        out = db.personalize(pipe, train, "mug", class_paths, cfg, tmp_path / dtype, seed=0)
        sizes[dtype] = sum(f.stat().st_size for f in out.path.rglob("*.safetensors"))
        reloaded = db.load_personalized(pipe, out.path)
        assert next(reloaded.unet.parameters()).dtype == torch.float32
        if dtype == "fp16":  # what is in memory after the save is what was saved: fp16-rounded weights
            w = next(out.pipe.unet.parameters())
            assert torch.equal(w, w.half().float())
            assert torch.equal(next(reloaded.unet.parameters()), w)
    assert 0.45 < sizes["fp16"] / sizes["fp32"] < 0.55
