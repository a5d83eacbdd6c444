"""Configs of the training steps, as pydantic dataclasses.

Each class is both the runtime config a function takes and the schema of its params.yaml block, so
a typo in params.yaml (or `dvc exp run -S`) fails at once naming the key. No torch import here:
`prpg params` stays fast.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict
from pydantic.dataclasses import dataclass


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class GeneratorConfig:
    resolution: int = 64
    vae_channels: tuple[int, ...] = (16, 32, 64)  # 3 levels: 64 px -> 16x16 latents
    latent_channels: int = 4
    unet_channels: tuple[int, ...] = (32, 64, 128)
    attention_head_dim: int = 8
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_length: int = 32  # toybox captions are short; SD uses 77
    vae_steps: int = 1500
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 6000
    unet_batch: int = 16
    unet_lr: float = 5e-4
    caption_dropout: float = 0.1
    ema_decay: float = 0.999


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class EncoderConfig:
    image_size: int = 112
    resize: int = 128
    patch_size: int = 8
    embed_dim: int = 128
    depth: int = 4
    heads: int = 4
    steps: int = 600
    batch: int = 48
    lr: float = 1e-3
    weight_decay: float = 0.05
    color_jitter: float = 0.3


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class DreamBoothConfig:
    steps: int = 400
    lr: float = 2e-6
    batch: int = 1
    prior_weight: float = 1.0
    train_text_encoder: bool = True
    identifier: str = "<new1>"
    max_grad_norm: float = 1.0
    # Stage "personalize" (prpg.dreambooth; PAPER_DREAMBOOTH / TOYBOX_DREAMBOOTH hold the two full settings).
    mode: Literal["full", "lora"] = "full"  # lora: peft adapters on the attention projections only
    masked: bool = False  # instance loss weighted by the train mask on the latent grid
    lora_rank: int = 4
    lora_alpha: float = 4.0
    num_class_images: int = 200  # prior-preservation images per category
    class_steps: int = 50  # sampler steps / CFG / batch for the class images (SD pipeline defaults)
    class_guidance: float = 7.5
    class_batch: int = 4
    resolution: int | None = None  # None: the generator's native size (SD 1.5: 512, toybox: 64)
    center_crop: bool = False  # the reference random-crops
    random_flip: bool = False  # the reference does not flip
    gradient_checkpointing: bool = False
    use_8bit_adam: bool = False  # bitsandbytes AdamW8bit; CUDA only, else torch AdamW
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # autocast; the reference trains in fp32
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
