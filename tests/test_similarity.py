"""Similarity models: DreamSim loads offline from a cache folder in DreamSim's own layout (random
weights built here), the missing-cache error, and the backbone CLS embedding with its transforms."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from tests.conftest import toybox_config
from prpg.core.models import ModelNotAvailableError
from prpg.filter.similarity import (
    BackboneModel,
    DreamSimModel,
    backbone_transform,
    default_dreamsim_cache,
    dreamsim_required_files,
    missing_dreamsim_files,
)

# The DINO repo's torch.hub entry point for dino_vitb16 (github.com/facebookresearch/dino hubconf.py),
# which torch.hub leaves in <hub dir>/facebookresearch_dino_main/ after DreamSim's first online load.
DINO_HUBCONF = '''import torch
import vision_transformer as vits

dependencies = ["torch", "torchvision"]


def dino_vitb16(pretrained=True, **kwargs):
    model = vits.__dict__["vit_base"](patch_size=16, num_classes=0, **kwargs)
    if pretrained:
        state_dict = torch.hub.load_state_dict_from_url(
            url="https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth",
            map_location="cpu",
        )
        model.load_state_dict(state_dict, strict=True)
    return model
'''
DINO_HEAD_SHAPES = {  # DINOHead(768, 2048) of dreamsim.feature_extraction.extractor, student weights
    "module.head.mlp.0.weight": (2048, 768), "module.head.mlp.0.bias": (2048,),
    "module.head.mlp.2.weight": (2048, 2048), "module.head.mlp.2.bias": (2048,),
    "module.head.mlp.4.weight": (256, 2048), "module.head.mlp.4.bias": (256,),
    "module.head.last_layer.weight": (2048, 256),
}
LORA = dict(r=16, lora_alpha=0.5, lora_dropout=0.3, bias="none", target_modules=["qkv"])  # DreamSim's LoRA


def compact_random(shape, gen: torch.Generator, std: float = 0.02) -> torch.Tensor:
    """Random weights stored in O(sum(shape)) bytes: a Toeplitz-like strided view of a short random
    vector. torch.save keeps views, so a random ViT-B checkpoint is a few kB instead of 340 MB."""
    base = torch.randn(sum(shape), generator=gen) * std
    return base.as_strided(tuple(shape), (1,) * len(shape))


def random_state_dict(model: torch.nn.Module, gen: torch.Generator) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in model.state_dict().items():
        if "norm" in key and key.endswith("weight"):
            out[key] = torch.ones(1).expand(value.shape)
        elif key.endswith("bias"):
            out[key] = torch.zeros(1).expand(value.shape)
        else:
            out[key] = compact_random(value.shape, gen)
    return out


def build_dreamsim_cache(root: Path, types=("ensemble", "dino_vitb16"), seed: int = 0) -> Path:
    """A DreamSim cache_dir in DreamSim's own layout with random weights of the right shapes: what its
    release zip unpacks to (backbone .pth/.pth.tar files, <tag>lora/ PEFT adapters) plus what torch.hub
    adds (the DINO repo, DINO's checkpoint). The .pth files are DreamSim's format (torch.save pickles);
    the adapters are written by PEFT itself, from a PerceptualModel built on these files."""
    from dreamsim.config import dreamsim_args
    from dreamsim.feature_extraction import vision_transformer as dino_vit
    from dreamsim.model import PerceptualModel
    from peft import LoraConfig, get_peft_model

    gen = torch.Generator().manual_seed(seed)
    root.mkdir(parents=True, exist_ok=True)
    vit = dino_vit.vit_base(patch_size=16, num_classes=0)  # DINO's ViT-B/16 (DreamSim ships DINO's file)
    hub = root / "facebookresearch_dino_main"
    hub.mkdir()
    shutil.copy(dino_vit.__file__, hub / "vision_transformer.py")
    (hub / "hubconf.py").write_text(DINO_HUBCONF)
    (root / "checkpoints").mkdir()
    torch.save(random_state_dict(vit, gen), root / "checkpoints/dino_vitbase16_pretrain.pth")
    head = {k: compact_random(s, gen) for k, s in DINO_HEAD_SHAPES.items()}
    torch.save({"student": head}, root / "dino_vitb16_pretrain.pth")
    vit.pos_drop = torch.nn.LayerNorm(768)  # CLIP-as-DINO: ln_pre in place of pos_drop, plus a projection
    for name in ("clip_vitb16_pretrain.pth.tar", "open_clip_vitb16_pretrain.pth.tar"):
        state = random_state_dict(vit, gen) | {"proj": compact_random((768, 512), gen)}
        torch.save({"state_dict": state}, root / name)

    previous = torch.hub.get_dir()
    try:
        for kind in types:
            tag = "ensemble_lora" if kind == "ensemble" else f"{kind}_single_lora"
            base = PerceptualModel(**dreamsim_args["model_config"][kind], device="cpu", load_dir=str(root),
                                   normalize_embeds=True)
            peft_model = get_peft_model(base, LoraConfig(**LORA))
            for name, p in peft_model.named_parameters():
                if "lora_B" in name:  # PEFT starts B at 0; random B makes a wrongly loaded adapter visible
                    p.data = torch.randn(p.shape, generator=gen) * 0.02
            peft_model.save_pretrained(str(root / tag))
    finally:
        torch.hub.set_dir(previous)
    return root


@pytest.fixture(scope="session")
def dreamsim_cache(tmp_path_factory) -> Path:
    return build_dreamsim_cache(tmp_path_factory.mktemp("dreamsim") / "cache")


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails loudly (a download would otherwise hang or silently succeed)."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def photos(n: int, size=(40, 56), seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def lora_b(model, index: int = 0) -> torch.Tensor:
    return [v for k, v in model.state_dict().items() if "lora_B" in k][index]


def test_dreamsim_ensemble_loads_offline_from_local_cache(dreamsim_cache, no_network):
    from safetensors.torch import load_file

    hub_before = torch.hub.get_dir()
    assert missing_dreamsim_files(dreamsim_cache, "ensemble") == []
    sim = DreamSimModel(dreamsim_cache, "ensemble", device="cpu")
    assert torch.hub.get_dir() == hub_before  # DreamSim's set_dir(cache_dir) is undone

    e = sim.embed(photos(2))
    assert e.shape == (2, 768 + 512 + 512)  # DINO CLS + CLIP and OpenCLIP projected embeddings
    assert torch.allclose(e.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert not torch.allclose(e[0], e[1])
    # The adapter in ensemble_lora/ (PEFT's file, random B) is what the model runs with.
    saved = load_file(str(dreamsim_cache / "ensemble_lora/adapter_model.safetensors"))
    key = next(k for k in saved if "lora_B" in k)
    assert torch.equal(lora_b(sim.model), saved[key])


def test_dreamsim_embedding_is_the_reference_preprocessing(dreamsim_cache, no_network):
    """Single-branch type (fast): our embed == DreamSim's own preprocess + model.embed + L2 norm."""
    from dreamsim import dreamsim

    sim = DreamSimModel(dreamsim_cache, "dino_vitb16", device="cpu")
    images = photos(3, size=(50, 30), seed=1)
    previous = torch.hub.get_dir()
    model, preprocess = dreamsim(pretrained=True, device="cpu", cache_dir=str(dreamsim_cache),
                                 dreamsim_type="dino_vitb16")
    torch.hub.set_dir(previous)
    with torch.no_grad():
        ref = F.normalize(model.embed(torch.cat([preprocess(im) for im in images])), dim=-1)
    assert torch.allclose(sim.embed(images), ref, atol=1e-5)
    assert sim.embed(images[:1]).shape == (1, 768)  # DreamSim squeezes a batch of 1; we keep (N, D)


def test_filter_stage_with_dreamsim(tmp_path, dreamsim_cache, no_network):
    """build_similarity's DreamSim branch inside the stage (single-branch type for speed)."""
    from prpg.data import load_dataset
    from prpg.filter.filtering import FilterConfig, filter_instance
    from tests.conftest import make_pods_tree

    ds = load_dataset(make_pods_tree(tmp_path / "pods"))
    cfg = toybox_config("filter", model="dreamsim", dreamsim_type="dino_vitb16",
                        cache_dir=str(dreamsim_cache),
                       localize="none", threshold=0.0, max_attempts=3)
    summary = filter_instance(iter(photos(5, seed=2)), ds, "mug_00", tmp_path / "out", cfg, n_keep=2)
    assert summary["attempts"] == 2 and summary["kept"] == 2  # random weights: all cosines ~1 >= 0
    assert sorted(p.name for p in (tmp_path / "out/kept").iterdir()) == ["0000.png", "0001.png"]


def test_missing_cache_fails_at_once_naming_the_folder(tmp_path, monkeypatch, no_network):
    empty = tmp_path / "nothing_here"
    with pytest.raises(ModelNotAvailableError) as err:
        DreamSimModel(empty, "ensemble", device="cpu")  # HF_HUB_OFFLINE=1 (no_network)
    msg = str(err.value)
    assert str(empty) in msg and "download_dreamsim" in msg and "HF_HUB_OFFLINE" in msg
    assert "ensemble_lora/adapter_config.json" in msg and "clip_vitb16_pretrain.pth.tar" in msg

    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(ModelNotAvailableError, match="allow_download=False"):
        DreamSimModel(empty, "dino_vitb16", device="cpu", allow_download=False)
    assert not empty.exists()  # nothing created, nothing fetched


def test_partial_cache_names_exactly_the_missing_files(tmp_path, dreamsim_cache, no_network):
    partial = tmp_path / "partial"
    shutil.copytree(dreamsim_cache, partial)
    shutil.rmtree(partial / "facebookresearch_dino_main")  # e.g. only the release zip was copied over
    assert missing_dreamsim_files(partial, "dino_vitb16") == ["facebookresearch_dino_main/hubconf.py"]
    with pytest.raises(ModelNotAvailableError, match="missing: facebookresearch_dino_main/hubconf.py\\)"):
        DreamSimModel(partial, "dino_vitb16", device="cpu")


def test_failed_download_becomes_the_same_clear_error(tmp_path, monkeypatch):
    """Online mode with no network: the download's error is turned into ours, naming the folder."""
    import torch.hub as hub

    def unreachable(*args, **kwargs):
        raise OSError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(hub, "download_url_to_file", unreachable)
    with pytest.raises(ModelNotAvailableError, match="download failed .*name resolution") as err:
        DreamSimModel(tmp_path / "c", "dino_vitb16", device="cpu", allow_download=True)
    assert str(tmp_path / "c") in str(err.value)


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("PRPG_DREAMSIM_CACHE", raising=False)
    assert default_dreamsim_cache() == Path.home() / ".cache/prpg/dreamsim"
    monkeypatch.setenv("PRPG_DREAMSIM_CACHE", str(tmp_path / "ds"))
    assert default_dreamsim_cache() == tmp_path / "ds"
    assert "ensemble_lora/adapter_config.json" in dreamsim_required_files("ensemble")
    with pytest.raises(ValueError, match="dreamsim_type"):
        dreamsim_required_files("ensembel")


def tiny_encoder():
    from prpg.zoo.encoder import build_encoder

    torch.manual_seed(0)
    cfg = toybox_config("pretrain.encoder", image_size=32, resize=36, patch_size=8, embed_dim=32, depth=1,
                        heads=2)
    return build_encoder(cfg)


def test_backbone_embeds_normalised_cls():
    model = tiny_encoder()
    sim = BackboneModel(model, resize="eval")
    images = photos(3)
    e = sim.embed(images)
    assert e.shape == (3, 32)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-5)
    with torch.no_grad():
        cls = model(torch.stack([sim.transform(im) for im in images]))  # timm: pooled = CLS for 'token'
    assert torch.allclose(e, F.normalize(cls, dim=-1), atol=1e-5)


def test_backbone_transforms():
    """"eval" is the toybox encoder's eval transform; "squash" keeps all of a long crop."""
    from torchvision import transforms as T

    from prpg.zoo.encoder import IMAGENET_MEAN, IMAGENET_STD, build_encoder, eval_transform

    cfg = toybox_config("pretrain.encoder")
    model = build_encoder(cfg)
    long_crop = photos(1, size=(160, 40))[0]  # 4:1, like a screwdriver's box
    assert torch.equal(backbone_transform(model, "eval")(long_crop), eval_transform(cfg)(long_crop))
    squashed = backbone_transform(model, "squash")(long_crop)
    assert squashed.shape == (3, cfg.image_size, cfg.image_size)
    # Squash = resize straight to the input size (both ends of the object stay), then normalise.
    size = (cfg.image_size, cfg.image_size)
    expected = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)(T.ToTensor()(long_crop.resize(size, Image.BICUBIC)))
    assert torch.allclose(squashed, expected, atol=1e-5)


def test_backbone_without_cls_token_is_refused():
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, class_token=False,
                              global_pool="avg", img_size=32, embed_dim=16, depth=1, num_heads=1)
    with pytest.raises(ValueError, match="no CLS token"):
        BackboneModel(model)
