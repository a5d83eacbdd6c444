"""Image similarity models for filtering: one interface, `embed(images) -> (N, D)` L2-normalised.

- `DreamSimModel`: the paper's filter model (DreamSim ensemble, reference generate_data.py). DreamSim
  keeps its weights in a cache folder; we always pass that folder and the device explicitly (never
  its default `./models`) and never download behind the user's back when offline.
- `BackboneModel`: the CLS embedding of any timm ViT loaded by `prpg.core.models.load_backbone`. Filtering
  on toybox uses the toybox encoder (DreamSim's ViT-B ensemble knows nothing of 64 px toy objects).

Cosine similarity of two embeddings is their dot product.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol

import torch
import torch.nn.functional as F
from PIL import Image

from prpg.core.models import ModelNotAvailableError, hub_offline

from prpg.core.configs import DreamSimType  # noqa: E402,F401
Resize = Literal["squash", "eval"]
DREAMSIM_SIZE = 224  # DreamSim's img_size; resize (squash) bicubic, no mean/std (it normalises inside)

# Backbones DreamSim builds per type (dreamsim.config.dreamsim_args) -> the weight files it loads.
_BACKBONE_FILES = {
    # dino_vitb16 comes through torch.hub with the hub dir set to the cache dir: the DINO repo's code
    # and its checkpoint land there on the first (online) load, next to DreamSim's own projection head.
    "dino_vitb16": ("dino_vitb16_pretrain.pth", "facebookresearch_dino_main/hubconf.py",
                    "checkpoints/dino_vitbase16_pretrain.pth"),
    "clip_vitb16": ("clip_vitb16_pretrain.pth.tar",),
    "open_clip_vitb16": ("open_clip_vitb16_pretrain.pth.tar",),
    "clip_vitb32": ("clip_vitb32_pretrain.pth.tar",),
    "open_clip_vitb32": ("open_clip_vitb32_pretrain.pth.tar",),
}
_DREAMSIM_PARTS = {
    "ensemble": (("dino_vitb16", "clip_vitb16", "open_clip_vitb16"), "ensemble_lora"),
    "dino_vitb16": (("dino_vitb16",), "dino_vitb16_single_lora"),
    "clip_vitb32": (("clip_vitb32",), "clip_vitb32_single_lora"),
    "open_clip_vitb32": (("open_clip_vitb32",), "open_clip_vitb32_single_lora"),
}


def _batches(images: Sequence[Image.Image], transform, batch: int, device: str):
    if not len(images):
        raise ValueError("no images to embed")
    for i in range(0, len(images), batch):
        yield torch.stack([transform(im.convert("RGB")) for im in images[i : i + batch]]).to(device)


class SimilarityModel(Protocol):
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """(N, D) float32 on the CPU, each row L2-normalised."""
        ...


def default_dreamsim_cache() -> Path:
    """$PRPG_DREAMSIM_CACHE, else ~/.cache/prpg/dreamsim."""
    env = os.environ.get("PRPG_DREAMSIM_CACHE", "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache/prpg/dreamsim"


def dreamsim_required_files(dreamsim_type: str) -> list[str]:
    """Paths (relative to the cache dir) that a complete DreamSim cache of this type holds."""
    if dreamsim_type not in _DREAMSIM_PARTS:
        raise ValueError(f"unknown dreamsim_type {dreamsim_type!r}; use one of {', '.join(_DREAMSIM_PARTS)}")
    backbones, lora = _DREAMSIM_PARTS[dreamsim_type]
    files = [f for b in backbones for f in _BACKBONE_FILES[b]]
    return [*files, f"{lora}/adapter_config.json"]


def missing_dreamsim_files(cache_dir: Path, dreamsim_type: str) -> list[str]:
    return [f for f in dreamsim_required_files(dreamsim_type) if not (Path(cache_dir) / f).exists()]


def _dreamsim_missing_error(cache_dir: Path, dreamsim_type: str, missing: list[str], cause: str):
    return ModelNotAvailableError(
        f"DreamSim ({dreamsim_type}) weights are not in cache_dir {cache_dir} "
        f"(missing: {', '.join(missing)}) and {cause}. On a machine with internet run "
        f"`python -c \"from prpg.filter.similarity import download_dreamsim; "
        f"download_dreamsim('{cache_dir}', '{dreamsim_type}')\"` and copy that folder here "
        "(or point PRPG_DREAMSIM_CACHE / the filter's cache_dir at a copy)."
    )


def _run_dreamsim(cache_dir: Path, dreamsim_type: str, device: str):
    """dreamsim(pretrained=True, ...) with torch.hub's global dir restored afterwards (DreamSim sets it
    to the cache dir to load DINO, which would silently redirect every later torch.hub call)."""
    from dreamsim import dreamsim

    previous = torch.hub.get_dir()
    try:
        model, _ = dreamsim(pretrained=True, device=device, cache_dir=str(cache_dir),
                            dreamsim_type=dreamsim_type)
    finally:
        torch.hub.set_dir(previous)
    return model


def download_dreamsim(cache_dir: str | Path | None = None, dreamsim_type: str = "ensemble") -> Path:
    """Fetch DreamSim's weights into cache_dir (needs internet): its release zip, the DINO torch.hub repo
    and DINO's checkpoint. Copy the folder to offline machines; `pretrained.zip` in it may be deleted."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_dreamsim_cache()
    cache_dir.mkdir(parents=True, exist_ok=True)
    _run_dreamsim(cache_dir, dreamsim_type, "cpu")
    missing = missing_dreamsim_files(cache_dir, dreamsim_type)
    if missing:
        raise RuntimeError(f"DreamSim loaded but {cache_dir} lacks {', '.join(missing)}; "
                           "has DreamSim's file layout changed? Update prpg.filter.similarity._BACKBONE_FILES")
    return cache_dir


