"""One interface to the paper's backbones (DINOv2-B/14, CLIP-B/16, MAE-B/16) and the toybox encoder.

All four are timm VisionTransformers loaded by `prpg.models.load_backbone`. Why timm rather than the
reference's three loaders (torch.hub DINOv2, CLIP converted to a DINO-style ViT, HF MAE copied into
one, protocol §1.8):
- every block keeps the fused `qkv` Linear, which is exactly what the paper's LoRA targets
  (`target_modules=["qkv"]`), so one LoRA recipe fits all three models;
- `dynamic_img_size=True` interpolates the position embeddings for any input size (the dense tasks
  run at 896 / 1024 px, training at 224);
- each checkpoint carries its preprocessing in `pretrained_cfg` (read here for local folders).

Features follow the reference's `get_intermediate_layers(n=1, return_class_token=True)`: the last
block's tokens after the final LayerNorm, CLS kept apart, prefix/register tokens dropped. CLIP's
feature is therefore its 768-d CLS after ln_post, unprojected, as the reference's fine-tuned CLIP.

Preprocessing (global tasks and training) is the paper's, per name (`PAPER_PREPROCESSING`), and not
timm's resolved config: timm would give DINOv2 518 px and MAE a 0.9 crop_pct, the reference uses
resize 256 -> crop 224 for both (§1.8). Local folders (toybox, tests) use their timm pretrained_cfg.

Protocol §5 decisions visible here:
- (10) training uses `embedding(x, "cls+patch")`, while the reference evaluates personalized models
  on the CLS only; both are one call here, so evaluation picks deliberately. The reference's
  *pretrained* CLIP baseline is the 512-d projected `encode_image`; `clip_vitb16` here is always the
  unprojected 768-d CLS (num_classes=0 drops timm's projection head), as its fine-tuned CLIP.
- (11) no embedding-size table (the reference's lists CLIP as 512): D is the model's own.
- timm's `vit_base_patch16_clip_224` uses GELU where OpenAI CLIP uses QuickGELU; `load` restores it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from prpg.models import PAPER_BACKBONES, load_backbone

Feature = Literal["cls", "cls+patch"]
RGBTriple = tuple[float, float, float]

IMAGENET_MEAN: RGBTriple = (0.485, 0.456, 0.406)
IMAGENET_STD: RGBTriple = (0.229, 0.224, 0.225)
CLIP_MEAN: RGBTriple = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD: RGBTriple = (0.26862954, 0.26130258, 0.27577711)


@dataclass(frozen=True)
class Preprocessing:
    mean: RGBTriple
    std: RGBTriple
    resize: int  # short side, bicubic
    crop: int  # center crop


# Reference util/transforms.py: DINOv2 and MAE resize 256 -> crop 224 with ImageNet statistics, CLIP
# (custom / fine-tuned) resize 224 -> crop 224 with CLIP statistics. All bicubic.
PAPER_PREPROCESSING: dict[str, Preprocessing] = {
    "dinov2_vitb14": Preprocessing(IMAGENET_MEAN, IMAGENET_STD, resize=256, crop=224),
    "clip_vitb16": Preprocessing(CLIP_MEAN, CLIP_STD, resize=224, crop=224),
    "mae_vitb16": Preprocessing(IMAGENET_MEAN, IMAGENET_STD, resize=256, crop=224),
}
# The hub ids of the paper names preprocess as the names do.
_PAPER_NAME_OF = {**{n: n for n in PAPER_BACKBONES}, **{v: k for k, v in PAPER_BACKBONES.items()},
                  **{"hf-hub:" + v: k for k, v in PAPER_BACKBONES.items()}}
# OpenAI's CLIP uses QuickGELU; timm's `vit_base_patch16_clip_224` (the architecture the hub config of
# `timm/vit_base_patch16_clip_224.openai` names) builds plain GELU, so the weights load into a
# slightly different network. `load` puts QuickGELU back (a no-op if the model already has it).


def vit(model: torch.nn.Module) -> torch.nn.Module:
    """The timm ViT under an optional peft wrapper (the LoRA layers are injected into it in place)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def timm_preprocessing(model: torch.nn.Module) -> Preprocessing:
    """Preprocessing from timm's resolved data config: crop = input size, resize = crop / crop_pct
    (timm's own eval-transform rule; the toybox encoder says 112 / 0.875 = 128)."""
    import timm

    cfg = timm.data.resolve_data_config({}, model=vit(model))
    crop = int(cfg["input_size"][-1])
    resize = math.floor(crop / cfg.get("crop_pct", 1.0) + 1e-6)  # epsilon: 112/(112/128) is 127.999...
    return Preprocessing(tuple(cfg["mean"]), tuple(cfg["std"]), resize=resize, crop=crop)


