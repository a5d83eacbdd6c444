"""The toybox encoder: a tiny ViT of the DINOv2 architecture (timm), pretrained on the pool.

Objective: category supervision, on the CLS token (5-way cross-entropy) and on every patch token
("token labeling", Jiang et al. 2021: each patch predicts the category of the object under it, or
background, from the pool's masks). Why supervised and not self-supervised: the encoder must play
the part of a generic pretrained backbone that *knows categories* but has no reason to separate
*your* mug from other mugs; SimCLR-style instance discrimination on the pool would instead teach it
the very skill personalization adds. Why the patch loss: a ViT from scratch learns slowly from one
label per image; 64 labels per image make it learn silhouettes within a CPU budget (measured, same
1000 steps: val probe 0.52 with it, 0.43 without).

Augmentations are batched tensor ops on views cut once (PIL per-image transforms cost more than the
tiny ViT's own step): the object is recoloured, re-textured (another pool object's pattern or a flat
colour inside its mask) and set on another background, so palette and pattern, which tell toybox
*instances* apart, carry no category signal and the shape does.

Preprocessing mirrors DINOv2's "resize 256 -> center crop 224" at toybox scale: resize 73 bicubic ->
center crop 64, ImageNet mean/std; patch 8 gives an 8x8 grid (16x16 on the native 128 px images,
through timm's position-embedding interpolation, for the dense tasks).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prpg.core.configs import EncoderConfig
from prpg.data.images import mask_to_box

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


@torch.no_grad()
def embed(model, images, transform, batch: int = 64) -> torch.Tensor:
    """L2-normalised CLS features (the backbone's global output), (N, D)."""
    model.eval()
    feats = [model(torch.stack([transform(im) for im in images[i : i + batch]])) for i in range(0, len(images), batch)]
    return F.normalize(torch.cat(feats), dim=-1)


VIEWS = ("object", "box", "scene")  # EncoderConfig.view_mix: the share of each kind of training view


def _square(box, margin: float) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    half = (1 + 2 * margin) * max(x1 - x0, y1 - y0) / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return int(cx - half), int(cy - half), int(cx + half), int(cy + half)


def cut_views(image, mask: np.ndarray, cfg: EncoderConfig, rng: np.random.Generator):
    """The image's three training views, each (S, S) with S = image_size * 9/8 (room for the random
    zoom): "object", a square object-centred crop (a screwdriver's box is 4:1, a shoe's 2:1, and the
    aspect ratio is much of what tells the categories apart, so it is not squashed); "box", the tight
    mask box through the eval transform's resize-shorter-side + center-crop, as the filter and the
    gates crop real objects; "scene", the whole image. Returns (RGB uint8 (3, 3, S, S), mask uint8 (3, S, S))."""
    from PIL import Image

    size = round(cfg.image_size * 9 / 8)
    m = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255)
    box = mask_to_box(mask) or (0, 0, *image.size)  # an empty mask: the whole image
    pairs = []
    sq = _square(box, rng.uniform(0.1, 0.4))  # PIL pads outside the image with black
    pairs.append((image.crop(sq), m.crop(sq)))
    x0, y0, x1, y1 = box
    g = rng.uniform(0.0, 0.15)
    w, h = x1 - x0, y1 - y0
    b = (int(x0 - g * w), int(y0 - g * h), int(x1 + g * w), int(y1 + g * h))
    im_b, m_b = image.crop(b), m.crop(b)
    scale = size * cfg.resize / cfg.image_size / min(im_b.size)
    wh = (max(size, round(im_b.size[0] * scale)), max(size, round(im_b.size[1] * scale)))
    im_b, m_b = im_b.resize(wh, Image.BICUBIC), m_b.resize(wh, Image.BILINEAR)
    left, top = (wh[0] - size) // 2, (wh[1] - size) // 2
    pairs.append((im_b.crop((left, top, left + size, top + size)), m_b.crop((left, top, left + size, top + size))))
    pairs.append((image, m))
    rgb = np.stack([np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)) for im, _ in pairs])
    alpha = np.stack([np.asarray(mm.resize((size, size), Image.BILINEAR)) for _, mm in pairs])
    return torch.from_numpy(rgb).permute(0, 3, 1, 2), torch.from_numpy(alpha)


