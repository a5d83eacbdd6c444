"""Stage "personalize": DreamBooth with prior preservation on any StableDiffusionPipeline (SD 1.5 or
the toybox generator), as the reference runs it (docs/protocol.md §1.1), full fine-tune or LoRA, plain or
masked.

Each step denoises `batch` instance images ("a photo of <new1> mug") and as many class images ("A
photo of mug", made by the frozen generator, `prpg.priors`); loss = MSE(instance) +
prior_weight * MSE(class). What differs from the reference, on purpose (docs/protocol.md §5.12, §5.17):
- the mask goes through exactly the image's transform (short-side resize, the same crop, the same
  flip), so it stays on the object for non-square photos; the reference resizes it to a square;
- every sample of the batch is weighted by its own mask (the reference uses mask[0] for all);
- class images are per category (`prpg.priors`), never mixed across categories;
- everything is seeded (one CPU torch.Generator), so the same seed gives the same files on CPU.

Outputs (`personalize`): full mode saves only what was trained (`unet/`, `text_encoder/`, each a
save_pretrained folder); LoRA mode saves diffusers' `pytorch_lora_weights.safetensors` (a few MB).
Both come with `config.json` (the resolved config) and `losses.csv`; `load_personalized` rebuilds a
pipeline from the base generator plus either output.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import importlib.util
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prpg.core.atomic import atomic_dir, write_json_atomic
from prpg.priors import CLASS_PROMPT, generator_fingerprint
from prpg.core.configs import DreamBoothConfig
from prpg.zoo.generator import tokenize

log = logging.getLogger(__name__)

INSTANCE_PROMPT = "a photo of {identifier} {category}"  # the reference's training prompt
LORA_UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # every attention projection of the UNet
LORA_TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]  # ... and of the CLIP text encoder
LORA_WEIGHTS = "pytorch_lora_weights.safetensors"  # diffusers' file name, read by load_lora_weights
MASK_FLOOR = 0.01  # background weight before normalisation (reference: (mask + 0.01) / max)



class DreamBoothError(ValueError):
    """Inputs DreamBooth cannot train on; the message names the file or key and the fix."""


# ------------------------------------------------------------------------------------------------
# Preprocessing: resize the short side to `resolution` (bilinear), crop a resolution x resolution
# square (random, or centred with center_crop), optionally flip; pixels to [-1, 1]. The resize is
# deterministic, so it is done once; the crop and flip are drawn afresh every step, as the
# reference's Dataset.__getitem__ does.


def native_resolution(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def resize_short_side(image, resolution: int):
    """torchvision's Resize(int) on a PIL image (the reference's transform): short side -> resolution."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.functional import resize

    return resize(image, [resolution], interpolation=InterpolationMode.BILINEAR)


def image_to_tensor(image) -> torch.Tensor:
    """PIL RGB -> (3, H, W) in [-1, 1] (ToTensor + Normalize([0.5], [0.5]))."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float().div(127.5).sub(1.0)


def mask_to_tensor(mask_image) -> torch.Tensor:
    """PIL L mask (0..255) -> (1, H, W) in [0, 1]."""
    return torch.from_numpy(np.asarray(mask_image, dtype=np.float32) / 255.0)[None]


@dataclasses.dataclass(frozen=True)
class Crop:
    top: int
    left: int
    flip: bool


def draw_crop(height: int, width: int, resolution: int, center_crop: bool, random_flip: bool,
              generator: torch.Generator) -> Crop:
    """torchvision's RandomCrop / CenterCrop offsets (+ a 50 % horizontal flip), from `generator`."""
    if center_crop:
        top, left = int(round((height - resolution) / 2.0)), int(round((width - resolution) / 2.0))
    else:
        top = int(torch.randint(0, height - resolution + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - resolution + 1, (1,), generator=generator))
    flip = bool(torch.rand(1, generator=generator) < 0.5) if random_flip else False
    return Crop(top, left, flip)


def apply_crop(x: torch.Tensor, crop: Crop, resolution: int) -> torch.Tensor:
    """The same crop (and flip) for an image (3, H, W) or its mask (1, H, W)."""
    x = x[..., crop.top : crop.top + resolution, crop.left : crop.left + resolution]
    return x.flip(-1) if crop.flip else x