def preprocessing_for(name: str, model: torch.nn.Module) -> Preprocessing:
    paper = _PAPER_NAME_OF.get(str(name))
    return PAPER_PREPROCESSING[paper] if paper else timm_preprocessing(model)


def _rgb(image):
    return image.convert("RGB")  # module-level, so the transform pickles into DataLoader workers


@dataclass
class Backbone:
    """A ViT with its paper preprocessing. `model` may be peft-wrapped (a personalized backbone)."""

    name: str  # "dinov2_vitb14" | "clip_vitb16" | "mae_vitb16" | "toybox" | a path
    model: torch.nn.Module
    patch_size: int
    mean: RGBTriple
    std: RGBTriple
    resize: int
    crop: int

    def global_transform(self):
        """PIL image -> normalized (3, crop, crop): resize short side bicubic, center crop, mean/std."""
        from torchvision import transforms as T

        return T.Compose([
            T.Lambda(_rgb),
            T.Resize(self.resize, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(self.crop),
            T.ToTensor(),
            T.Normalize(self.mean, self.std),
        ])

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(cls (B, D), patches (B, h, w, D)) of the last block after the final norm, not normalized.
        x: (B, 3, H, W) normalized, H and W multiples of the patch size."""
        B, _, H, W = x.shape
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"{self.name}: input {H}x{W} is not a multiple of the patch size {p}; "
                             f"resize to a multiple of {p} first")
        m = vit(self.model)
        out = m.forward_features(x)
        patches = out[:, m.num_prefix_tokens :]
        return out[:, 0], patches.reshape(B, H // p, W // p, out.shape[-1])

    def embedding(self, x: torch.Tensor, feature: Feature = "cls") -> torch.Tensor:
        """CLS, or concat(CLS, mean patch token) (the paper's training embedding); not normalized."""
        cls, patches = self.tokens(x)
        if feature == "cls":
            return cls
        if feature == "cls+patch":
            return torch.cat([cls, patches.mean(dim=(1, 2))], dim=-1)
        raise ValueError(f"unknown feature {feature!r}; use 'cls' or 'cls+patch'")

    def to(self, device: str | torch.device) -> Backbone:
        self.model.to(device)
        return self


def from_model(name: str, model: torch.nn.Module) -> Backbone:
    """Wrap an already built timm ViT (e.g. a tiny test model); preprocessing from the name's paper
    table entry, else from the model's timm pretrained config."""
    base = vit(model)
    if getattr(base, "cls_token", None) is None or not hasattr(base, "patch_embed"):
        raise ValueError(f"{name}: {type(base).__name__} is not a timm ViT with a CLS token")
    if not getattr(base, "dynamic_img_size", False):
        raise ValueError(f"{name}: the ViT was built without dynamic_img_size, so it only takes its "
                         "training size; build it with timm.create_model(..., dynamic_img_size=True) "
                         "or load it through prpg.backbones.load")
    ph, pw = base.patch_embed.patch_size
    if ph != pw:
        raise ValueError(f"{name}: non-square patches {ph}x{pw} are not supported")
    pre = preprocessing_for(name, model)
    return Backbone(name=str(name), model=model, patch_size=ph, mean=pre.mean, std=pre.std,
                    resize=pre.resize, crop=pre.crop)


def load(name_or_path: str | Path, device: str = "cpu") -> Backbone:
    """A paper name, hub id, "toybox" or a local timm folder, in eval mode on `device`."""
    model = load_backbone(name_or_path)  # QuickGELU for OpenAI CLIP is set there
    name = str(name_or_path)
    return from_model(name, model.eval()).to(device)


def _as_image(item):
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    from prpg.data import load_image

    return load_image(item)


@torch.no_grad()
def embed_images(bb: Backbone, images: Sequence, feature: Feature = "cls", batch: int = 32,
                 device: str = "cpu") -> torch.Tensor:
    """(N, D) float32 on the CPU, L2-normalized; images are PIL images or paths. Runs in eval mode (LoRA
    dropout off) and restores the train/eval mode; the model is moved to `device` and stays there."""
    if not len(images):
        raise ValueError(f"{bb.name}: no images to embed")
    transform = bb.global_transform()
    was_training = bb.model.training
    bb.model.eval().to(device)
    try:
        out = []
        for i in range(0, len(images), batch):
            x = torch.stack([transform(_as_image(im)) for im in images[i : i + batch]]).to(device)
            out.append(bb.embedding(x, feature).float().cpu())
    finally:
        bb.model.train(was_training)
    return F.normalize(torch.cat(out), dim=-1)
