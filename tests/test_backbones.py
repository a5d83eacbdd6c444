"""prpg.core.backbones offline: tiny random ViTs of the three paper architectures (timm classes, tiny sizes)
saved as local timm folders and reloaded; tokens at two input sizes; the paper preprocessing per name."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from prpg.core import backbones
from prpg.core.backbones import (
    CLIP_MEAN,
    CLIP_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PAPER_PREPROCESSING,
    embed_images,
    from_model,
    load,
)
from tests.conftest import toybox_config
from prpg.zoo.encoder import build_encoder, eval_transform

torch.set_num_threads(1)

# paper name -> (timm architecture of its checkpoint, patch size)
ARCHS = {
    "dinov2_vitb14": ("vit_base_patch14_dinov2", 14),
    "clip_vitb16": ("vit_base_patch16_clip_224", 16),
    "mae_vitb16": ("vit_base_patch16_224", 16),
}
TINY = dict(embed_dim=32, depth=2, num_heads=2)


def tiny_args(patch: int) -> dict:
    return dict(TINY, img_size=2 * patch, num_classes=0, dynamic_img_size=True)


def build_tiny(name: str):
    import timm

    arch, patch = ARCHS[name]
    side = 2 * patch
    overlay = dict(input_size=(3, side, side), crop_pct=side / (side + 4), num_classes=0)
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False, pretrained_cfg_overlay=overlay, **tiny_args(patch))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """paper name -> (in-memory tiny model, its local timm folder)."""
    from timm.models import save_for_hf

    out = {}
    for name, (arch, patch) in ARCHS.items():
        model = build_tiny(name)
        path = tmp_path_factory.mktemp(name)
        save_for_hf(model, str(path), model_args=tiny_args(patch), safe_serialization=True)
        out[name] = (model, path)
    return out


def test_clip_architecture_has_its_pre_norm_and_the_others_not():
    assert isinstance(build_tiny("clip_vitb16").norm_pre, torch.nn.LayerNorm)  # CLIP's ln_pre
    assert isinstance(build_tiny("dinov2_vitb14").norm_pre, torch.nn.Identity)
    assert isinstance(build_tiny("mae_vitb16").norm_pre, torch.nn.Identity)


@pytest.mark.parametrize("name", list(ARCHS))
def test_local_folder_round_trip_tokens_at_two_sizes(saved, name):
    model, path = saved[name]
    bb = load(path)
    patch = ARCHS[name][1]
    assert bb.name == str(path) and bb.patch_size == patch
    assert not bb.model.training
    for h, w in [(2 * patch, 2 * patch), (3 * patch, 5 * patch)]:  # the second: non-square, not the default
        x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(h + w))
        cls, patches = bb.tokens(x)
        assert cls.shape == (2, 32) and patches.shape == (2, h // patch, w // patch, 32)
        ref = model.forward_features(x)  # the reloaded weights are the saved ones
        torch.testing.assert_close(cls, ref[:, 0], rtol=0, atol=0)
        # row-major grid: patch (i, j) is token 1 + i * gw + j
        gw = w // patch
        torch.testing.assert_close(patches[:, 1, gw - 1], ref[:, 1 + 1 * gw + gw - 1], rtol=0, atol=0)
        torch.testing.assert_close(patches.flatten(1, 2), ref[:, 1:], rtol=0, atol=0)
        assert not torch.allclose(cls.norm(dim=-1), torch.ones(2))  # not normalized
        both = bb.embedding(x, "cls+patch")
        assert both.shape == (2, 64)
        torch.testing.assert_close(both[:, 32:], patches.mean(dim=(1, 2)))
        torch.testing.assert_close(bb.embedding(x), cls)


def test_local_folder_preprocessing_comes_from_its_pretrained_cfg(saved):
    _, path = saved["dinov2_vitb14"]
    bb = load(path)
    assert (bb.crop, bb.resize) == (28, 32)  # input 28, crop_pct 28/32
    assert bb.mean == IMAGENET_MEAN and bb.std == IMAGENET_STD


def test_paper_preprocessing_per_name():
    imagenet_256_224 = backbones.Preprocessing(IMAGENET_MEAN, IMAGENET_STD, 256, 224)
    assert PAPER_PREPROCESSING["dinov2_vitb14"] == imagenet_256_224
    assert PAPER_PREPROCESSING["mae_vitb16"] == imagenet_256_224
    assert PAPER_PREPROCESSING["clip_vitb16"] == backbones.Preprocessing(CLIP_MEAN, CLIP_STD, 224, 224)
    assert [round(v, 4) for v in CLIP_MEAN] == [0.4815, 0.4578, 0.4082]
    assert [round(v, 4) for v in CLIP_STD] == [0.2686, 0.2613, 0.2758]
    for name in ARCHS:  # a paper name (or its hub id) wins over the checkpoint's own timm config
        for alias in (name, backbones.PAPER_BACKBONES[name]):
            bb = from_model(alias, build_tiny(name))
            assert (bb.mean, bb.std, bb.resize, bb.crop) == dataclasses.astuple(PAPER_PREPROCESSING[name])


def test_load_by_paper_name_uses_the_table_and_quick_gelu_for_clip(monkeypatch):
    from timm.layers import QuickGELU

    import timm

    seen = []
    hub_name = {f"hf-hub:{v}": k for k, v in backbones.PAPER_BACKBONES.items()}

    models = {src: build_tiny(name) for src, name in hub_name.items()}  # built before timm is patched

    def fake_create(source, **kwargs):  # stands in for the hub download: prpg.core.models' code path after it
        seen.append(source)
        return models[source]

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(timm, "create_model", fake_create)
    clip = load("clip_vitb16")
    assert seen == ["hf-hub:timm/vit_base_patch16_clip_224.openai"] and clip.name == "clip_vitb16"
    assert all(isinstance(b.mlp.act, QuickGELU) for b in clip.model.blocks)  # OpenAI CLIP's activation
    assert (clip.resize, clip.crop, clip.mean) == (224, 224, CLIP_MEAN)
    dino = load("dinov2_vitb14")
    assert seen[-1] == "hf-hub:timm/vit_base_patch14_dinov2.lvd142m"
    assert not any(isinstance(b.mlp.act, QuickGELU) for b in dino.model.blocks)
    assert (dino.resize, dino.crop, dino.mean) == (256, 224, IMAGENET_MEAN)


def test_toybox_encoder_preprocessing_is_its_eval_transform():
    cfg = toybox_config("pretrain.encoder")
    bb = from_model("toybox", build_encoder(cfg).eval())
    assert (bb.resize, bb.crop, bb.patch_size) == (cfg.resize, cfg.image_size, cfg.patch_size)
    assert bb.mean == IMAGENET_MEAN and bb.std == IMAGENET_STD
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 150, 3), dtype=np.uint8))
    x = bb.global_transform()(image)
    assert x.shape == (3, cfg.image_size, cfg.image_size)
    torch.testing.assert_close(x, eval_transform(cfg)(image), rtol=0, atol=0)


def test_embed_images_deterministic_normalized_and_mode_restored(saved, tmp_path):
    bb = load(saved["mae_vitb16"][1])
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)) for _ in range(3)]
    images[1].save(tmp_path / "one.png")
    mixed = [images[0], tmp_path / "one.png", images[2]]  # PIL images or paths
    bb.model.train()
    a = embed_images(bb, mixed, batch=2)
    assert bb.model.training
    assert a.shape == (3, 32) and a.dtype == torch.float32
    torch.testing.assert_close(embed_images(bb, mixed, batch=2), a, rtol=0, atol=0)  # deterministic
    torch.testing.assert_close(embed_images(bb, images, batch=3), a, rtol=0, atol=1e-6)  # batching: rounding
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(3))
    assert embed_images(bb, images, feature="cls+patch").shape == (3, 64)


def test_errors_name_the_problem(saved):
    import timm

    bb = load(saved["dinov2_vitb14"][1])
    with pytest.raises(ValueError, match="multiple of the patch size 14"):
        bb.tokens(torch.randn(1, 3, 30, 28))
    with pytest.raises(ValueError, match="unknown feature"):
        bb.embedding(torch.randn(1, 3, 28, 28), "mean")
    fixed = timm.create_model("vit_base_patch16_224", pretrained=False, **TINY, img_size=32, num_classes=0)
    with pytest.raises(ValueError, match="dynamic_img_size"):
        from_model("fixed", fixed)