def augment(views: torch.Tensor, masks: torch.Tensor, idx: torch.Tensor, cfg: EncoderConfig,
            g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of normalised training images (B, 3, R, R) and their object masks (B, 1, R, R) in [0, 1].
    `views`/`masks`: every pool image's cut_views, (N, 3, 3, S, S) / (N, 3, S, S) uint8."""
    n, size, out = len(idx), views.shape[-1], cfg.image_size

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    kind = torch.multinomial(torch.tensor(cfg.view_mix), n, replacement=True, generator=g)
    x = views[idx, kind].float() / 255
    m = masks[idx, kind][:, None].float() / 255
    # Texture swap: inside the mask, another pool object's pattern or a flat colour.
    donor = views[torch.randint(len(views), (n,), generator=g), 0].float() / 255
    texture = torch.where(rand(n, 1, 1, 1) < 0.5, donor, rand(n, 3, 1, 1).expand_as(x))
    swap = (rand(n, 1, 1, 1) < cfg.texture_swap) * m
    x = x * (1 - swap) + texture * swap
    # Background swap: outside the mask, another scene blurred to colour blobs.
    scene = views[torch.randint(len(views), (n,), generator=g), 2].float() / 255
    blobs = F.interpolate(F.avg_pool2d(scene, 6), size=(size, size), mode="bilinear", align_corners=False)
    swap = (rand(n, 1, 1, 1) < cfg.background_swap) * (1 - m)
    x = x * (1 - swap) + blobs * swap
    # Colour: a random channel order (hue carries no category), brightness / contrast, grayscale.
    order = torch.argsort(rand(n, 3), dim=1)
    x = torch.gather(x, 1, order[:, :, None, None].expand_as(x))
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = (x - mean) * (1 + (rand(n, 1, 1, 1) - 0.5) * 2 * cfg.jitter) + mean
    x = x * (1 + (rand(n, 1, 1, 1) - 0.5) * 2 * cfg.jitter)
    gray = (rand(n, 1, 1, 1) < cfg.grayscale).float()
    x = (gray * x.mean(dim=1, keepdim=True) + (1 - gray) * x).clamp(0, 1)
    # Geometry: rotation, zoom, shift, horizontal flip; the central R px of the S px view at zoom 1.
    angle = (rand(n) * 2 - 1) * math.radians(cfg.rotation)
    zoom = torch.exp((rand(n) * 2 - 1) * 0.2) * out / size
    flip = torch.where(rand(n) < 0.5, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = zoom * torch.cos(angle) * flip, -zoom * torch.sin(angle)
    theta[:, 1, 0], theta[:, 1, 1] = zoom * torch.sin(angle) * flip, zoom * torch.cos(angle)
    theta[:, :, 2] = (rand(n, 2) * 2 - 1) * 0.1
    grid = F.affine_grid(theta, (n, 3, out, out), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    m = F.grid_sample(m, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean_t, std_t = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x - mean_t) / std_t, m


def token_targets(masks: torch.Tensor, labels: torch.Tensor, patch: int, background: int) -> torch.Tensor:
    """Per-patch category targets (B, N): the image's label where the object covers over half the
    patch, else `background`; row-major like the ViT's patch tokens."""
    covered = F.avg_pool2d(masks, patch).flatten(1) > 0.5
    return torch.where(covered, labels[:, None], torch.full_like(covered, background, dtype=torch.long))


def pretrain_encoder(images, masks, labels: list[int], n_classes: int, out_dir: Path, cfg: EncoderConfig,
                     seed: int) -> dict:
    """Category-supervised pretraining (CLS + token labeling); saves config.json + model.safetensors
    (timm's HF format). `masks`: each image's object mask (bool (H, W))."""
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    cut = [cut_views(im, m, cfg, rng) for im, m in zip(tqdm(images, desc="views", mininterval=5), masks, strict=True)]
    views, view_masks = torch.stack([v for v, _ in cut]), torch.stack([m for _, m in cut])
    del cut
    model = build_encoder(cfg)
    head = torch.nn.Linear(cfg.embed_dim, n_classes)
    token_head = torch.nn.Linear(cfg.embed_dim, n_classes + 1)  # + background
    params = [*model.parameters(), *head.parameters(), *token_head.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, num_warmup_steps=cfg.steps // 20, num_training_steps=cfg.steps)
    y_all = torch.tensor(labels)
    losses, accs = [], []
    t0, cpu0 = time.perf_counter(), time.process_time()
    model.train()
    bar = tqdm(range(cfg.steps), desc="encoder", mininterval=5)
    for _ in bar:
        idx = torch.randint(len(images), (cfg.batch,), generator=gen)
        x, m = augment(views, view_masks, idx, cfg, gen)
        y = y_all[idx]
        tokens = model.forward_features(x)
        logits = head(model.forward_head(tokens, pre_logits=True))
        loss = F.cross_entropy(logits, y)
        if cfg.token_label_weight > 0:
            target = token_targets(m, y, cfg.patch_size, background=n_classes)
            patch_logits = token_head(tokens[:, model.num_prefix_tokens :])
            loss = loss + cfg.token_label_weight * F.cross_entropy(patch_logits.flatten(0, 1), target.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
        accs.append((logits.argmax(-1) == y).float().mean().item())
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
