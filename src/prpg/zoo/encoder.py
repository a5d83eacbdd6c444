"""The toybox encoder: a tiny ViT of the DINOv2 architecture (timm), pretrained on the pool.

Objective: category-supervised (5-way cross-entropy on the CLS token) with crop, flip and colour
jitter augmentations. Why this and not self-supervision: the encoder must play the part of a generic
pretrained backbone that *knows categories* but has no reason to separate *your* mug from other
mugs. A supervised category objective gives exactly that prior cheaply on 2 CPU cores, and colour
jitter keeps it from keying on the palette that tells toybox instances apart. (SimCLR-style
instance discrimination on the pool would instead teach it the very skill personalization adds.)

Preprocessing mirrors DINOv2's "resize 256 -> center crop 224" at toybox scale: resize 73 bicubic ->
center crop 64, ImageNet mean/std; patch 8 gives an 8x8 grid (16x16 on the native 128 px images,
through timm's position-embedding interpolation, for the dense tasks).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prpg.configs import EncoderConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ARCHITECTURE = "vit_small_patch14_dinov2"  # timm's DINOv2 ViT class; the sizes below override it
# LayerScale starts at 1.0, not DINOv2-g's 1e-5: at 1e-5 a tiny ViT trained from scratch has a CLS output that
# barely depends on the image for hundreds of steps (measured: chance-level category accuracy at step 150).
INIT_VALUES = 1.0


def model_args(cfg: EncoderConfig) -> dict:
    return dict(img_size=cfg.image_size, patch_size=cfg.patch_size, embed_dim=cfg.embed_dim, depth=cfg.depth,
                num_heads=cfg.heads, num_classes=0, dynamic_img_size=True, init_values=INIT_VALUES)


def pretrained_cfg(cfg: EncoderConfig) -> dict:
    return dict(input_size=(3, cfg.image_size, cfg.image_size), crop_pct=cfg.image_size / cfg.resize,
                interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, tag="toybox", num_classes=0)


def build_encoder(cfg: EncoderConfig):
    import timm

    return timm.create_model(ARCHITECTURE, pretrained=False, pretrained_cfg_overlay=pretrained_cfg(cfg), **model_args(cfg))


def eval_transform(cfg: EncoderConfig):
    from torchvision import transforms as T

    return T.Compose([T.Resize(cfg.resize, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(cfg.image_size),
                      T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


def train_transform(cfg: EncoderConfig):
    from torchvision import transforms as T

    j = cfg.color_jitter
    return T.Compose([
        T.RandomResizedCrop(cfg.image_size, scale=(0.5, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(), T.ColorJitter(j, j, j, cfg.hue), T.RandomGrayscale(cfg.grayscale),
        T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])


@torch.no_grad()
def embed(model, images, transform, batch: int = 64) -> torch.Tensor:
    """L2-normalised CLS features (the backbone's global output), (N, D)."""
    model.eval()
    feats = [model(torch.stack([transform(im) for im in images[i : i + batch]])) for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(feats), dim=-1)


def object_crop(image, box: tuple[int, int, int, int] | None, rng: np.random.Generator, max_margin: float = 0.4):
    """A square, object-centred view: the mask box's longer side grown by a random margin. Square so
    the later resize does not squash the silhouette (a screwdriver's box is 4:1, a shoe's 2:1: the
    aspect ratio is much of what tells the categories apart)."""
    if box is None:
        return image
    x0, y0, x1, y1 = box
    half = (1 + 2 * rng.uniform(0.1, max_margin)) * max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return image.crop((int(cx - half), int(cy - half), int(cx + half), int(cy + half)))  # PIL pads outside with black


def pretrain_encoder(images, labels: list[int], n_classes: int, out_dir: Path, cfg: EncoderConfig, seed: int,
                     boxes: list | None = None) -> dict:
    """Category-supervised pretraining; saves config.json + model.safetensors (timm's HF format).

    With `boxes` (the images' mask boxes), a share `cfg.object_crops` of the views is object-centred
    crops: scenes hold distractors of other categories, and a tiny ViT trained from scratch on whole
    scenes learns the category too slowly for a CPU budget (measured: 40 % probe accuracy after 600
    steps; 40 % train accuracy after 1300 steps with half the views cropped)."""
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = build_encoder(cfg)
    head = torch.nn.Linear(cfg.embed_dim, n_classes)
    params = list(model.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    from diffusers.optimization import get_cosine_schedule_with_warmup

    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=cfg.steps // 10, num_training_steps=cfg.steps)
    tf = train_transform(cfg)
    rng = np.random.default_rng(seed)
    y_all = torch.tensor(labels)
    losses, accs = [], []
    t0, cpu0 = time.perf_counter(), time.process_time()
    model.train()
    bar = tqdm(range(cfg.steps), desc="encoder", mininterval=5)
    for _ in bar:
        idx = torch.randint(len(images), (cfg.batch,), generator=gen)
        views = [object_crop(images[i], boxes[i], rng) if boxes is not None and rng.random() < cfg.object_crops
                 else images[i] for i in idx.tolist()]
        x = torch.stack([tf(v) for v in views])
        logits = head(model(x))
        loss = F.cross_entropy(logits, y_all[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        accs.append((logits.argmax(-1) == y_all[idx]).float().mean().item())
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}", acc=f"{np.mean(accs[-20:]):.2f}", refresh=False)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - cpu0
    model.eval()
    save_for_hf(model, str(out_dir), model_args=model_args(cfg), safe_serialization=True)
    return {
        "config": dataclasses.asdict(cfg),
        "seed": seed,
        "train_images": len(images),
        "final_loss": float(np.mean(losses[-50:])),
        "final_train_accuracy": float(np.mean(accs[-50:])),
        "seconds": round(seconds, 1),
        "cpu_seconds": round(cpu_seconds, 1),  # all threads; robust to other jobs on the machine
        "params": sum(p.numel() for p in model.parameters()),
        "losses": losses,
    }