def prepare_images(images, resolution: int, masks=None) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Resized (image, mask) tensors. A mask is resized exactly like its image (bilinear, soft edges)."""
    from PIL import Image

    out = []
    for k, im in enumerate(images):
        image = resize_short_side(im.convert("RGB"), resolution)
        mask = None
        if masks is not None:
            m = np.asarray(masks[k])
            if m.shape[:2] != (im.height, im.width):
                raise DreamBoothError(f"instance mask {k} is {m.shape[1]}x{m.shape[0]} but its image is "
                                      f"{im.width}x{im.height}: a mask must have its photo's size")
            mask_image = Image.fromarray((m > 0).astype(np.uint8) * 255)
            mask = mask_to_tensor(resize_short_side(mask_image, resolution))
        out.append((image_to_tensor(image), mask))
    return out


def example_order(n_instance: int, n_class: int, steps: int, batch: int,
                  generator: torch.Generator) -> list[list[int]]:
    """Dataset indices per step, as the reference's shuffled DataLoader yields them: the dataset has
    max(n_instance, n_class) items and item k pairs instance k % n_instance with class k % n_class.
    Epochs run on into each other (no short last batch; the same as the reference at batch 1)."""
    length = max(n_instance, n_class)
    flat: list[int] = []
    while len(flat) < steps * batch:
        flat += torch.randperm(length, generator=generator).tolist()
    return [flat[s * batch : (s + 1) * batch] for s in range(steps)]


# ------------------------------------------------------------------------------------------------
# Loss


def latent_weight(mask_crop: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Per-sample loss weight on the latent grid: (mask + 0.01) / its max, mask (B, 1, H, W) in [0, 1].

    The mask is area-averaged onto the latent grid (the fraction of each latent cell's pixels on the
    object); the reference samples one pixel per cell (nearest), which agrees on cells wholly inside
    or outside the object. Each sample is normalised by its own max (the reference has batch 1).
    """
    m = F.interpolate(mask_crop.float(), size=tuple(latent_hw), mode="area") + MASK_FLOOR
    return m / m.amax(dim=(1, 2, 3), keepdim=True)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The reference's masked loss: prediction AND target multiplied by the weight, then the plain
    MSE, i.e. mean(weight**2 * (pred - target)**2): the background counts ~1e-4, not 1e-2."""
    return F.mse_loss(pred.float() * weight, target.float() * weight)


def dreambooth_loss(pred: torch.Tensor, target: torch.Tensor, n_instance: int, prior_weight: float,
                    weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, instance, prior): the first n_instance rows are the instance half (masked when a
    weight is given), the rest the prior half (never masked)."""
    p_inst, p_prior = pred[:n_instance].float(), pred[n_instance:].float()
    t_inst, t_prior = target[:n_instance].float(), target[n_instance:].float()
    inst = F.mse_loss(p_inst, t_inst) if weight is None else masked_mse(p_inst, t_inst, weight)
    prior = F.mse_loss(p_prior, t_prior)
    return inst + prior_weight * prior, inst, prior


# ------------------------------------------------------------------------------------------------
# Training


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DreamBoothError(f"dreambooth.device is '{name}' but no CUDA device is available; "
                              "use cpu or auto")
    return device


def make_optimizer(params, cfg: DreamBoothConfig, device: torch.device) -> tuple[torch.optim.Optimizer, str]:
    """AdamW with the reference's betas / weight decay / eps; bitsandbytes' 8-bit AdamW when asked,
    installed, and on CUDA (it has no CPU kernels)."""
    kw = dict(lr=cfg.lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    if cfg.use_8bit_adam:
        if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, **kw), "bitsandbytes.optim.AdamW8bit"
        why = "needs CUDA" if device.type != "cuda" else "is not installed"
        log.warning("use_8bit_adam: bitsandbytes %s; training with torch.optim.AdamW (fp32 states)", why)
    return torch.optim.AdamW(params, **kw), "torch.optim.AdamW"


def _set_checkpointing(module, enable: bool) -> None:
    if hasattr(module, "enable_gradient_checkpointing"):  # diffusers models
        module.enable_gradient_checkpointing() if enable else module.disable_gradient_checkpointing()
        return
    # transformers models; non-reentrant, or LoRA on a frozen encoder would silently get no gradient
    on = getattr(module, "activation_checkpointing_enable", None) or module.gradient_checkpointing_enable
    off = getattr(module, "activation_checkpointing_disable", None) or module.gradient_checkpointing_disable
    on({"use_reentrant": False}) if enable else off()


