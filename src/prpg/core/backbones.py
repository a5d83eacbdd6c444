"""One interface to the paper's backbones (DINOv2-B/14, CLIP-B/16, MAE-B/16) and the toybox encoder.

All four are timm VisionTransformers loaded by `prpg.core.models.load_backbone`. Why timm rather than the
reference's three loaders (torch.hub DINOv2, CLIP converted to a DINO-style ViT, HF MAE copied into
one, docs/protocol.md §1.8):
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
resize 256 -> crop 224 for both (docs/protocol.md §1.8). Local folders (toybox, tests) use their timm
pretrained_cfg.

Decisions on the weak points of docs/protocol.md §5 visible here (numbered as there):
- (10) training uses `embedding(x, "cls+patch")`, while the reference evaluates personalized models
  on the CLS only; both are one call here, so evaluation picks deliberately. The reference's
  *pretrained* CLIP baseline is the 512-d projected `encode_image`; `clip_vitb16` here is always the
  unprojected 768-d CLS (num_classes=0 drops timm's projection head), as its fine-tuned CLIP.
- (11) no embedding-size table (the reference's lists CLIP as 512): D is the model's own.
- timm's `vit_base_patch16_clip_224` uses GELU where OpenAI CLIP uses QuickGELU; `load` restores it.

Reference-protocol helpers (EvalConfig.protocol = "reference", prpg.evaluate.protocol):
- `load(..., projection=True)` keeps the checkpoint's head (for OpenAI CLIP the 768 -> 512 `proj`, which
  timm stores as `head`), so feature "proj" = head(CLS after ln_post) = CLIP's `encode_image`;
- `hub_pos_embed` resamples position embeddings as the reference's ViTs do (torch.hub DINOv2 and the
  DINO-style ViT it loads CLIP and MAE into): bicubic, no antialiasing, scale factor (n + 0.1) / M;
- `embed_images(..., dropout=True)` / `dropout_gap` measure what evaluating in train mode (the reference
  keeps LoRA dropout active at eval) changes.
"""

from __future__ import annotations

import contextlib
import math
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from prpg.core.models import PAPER_BACKBONES, load_backbone

Feature = Literal["cls", "cls+patch", "proj"]
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
    # The checkpoint's own head (OpenAI CLIP: the 768 -> 512 projection), feature "proj"; None: not loaded.
    projection: torch.nn.Module | None = None

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
        if feature == "proj":
            if self.projection is None:
                raise ValueError(f"{self.name}: feature 'proj' needs the checkpoint's head; load it with "
                                 "backbones.load(..., projection=True)")
            return self.projection(cls)
        raise ValueError(f"unknown feature {feature!r}; use 'cls', 'cls+patch' or 'proj'")

    def to(self, device: str | torch.device) -> Backbone:
        self.model.to(device)
        if self.projection is not None:
            self.projection.to(device)
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
                         "or load it through prpg.core.backbones.load")
    ph, pw = base.patch_embed.patch_size
    if ph != pw:
        raise ValueError(f"{name}: non-square patches {ph}x{pw} are not supported")
    pre = preprocessing_for(name, model)
    return Backbone(name=str(name), model=model, patch_size=ph, mean=pre.mean, std=pre.std,
                    resize=pre.resize, crop=pre.crop)


def load(name_or_path: str | Path, device: str = "cpu", projection: bool = False) -> Backbone:
    """A paper name, hub id, "toybox" or a local timm folder, in eval mode on `device`; projection=True
    also loads the checkpoint's head (`projection_head`) for feature "proj"."""
    model = load_backbone(name_or_path)  # QuickGELU for OpenAI CLIP is set there
    name = str(name_or_path)
    bb = from_model(name, model.eval())
    if projection:
        bb.projection = projection_head(name_or_path)
    return bb.to(device)


def projection_head(name_or_path: str | Path) -> torch.nn.Module:
    """The checkpoint's head Linear, in eval mode. load_backbone builds with num_classes=0, which drops it;
    OpenAI CLIP's timm checkpoint stores its image projection `proj` (768 -> 512, no bias) there, so
    head(CLS after the final norm) is `encode_image`, the reference's pretrained CLIP feature
    (docs/protocol.md §1.8)."""
    import timm

    from prpg.core.models import backbone_source

    model = timm.create_model(backbone_source(name_or_path), pretrained=True)
    head = getattr(model, "head", None)
    if not isinstance(head, torch.nn.Linear):
        raise ValueError(f"{name_or_path}: the checkpoint has no head Linear to project with "
                         f"(got {type(head).__name__}); feature 'proj' needs one")
    return head.eval()


def paper_name_of(name: str | Path) -> str | None:
    """"dinov2_vitb14" | "clip_vitb16" | "mae_vitb16" for a paper backbone name or hub id, else None."""
    return _PAPER_NAME_OF.get(str(name))


def paper_name(bb: Backbone) -> str | None:
    return paper_name_of(bb.name)


# --- the reference's position-embedding resampling -----------------------------------------------------

HUB_OFFSET = 0.1  # DINO / DINOv2 hub: "a small number to avoid floating point error in the interpolation"


