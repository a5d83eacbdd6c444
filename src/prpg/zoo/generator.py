"""The toybox generator: Stable Diffusion 1.5's architecture, shrunk, trained from scratch on the pool.

Same classes as SD 1.5 (CLIPTokenizer, CLIPTextModel, AutoencoderKL, UNet2DConditionModel, a
scaled-linear 1000-step schedule, PNDM sampling), assembled as a StableDiffusionPipeline, so the
DreamBooth and generation code downstream is identical for toybox and SD 1.5.

Training is SD's recipe in two steps: (1) an AutoencoderKL (reconstruction + a tiny KL), whose
latents are rescaled to unit variance (SD's 0.18215 plays this role); (2) the UNet and the text
encoder together on epsilon-prediction, with 10 % empty captions so classifier-free guidance works.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prpg.core.configs import GeneratorConfig

CATEGORY_PROMPT = "a photo of a {category}"

# SD 1.5's noise schedule and default sampler, so toybox behaves like the real pipeline.
SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_pipeline(cfg: GeneratorConfig, tokenizer):
    """A randomly initialised SD-class pipeline at the given size."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    levels = len(cfg.vae_channels)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=cfg.vae_channels, layers_per_block=1, norm_num_groups=min(cfg.vae_channels) // 2,
        sample_size=cfg.resolution,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_hidden, intermediate_size=2 * cfg.text_hidden,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_length, projection_dim=cfg.text_hidden,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    n = len(cfg.unet_channels)
    unet = UNet2DConditionModel(
        sample_size=cfg.resolution // 2 ** (levels - 1), in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        block_out_channels=cfg.unet_channels, layers_per_block=1, norm_num_groups=min(cfg.unet_channels),
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",),
        cross_attention_dim=cfg.text_hidden, attention_head_dim=cfg.attention_head_dim,
    )
    scheduler = PNDMScheduler(**SCHEDULE, skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def images_to_tensor(images, resolution: int) -> torch.Tensor:
    """PIL images -> (N, 3, R, R) in [-1, 1], area-downsampled (no aliasing of fine patterns)."""
    from PIL import Image

    arr = np.stack([np.asarray(im.convert("RGB").resize((resolution, resolution), Image.BOX)) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def masks_to_tensor(masks, resolution: int) -> torch.Tensor:
    """Bool masks -> (N, 1, R, R) float coverage in [0, 1], area-downsampled like the images."""
    from PIL import Image

    arr = np.stack([np.asarray(Image.fromarray(np.asarray(m, np.uint8) * 255).resize((resolution, resolution), Image.BOX))
                    for m in masks])
    return torch.from_numpy(arr).float().div(255.0)[:, None]


def object_closeup_box(mask, factor: float) -> tuple[int, int, int, int]:
    """Square box around the mask's object, side `factor` x the object box's longer side, shifted to lie
    inside the image (and no larger than its shorter side)."""
    from prpg.data.images import mask_to_box

    mask = np.asarray(mask, bool)
    box = mask_to_box(mask)
    if box is None:
        raise ValueError("object close-up of an image whose mask is empty")
    h, w = mask.shape
    x0, y0, x1, y1 = box
    side = min(round(max(x1 - x0, y1 - y0) * factor), h, w)
    left = min(max(round((x0 + x1 - side) / 2), 0), w - side)
    top = min(max(round((y0 + y1 - side) / 2), 0), h - side)
    return left, top, left + side, top + side


def object_closeups(images, masks, zoom: tuple[float, float], seed: int) -> tuple[list, list]:
    """One close-up per PIL image (and its mask), the factor drawn uniformly from `zoom`
    (GeneratorConfig.object_zoom)."""
    factors = np.random.default_rng(seed).uniform(*zoom, size=len(images))
    crops, crop_masks = [], []
    for im, m, f in zip(images, masks, factors, strict=True):
        x0, y0, x1, y1 = object_closeup_box(m, float(f))
        crops.append(im.crop((x0, y0, x1, y1)))
        crop_masks.append(np.asarray(m, bool)[y0:y1, x0:x1])
    return crops, crop_masks


def fill_mask_box(mask) -> np.ndarray:
    """The mask's box, filled (GeneratorConfig.object_region "box"); an empty mask stays empty."""
    from prpg.data.images import mask_to_box

    mask = np.asarray(mask, bool)
    out = np.zeros_like(mask)
    box = mask_to_box(mask)
    if box is not None:
        x0, y0, x1, y1 = box
        out[y0:y1, x0:x1] = True
    return out


def latent_loss_weights(coverage: torch.Tensor, latent_size: int, object_weight: float) -> torch.Tensor:
    """Per-latent loss weights (N, 1, h, w): 1 on background, `object_weight` where the object covers the
    latent's pixels (linear in between). The pixel coverage is averaged over each latent's footprint."""
    return 1.0 + (object_weight - 1.0) * F.adaptive_avg_pool2d(coverage, latent_size)


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Per-sample mean squared error; with `weights` (N, 1, h, w) a weighted mean over the latent positions,
    normalised per sample so the loss keeps its scale (and the learning rate its meaning)."""
    err = (pred - target).pow(2)
    if weights is None:
        return err.mean(dim=(1, 2, 3))
    w = weights.expand_as(err)
    return (err * w).sum(dim=(1, 2, 3)) / w.sum(dim=(1, 2, 3))


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", truncation=True, max_length=tokenizer.model_max_length,
                     return_tensors="pt").input_ids


def _ema(model: torch.nn.Module, decay: float):
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def _cosine(opt, steps: int, warmup: int):
    from diffusers.optimization import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(opt, num_warmup_steps=min(warmup, steps // 10), num_training_steps=steps)


def train_vae(vae, pixels: torch.Tensor, cfg: GeneratorConfig, generator: torch.Generator) -> list[float]:
    """Reconstruction (L1 + MSE) + a tiny KL, on whole images or random `vae_crop` crops; returns the per-step loss."""
    vae.train()
    device = pixels.device  # random draws stay on the CPU generator: the same recipe gives the same draws anywhere
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = _cosine(opt, cfg.vae_steps, 100)
    losses = []
    for _ in tqdm(range(cfg.vae_steps), desc="vae", mininterval=5):
        idx = torch.randint(len(pixels), (cfg.vae_batch,), generator=generator)
        x = pixels[idx.to(device)]
        if cfg.vae_crop is not None and cfg.vae_crop < x.shape[-1]:
            # Fully convolutional: a crop is ~4x cheaper than the whole image and teaches the same decoder.
            i, j = (int(v) for v in torch.randint(0, x.shape[-1] - cfg.vae_crop + 1, (2,), generator=generator))
            x = x[:, :, i : i + cfg.vae_crop, j : j + cfg.vae_crop]
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=generator).to(device)
        rec = vae.decode(z).sample
        loss = F.l1_loss(rec, x) + F.mse_loss(rec, x) + cfg.vae_kl_weight * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    vae.eval()
    return losses


@torch.no_grad()
def encode_latents(vae, pixels: torch.Tensor, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and std for every image (sampled afresh each training step, as SD does)."""
    means, stds = [], []
    for i in range(0, len(pixels), batch):
        post = vae.encode(pixels[i : i + batch]).latent_dist
        means.append(post.mean)
        stds.append(post.std)
    return torch.cat(means), torch.cat(stds)


def min_snr_weights(noise_sched, t: torch.Tensor, gamma: float | None) -> torch.Tensor:
    """Per-sample loss weights min(SNR(t), gamma) / SNR(t) for epsilon-prediction (Hang et al. 2023, as
    diffusers' train_text_to_image --snr_gamma); None weighs every timestep 1 (plain epsilon MSE).
    Why: the low-noise steps (SNR >> gamma) only refine texture; down-weighting them spends a small
    training budget on the noisy steps that lay out the object's shape, which is what tells a toybox
    category apart (the paper's SD 1.5 needs no such help)."""
    if gamma is None:
        return torch.ones(len(t), device=t.device)
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_sched, t)
    return snr.clamp(max=gamma) / snr


def train_denoiser(pipe, latents_mean, latents_std, input_ids, empty_ids, cfg: GeneratorConfig,
                   generator: torch.Generator, category_ids: torch.Tensor | None = None,
                   loss_weights: torch.Tensor | None = None) -> list[float]:
    """UNet + text encoder on epsilon prediction; EMA weights are copied in at the end.

    `category_ids` (one row per image: its bare category prompt) replace the full caption on a
    `cfg.category_caption` share of the samples, before the empty-caption dropout. `loss_weights`
    (N, 1, h, w), one map per image (latent_loss_weights), weigh the error per latent position."""
    if cfg.category_caption > 0 and category_ids is None:
        raise ValueError("pretrain.generator.category_caption > 0 needs the images' category prompts (category_ids)")
    if cfg.object_weight != 1.0 and loss_weights is None:
        raise ValueError("pretrain.generator.object_weight != 1 needs the images' object masks (loss_weights)")
    from diffusers import DDPMScheduler

    noise_sched = DDPMScheduler(**SCHEDULE)
    unet, text = pipe.unet, pipe.text_encoder
    device = latents_mean.device  # random draws on the CPU generator, then moved: the same draws anywhere
    input_ids, empty_ids = input_ids.cpu(), empty_ids.cpu()
    joint = torch.nn.ModuleDict({"unet": unet, "text": text})
    joint.train()
    ema = _ema(joint, cfg.ema_decay)
    opt = torch.optim.AdamW(joint.parameters(), lr=cfg.unet_lr, weight_decay=1e-2)
    sched = _cosine(opt, cfg.unet_steps, 200)
    scale = pipe.vae.config.scaling_factor
    losses = []
    for _ in tqdm(range(cfg.unet_steps), desc="unet", mininterval=5):
        idx = torch.randint(len(latents_mean), (cfg.unet_batch,), generator=generator)
        on_dev = idx.to(device)
        eps0 = torch.randn((len(idx), *latents_mean.shape[1:]), generator=generator).to(device)
        z0 = (latents_mean[on_dev] + latents_std[on_dev] * eps0) * scale
        ids = input_ids[idx].clone()
        if cfg.category_caption > 0:  # no extra draw when off: the recipe without it stays bit-identical
            short = torch.rand(len(idx), generator=generator) < cfg.category_caption
            ids[short] = category_ids[idx][short]
        drop = torch.rand(len(idx), generator=generator) < cfg.caption_dropout
        ids[drop] = empty_ids
        noise = torch.randn(z0.shape, generator=generator).to(device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=generator).to(device)
        pred = unet(noise_sched.add_noise(z0, noise, t), t, text(ids.to(device))[0]).sample
        per_sample = weighted_mse(pred, noise, None if loss_weights is None else loss_weights[on_dev])
        loss = (min_snr_weights(noise_sched, t, cfg.snr_gamma) * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(joint.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update_parameters(joint)
        losses.append(loss.item())
    joint.load_state_dict(ema.module.state_dict())
    joint.eval()
    return losses


def pretrain_generator(images, captions: list[str], out_dir: Path, cfg: GeneratorConfig, seed: int,
                       work_dir: Path, categories: list[str] | None = None, masks=None, device: str = "cpu") -> dict:
    """Train the whole generator and save it with save_pretrained; returns training stats.
    `categories` (one per image) are needed when `cfg.category_caption` > 0, `masks` (one bool object
    mask per image) when `cfg.object_weight` != 1 or `cfg.object_zoom` is set. The random draws are made
    on the CPU whatever the `device`, so a GPU run follows the same recipe draw for draw."""
    if cfg.category_caption > 0 and (categories is None or len(categories) != len(images)):
        raise ValueError("pretrain.generator.category_caption > 0 needs one category per training image")
    if (cfg.object_weight != 1.0 or cfg.object_zoom) and (masks is None or len(masks) != len(images)):
        raise ValueError("pretrain.generator.object_weight != 1 and object_zoom need one object mask per "
                         "training image")
    from prpg.zoo.tokenizer import build_clip_tokenizer

    if cfg.object_zoom:  # close-ups join the whole scenes, with their captions (and categories)
        crops, crop_masks = object_closeups(images, masks, cfg.object_zoom, seed)
        images, masks, captions = [*images, *crops], [*masks, *crop_masks], [*captions, *captions]
        categories = None if categories is None else [*categories, *categories]
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    tokenizer = build_clip_tokenizer(work_dir / "tokenizer_src", max_length=cfg.max_length)
    pipe = build_pipeline(cfg, tokenizer).to(device)
    pixels = images_to_tensor(images, cfg.resolution).to(device)

    t0, cpu0 = time.perf_counter(), time.process_time()
    vae_losses = train_vae(pipe.vae, pixels, cfg, gen)
    mean, std = encode_latents(pipe.vae, pixels)
    # Unit-variance latents, as SD's fixed 0.18215 achieves for its VAE.
    pipe.vae.register_to_config(scaling_factor=float(1.0 / mean.std()))
    t_vae = time.perf_counter() - t0

    input_ids = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]
    category_ids = None if categories is None else tokenize(
        tokenizer, [CATEGORY_PROMPT.format(category=c) for c in categories])
    weighted = None if cfg.object_weight == 1.0 else [fill_mask_box(m) for m in masks] if cfg.object_region == "box" else masks
    weights = None if weighted is None else latent_loss_weights(
        masks_to_tensor(weighted, cfg.resolution), mean.shape[-1], cfg.object_weight).to(device)
    unet_losses = train_denoiser(pipe, mean, std, input_ids, empty_ids, cfg, gen, category_ids, weights)
    t_total = time.perf_counter() - t0

    # Stored in fp16 to halve the shipped size (loaders upcast to fp32; the gates run on the reloaded copy).
    pipe.to(torch.float16).save_pretrained(out_dir, safe_serialization=True)
    pipe.to(torch.float32)
    return {
        "config": dataclasses.asdict(cfg),
        "seed": seed,
        "train_images": len(images),
        "vae_final_loss": float(np.mean(vae_losses[-50:])),
        "unet_final_loss": float(np.mean(unet_losses[-100:])),
        "vae_seconds": round(t_vae, 1),
        "total_seconds": round(t_total, 1),
        "cpu_seconds": round(time.process_time() - cpu0, 1),  # all threads; robust to other jobs on the machine
        "params": {name: sum(p.numel() for p in getattr(pipe, name).parameters())
                   for name in ("vae", "text_encoder", "unet")},
        "losses": {"vae": vae_losses, "unet": unet_losses},
    }


@torch.no_grad()
def sample(pipe, prompts: list[str], seed: int, steps: int = 50, guidance: float = 5.0, batch: int = 16):
    """PIL images for the prompts, seeded per batch (reproducible on CPU)."""
    out = []
    for i in range(0, len(prompts), batch):
        g = torch.Generator(device=pipe.device).manual_seed(seed + i)
        res = pipe(prompts[i : i + batch], num_inference_steps=steps, guidance_scale=guidance, generator=g,
                   height=pipe.unet.config.sample_size * pipe.vae_scale_factor,
                   width=pipe.unet.config.sample_size * pipe.vae_scale_factor)
        out.extend(res.images)
    return out