def setup_trainable(pipe, cfg: DreamBoothConfig, seed: int) -> list[torch.nn.Parameter]:
    """Freeze everything, then open what `cfg` trains: the UNet (+ text encoder) weights in full mode,
    or LoRA adapters on their attention projections. Trained modules are held in fp32."""
    from peft import LoraConfig

    for m in (pipe.vae, pipe.unet, pipe.text_encoder):
        m.requires_grad_(False)
    trained = [pipe.unet] + ([pipe.text_encoder] if cfg.train_text_encoder else [])
    for m in trained:
        if m.dtype != torch.float32:
            m.to(torch.float32)
    if cfg.mode == "full":
        for m in trained:
            m.requires_grad_(True)
    else:
        # peft draws lora_A from torch's global RNG: seed it, without disturbing the caller's stream.
        def lora(targets):
            return LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, init_lora_weights="gaussian",
                              target_modules=targets)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pipe.unet.add_adapter(lora(LORA_UNET_TARGETS))
            if cfg.train_text_encoder:
                pipe.text_encoder.add_adapter(lora(LORA_TEXT_TARGETS))
    for m in trained:
        if cfg.gradient_checkpointing:
            _set_checkpointing(m, True)
        m.train()
    return [p for m in trained for p in m.parameters() if p.requires_grad]


def _finish(pipe, cfg: DreamBoothConfig) -> None:
    for m in (pipe.unet, pipe.text_encoder):
        if cfg.gradient_checkpointing and (m is pipe.unet or cfg.train_text_encoder):
            _set_checkpointing(m, False)
        m.requires_grad_(False)
        m.eval()


def _check_inputs(pipe, instance_images, class_images, instance_masks, cfg: DreamBoothConfig,
                  resolution: int) -> None:
    if not instance_images:
        raise DreamBoothError("no instance images: DreamBooth needs the instance's train images")
    if not class_images:
        raise DreamBoothError("no class images: make them with prpg.priors.generate_class_images")
    if cfg.masked and (instance_masks is None or len(instance_masks) != len(instance_images)):
        raise DreamBoothError("dreambooth.masked is true: pass one mask per instance image (train_masks/)")
    if resolution % pipe.vae_scale_factor:
        raise DreamBoothError(f"dreambooth.resolution {resolution} must be a multiple of the VAE's factor "
                              f"{pipe.vae_scale_factor}")


def train_dreambooth(pipe, instance_images, class_images, category: str, cfg: DreamBoothConfig, seed: int,
                     instance_masks=None, desc: str = "dreambooth") -> dict:
    """Fine-tune `pipe` IN PLACE (full weights or LoRA adapters, per cfg.mode).

    instance_images / class_images: PIL images (any size); instance_masks: bool arrays (H, W), one
    per instance image, used when cfg.masked. Returns {"losses": rows of step/loss/loss_instance/
    loss_prior, "optimizer": name, "device": str, "resolution": int}.
    """
    from diffusers import DDPMScheduler

    device = resolve_device(cfg.device)
    resolution = cfg.resolution or native_resolution(pipe)
    _check_inputs(pipe, instance_images, class_images, instance_masks, cfg, resolution)
    gen = torch.Generator().manual_seed(seed)  # one CPU stream for everything: same draws on any device

    inst = prepare_images(instance_images, resolution, instance_masks if cfg.masked else None)
    cls = prepare_images(class_images, resolution)
    prompts = [INSTANCE_PROMPT.format(identifier=cfg.identifier, category=category),
               CLASS_PROMPT.format(category=category)]
    inst_ids, cls_ids = tokenize(pipe.tokenizer, prompts).split(1)
    ids = torch.cat([inst_ids.expand(cfg.batch, -1), cls_ids.expand(cfg.batch, -1)]).to(device)

    params = setup_trainable(pipe, cfg, seed)  # before the move: adapters are drawn on the CPU
    pipe.to(device)
    opt, opt_name = make_optimizer(params, cfg, device)
    # The base's own training schedule (SD 1.5: scaled-linear betas, epsilon prediction).
    noise_sched = DDPMScheduler.from_config(pipe.scheduler.config)
    amp = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.mixed_precision == "fp16")
    scale = pipe.vae.config.scaling_factor

    rows = []
    for step, idx in enumerate(tqdm(example_order(len(inst), len(cls), cfg.steps, cfg.batch, gen), desc=desc,
                                    mininterval=5)):
        pixels, masks = [], []
        # Instance half first, then the prior half (the reference's collate order).
        for image, mask in [inst[k % len(inst)] for k in idx] + [cls[k % len(cls)] for k in idx]:
            crop = draw_crop(*image.shape[1:], resolution, cfg.center_crop, cfg.random_flip, gen)
            pixels.append(apply_crop(image, crop, resolution))
            if mask is not None:
                masks.append(apply_crop(mask, crop, resolution))
        x = torch.stack(pixels).to(device, pipe.vae.dtype)
        with torch.no_grad():
            z0 = (pipe.vae.encode(x).latent_dist.sample(generator=gen) * scale).float()
        noise = torch.randn(z0.shape, generator=gen).to(device)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(z0),), generator=gen).to(device)
        noisy = noise_sched.add_noise(z0, noise, t)
        epsilon = noise_sched.config.prediction_type == "epsilon"
        target = noise if epsilon else noise_sched.get_velocity(z0, noise, t)
        autocast = torch.autocast(device.type, dtype=amp) if amp is not None else contextlib.nullcontext()
        with autocast:
            hidden = pipe.text_encoder(ids)[0]
            pred = pipe.unet(noisy.to(pipe.unet.dtype), t, hidden.to(pipe.unet.dtype)).sample
        weight = latent_weight(torch.stack(masks), z0.shape[-2:]).to(device) if cfg.masked else None
        loss, loss_inst, loss_prior = dreambooth_loss(pred, target, len(idx), cfg.prior_weight, weight)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
        scaler.step(opt)
        scaler.update()
        rows.append({"step": step, "loss": loss.item(), "loss_instance": loss_inst.item(),
                     "loss_prior": loss_prior.item()})
    _finish(pipe, cfg)
    return {"losses": rows, "optimizer": opt_name, "device": str(device), "resolution": resolution}