class DreamSimModel:
    """DreamSim embeddings as in the reference filter: resize 224 bicubic, ToTensor, `model.embed`,
    L2-normalise. Missing weights are downloaded only when allowed (default: unless HF_HUB_OFFLINE)."""

    def __init__(self, cache_dir: str | Path | None = None, dreamsim_type: str = "ensemble",
                 device: str = "cpu", allow_download: bool | None = None, batch: int = 16):
        from torchvision import transforms as T

        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_dreamsim_cache()
        self.device, self.batch = device, batch
        missing = missing_dreamsim_files(self.cache_dir, dreamsim_type)
        allow = (not hub_offline()) if allow_download is None else allow_download
        if missing and not allow:
            why = ("HF_HUB_OFFLINE is set" if allow_download is None
                   else "downloading is off (allow_download=False)")
            raise _dreamsim_missing_error(self.cache_dir, dreamsim_type, missing, why)
        if missing:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.model = _run_dreamsim(self.cache_dir, dreamsim_type, device)
        except (OSError, RuntimeError) as err:  # URLError is an OSError; torch.hub offline: RuntimeError
            if not missing:
                raise
            raise _dreamsim_missing_error(self.cache_dir, dreamsim_type, missing,
                                          f"the download failed ({type(err).__name__}: {err})") from err
        size = (DREAMSIM_SIZE, DREAMSIM_SIZE)
        self.transform = T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.ToTensor()])

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = [self.model.embed(x).float().reshape(len(x), -1).cpu()  # DreamSim squeezes a batch of 1
               for x in _batches(images, self.transform, self.batch, self.device)]
        return F.normalize(torch.cat(out), dim=-1)


def backbone_data_config(model) -> dict:
    """timm's preprocessing for the model (input size, interpolation, mean/std, crop_pct) from its
    pretrained config; for the toybox encoder this is exactly `prpg.zoo.encoder.eval_transform`."""
    import timm

    return timm.data.resolve_data_config({}, model=model)


def backbone_transform(model, resize: Resize = "squash"):
    """"eval": the model's eval transform (resize short side, center crop). "squash": resize straight to
    the input size, as DreamSim does. Filtering embeds box crops of any aspect ratio, and a center crop
    would cut the ends off a long object (a screwdriver's box is 4:1), so the filter squashes."""
    import timm
    from torchvision import transforms as T

    cfg = backbone_data_config(model)
    if resize == "eval":
        return timm.data.create_transform(**cfg)
    size = cfg["input_size"][1:]
    interp = T.InterpolationMode(cfg.get("interpolation", "bicubic"))
    return T.Compose([T.Resize(size, interpolation=interp), T.ToTensor(),
                      T.Normalize(cfg["mean"], cfg["std"])])


class BackboneModel:
    """CLS token of a timm ViT (after its final norm), L2-normalised."""

    def __init__(self, model, device: str = "cpu", resize: Resize = "squash", batch: int = 64):
        if getattr(model, "cls_token", None) is None:
            raise ValueError(f"{type(model).__name__} has no CLS token; the backbone similarity needs one")
        self.model = model.eval().to(device)
        self.device, self.batch = device, batch
        self.transform = backbone_transform(model, resize)

    @classmethod
    def load(cls, name_or_path: str | Path, device: str = "cpu", resize: Resize = "squash"):
        from prpg.core.models import load_backbone

        return cls(load_backbone(name_or_path), device=device, resize=resize)

    @torch.no_grad()
    def embed(self, images: Sequence[Image.Image]) -> torch.Tensor:
        out = [self.model.forward_features(x)[:, 0].float().cpu()
               for x in _batches(images, self.transform, self.batch, self.device)]
        return F.normalize(torch.cat(out), dim=-1)
