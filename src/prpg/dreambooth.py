"""DreamBooth with prior preservation: the diffusers example's training step, as one readable loop.

Works on any StableDiffusionPipeline (SD 1.5 or the toybox generator). Each step denoises one batch
of instance images ("a photo of <new1> mug") and as many class images ("A photo of mug") made by the
frozen generator; loss = MSE(instance) + prior_weight * MSE(class).
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prpg.configs import DreamBoothConfig
from prpg.zoo.generator import SCHEDULE, images_to_tensor, tokenize

INSTANCE_PROMPT = "a photo of {identifier} {category}"  # the reference's training prompt
CLASS_PROMPT = "A photo of {category}"


def dreambooth(pipe, instance_images, class_images, category: str, cfg: DreamBoothConfig, seed: int) -> list[float]:
    """Fine-tune pipe.unet (and pipe.text_encoder) in place; returns the per-step loss."""
    from diffusers import DDPMScheduler

    gen = torch.Generator().manual_seed(seed)
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    inst = images_to_tensor(instance_images, res)
    cls = images_to_tensor(class_images, res)
    inst_ids = tokenize(pipe.tokenizer, [INSTANCE_PROMPT.format(identifier=cfg.identifier, category=category)])
    cls_ids = tokenize(pipe.tokenizer, [CLASS_PROMPT.format(category=category)])
    noise_sched = DDPMScheduler(**SCHEDULE)
    trained = [pipe.unet] + ([pipe.text_encoder] if cfg.train_text_encoder else [])
    params = [p for m in trained for p in m.parameters()]
    pipe.vae.requires_grad_(False)
    if not cfg.train_text_encoder:
        pipe.text_encoder.requires_grad_(False)
    for m in trained:
        m.train()
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    scale = pipe.vae.config.scaling_factor
    losses = []
    for _ in tqdm(range(cfg.steps), desc="dreambooth", mininterval=5):
        i = torch.randint(len(inst), (cfg.batch,), generator=gen)
        j = torch.randint(len(cls), (cfg.batch,), generator=gen)
        x = torch.cat([inst[i], cls[j]])
        with torch.no_grad():
            z0 = pipe.vae.encode(x).latent_dist.sample(generator=gen) * scale
        noise = torch.randn(z0.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(z0),), generator=gen)
        ids = torch.cat([inst_ids.expand(cfg.batch, -1), cls_ids.expand(cfg.batch, -1)])
        pred = pipe.unet(noise_sched.add_noise(z0, noise, t), t, pipe.text_encoder(ids)[0]).sample
        loss_inst = F.mse_loss(pred[: cfg.batch], noise[: cfg.batch])
        loss_prior = F.mse_loss(pred[cfg.batch :], noise[cfg.batch :])
        loss = loss_inst + cfg.prior_weight * loss_prior
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        opt.step()
        losses.append(loss.item())
    for m in trained:
        m.eval()
    return losses