def dreambooth(pipe, instance_images, class_images, category: str, cfg: DreamBoothConfig, seed: int,
               instance_masks=None) -> list[float]:
    """Fine-tune `pipe` in place; returns the per-step loss (the toybox smoke gate's entry point)."""
    res = train_dreambooth(pipe, instance_images, class_images, category, cfg, seed, instance_masks)
    return [r["loss"] for r in res["losses"]]


# ------------------------------------------------------------------------------------------------
# Personalize one instance: train a copy, save it, reload it


@dataclasses.dataclass(frozen=True)
class Personalized:
    path: Path
    pipe: object  # the trained pipeline (a copy; the base is untouched)
    losses: list[dict]
    seconds: float
    optimizer: str


def save_trained(pipe, out_dir: Path, cfg: DreamBoothConfig) -> None:
    """Only what was trained: full -> unet/ (+ text_encoder/); lora -> the adapters in diffusers' format."""
    if cfg.mode == "full":
        parts = {"unet": pipe.unet, **({"text_encoder": pipe.text_encoder} if cfg.train_text_encoder else {})}
        for name, module in parts.items():
            dtype = next(module.parameters()).dtype
            if cfg.save_dtype == "fp16":  # cast in place (no second copy in memory): the pipe keeps the saved values
                module.to(torch.float16)
            module.save_pretrained(out_dir / name, safe_serialization=True)
            module.to(dtype)
        return
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    def layers(model):
        return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))

    def metadata(model):
        # The adapter config carries lora_alpha (without it the loader assumes alpha = rank); its
        # target_modules is a set, sorted here so the file does not depend on string hashing.
        meta = model.peft_config["default"].to_dict()
        return {**meta, "target_modules": sorted(meta["target_modules"])}

    te = cfg.train_text_encoder
    type(pipe).save_lora_weights(
        out_dir, weight_name=LORA_WEIGHTS, safe_serialization=True,
        unet_lora_layers=layers(pipe.unet), unet_lora_adapter_metadata=metadata(pipe.unet),
        text_encoder_lora_layers=layers(pipe.text_encoder) if te else None,
        text_encoder_lora_adapter_metadata=metadata(pipe.text_encoder) if te else None,
    )
    sort_safetensors_metadata(out_dir / LORA_WEIGHTS)


def sort_safetensors_metadata(path: Path) -> None:
    """Rewrite a safetensors header with its `__metadata__` keys sorted, in place.

    safetensors (0.8) writes the metadata map in Rust hash-map order, so the same weights and metadata
    give different bytes on every run (and a changed DVC hash). Tensor entries and data are untouched:
    data offsets count from the end of the header, whose length may change.
    """
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", None)
    ordered = ({"__metadata__": dict(sorted(meta.items()))} if meta else {}) | dict(sorted(header.items()))
    text = json.dumps(ordered, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header with spaces to 8-byte alignment
    path.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])


def _write_losses(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["step", "loss", "loss_instance", "loss_prior"])
        w.writeheader()
        w.writerows(rows)


