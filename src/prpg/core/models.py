"""Loading layer: one place that turns a model name, a Hugging Face id or a local folder into a model.

Paper runs name hub ids (Stable Diffusion 1.5, DINOv2-B/14, CLIP-B/16, MAE-B/16); the embedded
default names the toybox models shipped under models/toybox/. Both go through the same
`from_pretrained` code, so the offline tests on tiny local models exercise the paper's path.

Backbones are timm VisionTransformers for all three paper models: timm keeps the fused `qkv`
projection that the paper's LoRA targets, interpolates position embeddings for any input size
(`dynamic_img_size`), and carries each model's preprocessing in its pretrained config.
"""

from __future__ import annotations

import os
from pathlib import Path

PAPER_GENERATOR = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TOYBOX_DIR = Path("models/toybox")
TOYBOX_GENERATOR = TOYBOX_DIR / "generator"
TOYBOX_ENCODER = TOYBOX_DIR / "encoder"

# Paper backbone name -> timm model on the Hugging Face hub (weights identical to the originals).
PAPER_BACKBONES = {
    "dinov2_vitb14": "timm/vit_base_patch14_dinov2.lvd142m",
    "clip_vitb16": "timm/vit_base_patch16_clip_224.openai",
    "mae_vitb16": "timm/vit_base_patch16_224.mae",
}


class ModelNotAvailableError(RuntimeError):
    """A model is neither a local folder nor in the local hub cache, and cannot be downloaded."""


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_cache() -> str:
    from huggingface_hub.constants import HF_HUB_CACHE

    return str(HF_HUB_CACHE)


def _missing(model_id: str, cause: BaseException | None) -> ModelNotAvailableError:
    why = "HF_HUB_OFFLINE is set" if hub_offline() else f"the download failed ({type(cause).__name__})"
    return ModelNotAvailableError(
        f"model '{model_id}' is not in the local Hugging Face cache ({_hub_cache()}) and {why}. "
        f"On a machine with internet, pre-download it with `hf download {model_id}` (same HF_HOME), "
        "or copy that cache folder here, or pass a local folder saved with save_pretrained instead."
    )


def split_revision(model_id: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); a plain id -> (id, None): the hub's main branch."""
    repo_id, _, revision = model_id.partition("@")
    return repo_id, revision or None


def _is_local(name_or_path: str | Path) -> bool:
    return Path(name_or_path).is_dir()


def weights_fingerprint(name_or_path: str | Path) -> str | None:
    """First 12 hex digits of a sha256 over a local model folder's safetensors files (names and bytes),
    so committed results say which weights made them; None for a hub id, which names its weights itself."""
    import hashlib

    if name_or_path == "toybox":
        name_or_path = TOYBOX_ENCODER
    if not _is_local(name_or_path):
        return None
    root = Path(name_or_path)
    files = sorted(root.rglob("*.safetensors"))
    if not files:
        raise ModelNotAvailableError(f"{root}: no *.safetensors weights in this model folder")
    digest = hashlib.sha256()
    for f in files:
        digest.update(f.relative_to(root).as_posix().encode() + b"\0")
        digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def load_generator(id_or_path: str | Path = PAPER_GENERATOR, *, device: str = "cpu", dtype=None,
                   local_files_only: bool | None = None):
    """A diffusers StableDiffusionPipeline (SD 1.5 or the toybox generator), safety checker off."""
    import torch
    from diffusers import StableDiffusionPipeline

    dtype = dtype or torch.float32
    kwargs = dict(dtype=dtype, safety_checker=None, requires_safety_checker=False)
    if _is_local(id_or_path):
        pipe = StableDiffusionPipeline.from_pretrained(str(id_or_path), local_files_only=True, **kwargs)
    else:
        repo_id, revision = split_revision(str(id_or_path))
        offline = hub_offline() if local_files_only is None else local_files_only
        try:
            pipe = StableDiffusionPipeline.from_pretrained(repo_id, revision=revision, local_files_only=offline,
                                                           **kwargs)
        except (OSError, ValueError) as err:  # diffusers raises OSError/EnvironmentError for a missing repo
            raise _missing(str(id_or_path), err) from err
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def backbone_source(name_or_path: str | Path) -> str:
    """The timm model string: 'local-dir:<path>' for a folder, 'hf-hub:<id>' for a paper name or hub id."""
    if _is_local(name_or_path):
        return f"local-dir:{Path(name_or_path).resolve()}"
    name = str(name_or_path)
    if name == "toybox":
        if not TOYBOX_ENCODER.is_dir():
            raise ModelNotAvailableError(f"{TOYBOX_ENCODER} not found: run from the repo root (the toybox encoder ships there)")
        return f"local-dir:{TOYBOX_ENCODER.resolve()}"
    return f"hf-hub:{PAPER_BACKBONES.get(name, name)}"


# The timm hub config of OpenAI's CLIP names the plain-GELU ViT class; CLIP was trained with QuickGELU.
QUICK_GELU = {PAPER_BACKBONES["clip_vitb16"]}


def use_quick_gelu(model):
    """Set every block's MLP activation to QuickGELU (OpenAI CLIP's), in place."""
    from timm.layers import QuickGELU

    for block in model.blocks:
        block.mlp.act = QuickGELU()
    return model


def load_backbone(name_or_path: str | Path, *, local_files_only: bool | None = None):
    """A timm ViT with no classifier head that takes any input size (interpolated position embeddings)."""
    import timm

    source = backbone_source(name_or_path)
    if source.startswith("local-dir:"):
        return timm.create_model(source, pretrained=True, num_classes=0, dynamic_img_size=True)
    repo_id = source.removeprefix("hf-hub:")
    offline = hub_offline() if local_files_only is None else local_files_only
    if offline:
        from huggingface_hub import try_to_load_from_cache

        hub_id, revision = split_revision(repo_id)
        if not isinstance(try_to_load_from_cache(hub_id, "config.json", revision=revision), str):
            raise _missing(repo_id, None)
    try:
        model = timm.create_model(source, pretrained=True, num_classes=0, dynamic_img_size=True)
    except (OSError, RuntimeError, ValueError) as err:
        raise _missing(repo_id, err) from err
    return use_quick_gelu(model) if split_revision(repo_id)[0] in QUICK_GELU else model