def hub_resample(pos_embed: torch.Tensor, new_size: tuple[int, int], num_prefix: int) -> torch.Tensor:
    """(1, P + M*M, D) -> (1, P + h*w, D) as the reference's ViTs do: bicubic on the M x M grid with
    scale factor ((h + 0.1) / M, (w + 0.1) / M) (the factor, not the size, sets the sampling positions)
    and NO antialiasing. timm resamples to the size with antialias=True, which at these sizes means
    PyTorch's antialiased cubic (a = -0.5) rather than plain bicubic (a = -0.75), and a different
    kernel width when shrinking (224 px training/global input is 16 cells from DINOv2's 37)."""
    prefix, grid = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    m = math.isqrt(grid.shape[1])
    if m * m != grid.shape[1]:
        raise ValueError(f"position embedding of {grid.shape[1]} cells is not a square grid")
    h, w = new_size
    if (h, w) == (m, m):
        return pos_embed  # the hub returns its table unchanged at the native size
    x = grid.float().reshape(1, m, m, -1).permute(0, 3, 1, 2)
    x = F.interpolate(x, scale_factor=((h + HUB_OFFSET) / m, (w + HUB_OFFSET) / m), mode="bicubic",
                      antialias=False)
    if tuple(x.shape[-2:]) != (h, w):
        raise ValueError(f"hub resampling gave {tuple(x.shape[-2:])} for {(h, w)}")
    x = x.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(pos_embed.dtype)
    return torch.cat([prefix, x], dim=1)


def _hub_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """timm VisionTransformer._pos_embed (dynamic size, NHWC patches in) with hub_resample."""
    B, H, W, C = x.shape
    to_cat = [t.expand(B, -1, -1) for t in (self.cls_token, getattr(self, "reg_token", None)) if t is not None]
    prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    pos = hub_resample(self.pos_embed, (H, W), prefix)
    x = x.reshape(B, -1, C)
    if self.no_embed_class:
        x = torch.cat(to_cat + [x + pos], dim=1)
    else:
        x = torch.cat(to_cat + [x], dim=1) + pos
    return self.pos_drop(x)


@contextlib.contextmanager
def hub_pos_embed(bb: Backbone, enabled: bool = True):
    """Inside the block the backbone's ViT resamples its position embeddings with `hub_resample` (the
    reference's); the model is restored on exit. A no-op when not enabled."""
    m = vit(bb.model)
    if not enabled:
        yield bb
        return
    if not getattr(m, "dynamic_img_size", False) or getattr(m, "pos_embed", None) is None:
        raise ValueError(f"{bb.name}: hub position-embedding resampling needs a dynamic-size timm ViT")
    had = "_pos_embed" in vars(m)
    old = vars(m).get("_pos_embed")
    m._pos_embed = types.MethodType(_hub_pos_embed, m)
    try:
        yield bb
    finally:
        if had:
            m._pos_embed = old
        else:
            del m._pos_embed


def _as_image(item):
    from PIL import Image

    if isinstance(item, Image.Image):
        return item
    from prpg.data import load_image

    return load_image(item)


@torch.no_grad()
def embed_images(bb: Backbone, images: Sequence, feature: Feature = "cls", batch: int = 32,
                 device: str = "cpu", dropout: bool = False) -> torch.Tensor:
    """(N, D) float32 on the CPU, L2-normalized; images are PIL images or paths. Runs in eval mode (LoRA
    dropout off) and restores the train/eval mode; the model is moved to `device` and stays there.
    dropout=True runs in train mode instead, as the reference evaluates its LoRA models
    (docs/protocol.md §2.0): only to measure that difference (`dropout_gap`); seed torch first for repeatable
    draws."""
    if not len(images):
        raise ValueError(f"{bb.name}: no images to embed")
    transform = bb.global_transform()
    was_training = bb.model.training
    bb.model.train(dropout).to(device)
    try:
        out = []
        for i in range(0, len(images), batch):
            x = torch.stack([transform(_as_image(im)) for im in images[i : i + batch]]).to(device)
            out.append(bb.embedding(x, feature).float().cpu())
    finally:
        bb.model.train(was_training)
    return F.normalize(torch.cat(out), dim=-1)


def dropout_gap(bb: Backbone, images: Sequence, feature: Feature = "cls", seed: int = 0, batch: int = 32,
                device: str = "cpu") -> dict[str, float]:
    """How far the reference's train-mode evaluation (LoRA dropout active) moves the embeddings from
    ours (eval mode): cosine between the two embeddings of each image, mean and min, plus the fraction
    of images whose nearest other image changes. The dropout draw is seeded (`seed`)."""
    ours = embed_images(bb, images, feature, batch, device)
    torch.manual_seed(seed)
    theirs = embed_images(bb, images, feature, batch, device, dropout=True)
    cos = (ours * theirs).sum(-1)
    out = {"mean_cos": float(cos.mean()), "min_cos": float(cos.min()), "n": len(images)}
    if len(images) > 2:
        def nearest(e):
            s = e @ e.T
            s.fill_diagonal_(-2.0)
            return s.argmax(1)
        out["nn_changed"] = float((nearest(ours) != nearest(theirs)).float().mean())
    return out