def personalize(pipe, records: Sequence, category: str, class_images: Sequence[str | Path],
                cfg: DreamBoothConfig, out_dir: str | Path, seed: int) -> Personalized:
    """DreamBooth for one instance; writes `out_dir` atomically and returns the trained copy.

    records: the instance's train ImageRecords (`ds.images("train", instance)`), with masks when
    cfg.masked; class_images: paths from `generate_class_images` for this category (all are used). `pipe` (the frozen base generator) is not modified: a deep copy
    is trained (on CUDA that holds a second copy of the model). `out_dir` gets unet/ (+
    text_encoder/) or pytorch_lora_weights.safetensors, config.json (the resolved config, inputs,
    base fingerprint) and losses.csv; files are the same for the same seed on CPU.
    """
    from prpg.data import load_image, load_mask

    records = list(records)
    if not records:
        raise DreamBoothError("no train records: pass ds.images('train', instance)")
    instances = sorted({r.instance for r in records})
    if len(instances) != 1:
        raise DreamBoothError(f"records of several instances {instances}: personalize one instance at a time")
    masks = None
    if cfg.masked:
        missing = [str(r.path) for r in records if r.mask_path is None]
        if missing:
            raise DreamBoothError(f"dreambooth.masked is true but {missing[0]} has no mask: add it under "
                                  f"train_masks/{instances[0]}/ (same stem) or set masked: false")
        masks = [load_mask(r.mask_path) for r in records]
    images = [load_image(r.path) for r in records]
    for r, im, m in zip(records, images, masks or [], strict=False):
        if m.shape != (im.height, im.width):
            raise DreamBoothError(f"{r.mask_path} is {m.shape[1]}x{m.shape[0]} but {r.path} is "
                                  f"{im.width}x{im.height}: a mask must have its photo's size")
    cls = [load_image(p) for p in class_images]

    base_fingerprint = generator_fingerprint(pipe)
    tuned = copy.deepcopy(pipe)
    t0 = time.perf_counter()
    res = train_dreambooth(tuned, images, cls, category, cfg, seed, masks, desc=f"dreambooth {instances[0]}")
    seconds = time.perf_counter() - t0
    resolved = dataclasses.replace(cfg, resolution=res["resolution"], device=res["device"])
    info = {
        "mode": cfg.mode,
        "config": dataclasses.asdict(resolved),
        "optimizer": res["optimizer"],
        "instance": instances[0],
        "category": category,
        "instance_prompt": INSTANCE_PROMPT.format(identifier=cfg.identifier, category=category),
        "class_prompt": CLASS_PROMPT.format(category=category),
        "seed": seed,
        "train_images": [str(r.path) for r in records],
        "train_masks": [str(r.mask_path) for r in records] if cfg.masked else None,
        "class_images": [str(p) for p in class_images],
        "base_generator": getattr(pipe, "name_or_path", None) or None,
        "base_fingerprint": base_fingerprint,
    }
    with atomic_dir(Path(out_dir)) as tmp:
        save_trained(tuned, tmp, cfg)
        write_json_atomic(tmp / "config.json", info)
        _write_losses(tmp / "losses.csv", res["losses"])
    return Personalized(Path(out_dir), tuned, res["losses"], seconds, res["optimizer"])


def load_personalized(base_generator, path: str | Path, device: str | None = None, dtype=None):
    """A pipeline = base generator + a `personalize` output (full or LoRA). `base_generator` is a
    pipeline (copied, never modified) or an id / folder for `prpg.core.models.load_generator`."""
    from prpg.core.models import load_generator

    path = Path(path)
    info_path = path / "config.json"
    if not info_path.is_file():
        raise FileNotFoundError(f"{path} is not a personalize output (no config.json): "
                                "run personalize() for it first")
    info = json.loads(info_path.read_text())
    if isinstance(base_generator, (str, Path)):
        pipe = load_generator(base_generator, device=device or "cpu", dtype=dtype)
    else:
        pipe = copy.deepcopy(base_generator)
        if device is not None or dtype is not None:
            pipe.to(device=device, dtype=dtype)
    if generator_fingerprint(pipe) != info["base_fingerprint"]:
        raise DreamBoothError(f"{path} was trained on another base generator ({info['base_generator']}, "
                              f"fingerprint {info['base_fingerprint'][:12]}); load it with that one")
    if info["mode"] == "lora":
        pipe.load_lora_weights(str(path), weight_name=LORA_WEIGHTS)
        return pipe
    from diffusers import UNet2DConditionModel

    parts = {"unet": UNet2DConditionModel.from_pretrained(path / "unet")}
    if (path / "text_encoder").is_dir():
        parts["text_encoder"] = type(pipe.text_encoder).from_pretrained(path / "text_encoder")
    for name, module in parts.items():
        old = getattr(pipe, name)
        module.to(device=old.device, dtype=old.dtype).eval()
        pipe.register_modules(**{name: module})
    return pipe
