"""Rehearsal hub: the paper's models with random weights, stored where the project's loaders look.

A rehearsal runs the paper's experiments end to end on a machine with no internet and no real
weights: every model has the paper's exact architecture (or, at `mini` shape, the same classes
shrunk) but random weights. The files are written under the paper's own hub ids and file layout:

- `build_hub(hf_home)` writes a Hugging Face cache at `hf_home/hub` (what `HF_HOME=hf_home` reads):
  Stable Diffusion 1.5, the three timm backbones and SAM ViT-H, each as
  `models--<org>--<name>/refs/main` + `snapshots/<commit>/<files>`;
- `build_dreamsim(cache_dir)` writes DreamSim's cache folder (its checkpoints, the DINO torch.hub
  repo folder, the LoRA adapter).

So the UNCHANGED loading code (`prpg.core.models.load_generator`, `load_backbone`,
`prpg.filter.filtering.load_sam`, `prpg.filter.similarity.DreamSimModel`) finds them with `HF_HUB_OFFLINE=1`;
`offline_env()` gives the environment variables. Nothing here is a trained model: results of a
rehearsal say whether the pipeline runs, at what cost, never how well.

Shapes:
- "paper": the published configs (SD 1.5 UNet/VAE/CLIP ViT-L/14 text encoder, DINOv2-B/14,
  CLIP-B/16, MAE-B/16, SAM ViT-H): real sizes, real memory and time.
- "mini": the same classes and hub configs with tiny widths/depths (loads and runs in about a
  second on a CPU); the tokenizer is CLIP's real BPE at both shapes. DreamSim hard-codes its ViT-Bs,
  so its cache is the same at both shapes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from torch import nn

from prpg.core.atomic import atomic_dir
from prpg.core.configs import SAM
from prpg.core.models import PAPER_BACKBONES, PAPER_GENERATOR

SHAPES = ("mini", "paper")
# Bump when the written files change, so existing rehearsal folders are rebuilt instead of reused.
HUB_VERSION = "1"
# The one commit every rehearsal repo is stored under (the cache layout needs a 40-hex name).
COMMIT = hashlib.sha1(b"prpg rehearsal hub").hexdigest()
STAMP = ".prpg-rehearsal.json"  # marker: which (shape, seed, version) a folder holds
SAM_ID = SAM
INIT_STD = 0.02  # random weights: N(0, 0.02) matrices, zero biases, unit norm scales

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]

# --- Stable Diffusion 1.5: the published configs ------------------------------------------------

SD15_UNET = dict(
    act_fn="silu", attention_head_dim=8, block_out_channels=[320, 640, 1280, 1280], center_input_sample=False,
    cross_attention_dim=768, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, in_channels=4,
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    layers_per_block=2, mid_block_scale_factor=1, norm_eps=1e-5, norm_num_groups=32, out_channels=4,
    sample_size=64,
)
SD15_VAE = dict(
    act_fn="silu", block_out_channels=[128, 256, 512, 512], down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4, in_channels=3, out_channels=3, latent_channels=4,
    layers_per_block=2, norm_num_groups=32, sample_size=512,
)
# SD 1.5's text_encoder/config.json (CLIP ViT-L/14's text tower). Its bos/eos/pad ids 0/2/1 are
# what the file says (the tokenizer's are 49406/49407); eos_token_id 2 selects argmax pooling.
SD15_TEXT_ENCODER = dict(
    architectures=["CLIPTextModel"], attention_dropout=0.0, bos_token_id=0, dropout=0.0, eos_token_id=2,
    hidden_act="quick_gelu", hidden_size=768, initializer_factor=1.0, initializer_range=0.02,
    intermediate_size=3072, layer_norm_eps=1e-5, max_position_embeddings=77, num_attention_heads=12,
    num_hidden_layers=12, pad_token_id=1, projection_dim=768, vocab_size=49408,
)
# scheduler/scheduler_config.json as published (clip_sample is a DDIM key PNDM's loader ignores).
SD15_SCHEDULER = dict(
    _class_name="PNDMScheduler", _diffusers_version="0.6.0", beta_end=0.012, beta_schedule="scaled_linear",
    beta_start=0.00085, clip_sample=False,
    num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1, trained_betas=None,
)
# Mini: same classes and block pattern (cross-attention first, plain last), tiny widths. Four VAE
# levels keep SD's 8x latent factor, so sample_size 8 means 64 px images as 64 means 512 px.
MINI_UNET = {**SD15_UNET, "block_out_channels": [32, 64], "layers_per_block": 1, "cross_attention_dim": 32,
             "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
             "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"], "sample_size": 8}
MINI_VAE = {**SD15_VAE, "block_out_channels": [32, 32, 64, 64], "layers_per_block": 1, "sample_size": 64}
# The vocabulary stays CLIP's real 49408 tokens (the tokenizer is real), only the width shrinks.
MINI_TEXT_ENCODER = {**SD15_TEXT_ENCODER, "hidden_size": 32, "intermediate_size": 128, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "projection_dim": 32}

_AddedToken = dict(lstrip=False, normalized=True, rstrip=False, single_word=False)
SD15_TOKENIZER_CONFIG = {
    "add_prefix_space": False,
    "bos_token": {"__type": "AddedToken", "content": "<|startoftext|>", **_AddedToken},
    "do_lower_case": True,
    "eos_token": {"__type": "AddedToken", "content": "<|endoftext|>", **_AddedToken},
    "errors": "replace",
    "model_max_length": 77,
    "name_or_path": "openai/clip-vit-large-patch14",
    "pad_token": "<|endoftext|>",
    "special_tokens_map_file": "./special_tokens_map.json",
    "tokenizer_class": "CLIPTokenizer",
    "unk_token": {"__type": "AddedToken", "content": "<|endoftext|>", **_AddedToken},
}
SD15_SPECIAL_TOKENS = {
    "bos_token": {"content": "<|startoftext|>", **_AddedToken},
    "eos_token": {"content": "<|endoftext|>", **_AddedToken},
    "pad_token": "<|endoftext|>",
    "unk_token": {"content": "<|endoftext|>", **_AddedToken},
}
SD15_FEATURE_EXTRACTOR = {
    "crop_size": 224, "do_center_crop": True, "do_convert_rgb": True, "do_normalize": True, "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
    "resample": 3, "size": 224,
}
# SD 1.5's model_index.json as published. The safety checker entry stays: the project loads with
# safety_checker=None, so diffusers never looks for that folder (the repo here has none).
SD15_MODEL_INDEX = {
    "_class_name": "StableDiffusionPipeline",
    "_diffusers_version": "0.6.0",
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "scheduler": ["diffusers", "PNDMScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}

# --- timm backbones: the hub config.json of each paper model ------------------------------------


def _timm_pretrained_cfg(tag: str, input_size: int, crop_pct: float, mean, std, num_classes: int,
                         license: str, **extra) -> dict:
    return dict(tag=tag, custom_load=False, input_size=[3, input_size, input_size], fixed_input_size=True,
                interpolation="bicubic", crop_pct=crop_pct, crop_mode="center", mean=mean, std=std,
                num_classes=num_classes, pool_size=None, first_conv="patch_embed.proj", classifier="head",
                license=license, **extra)


# paper backbone name -> config.json of its timm hub repo (PAPER_BACKBONES), as timm exported it.
TIMM_HUB_CONFIGS = {
    "dinov2_vitb14": dict(
        architecture="vit_base_patch14_dinov2", num_classes=0, num_features=768, global_pool="token",
        pretrained_cfg=_timm_pretrained_cfg("lvd142m", 518, 1.0, IMAGENET_MEAN, IMAGENET_STD, 0,
                                            "apache-2.0")),
    # OpenAI CLIP's image tower keeps its 512-d projection as the "classifier" head (num_classes 512);
    # the project loads with num_classes=0, so timm drops it.
    "clip_vitb16": dict(
        architecture="vit_base_patch16_clip_224", num_classes=512, num_features=768, global_pool="token",
        pretrained_cfg=_timm_pretrained_cfg(
            "openai", 224, 0.9, CLIP_MEAN, CLIP_STD, 512, "apache-2.0",
            notes=["natively QuickGELU, use quickgelu model variant for original results"])),
    "mae_vitb16": dict(
        architecture="vit_base_patch16_224", num_classes=0, num_features=768, global_pool="token",
        pretrained_cfg=_timm_pretrained_cfg("mae", 224, 0.9, IMAGENET_MEAN, IMAGENET_STD, 0, "cc-by-nc-4.0")),
}
# timm's hub loader passes config.json's model_args to create_model: same architecture, tiny size.
MINI_VIT_ARGS = {"embed_dim": 32, "depth": 2, "num_heads": 2}

# --- SAM ViT-H (facebook/sam-vit-huge) ----------------------------------------------------------

SAM_VIT_H = {
    "vision_config": dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16,
                          global_attn_indexes=[7, 15, 23, 31], mlp_dim=5120, output_channels=256,
                          image_size=1024, patch_size=16, window_size=14, num_pos_feats=128, qkv_bias=True,
                          use_abs_pos=True, use_rel_pos=True, layer_norm_eps=1e-6, hidden_act="gelu"),
    "prompt_encoder_config": dict(hidden_size=256, image_size=1024, patch_size=16, mask_input_channels=16,
                                  num_point_embeddings=4, hidden_act="gelu", layer_norm_eps=1e-6),
    "mask_decoder_config": dict(hidden_size=256, hidden_act="relu", mlp_dim=2048, num_hidden_layers=2,
                                num_attention_heads=8, attention_downsample_rate=2, num_multimask_outputs=3,
                                iou_head_depth=3, iou_head_hidden_dim=256, layer_norm_eps=1e-6),
}
# Mini keeps 1024 px inputs (SamProcessor pads to 1024) and shrinks every width to 32.
MINI_SAM = {
    "vision_config": {**SAM_VIT_H["vision_config"], "hidden_size": 32, "num_hidden_layers": 2,
                      "num_attention_heads": 2, "global_attn_indexes": [1], "mlp_dim": 128,
                      "output_channels": 32, "num_pos_feats": 16},
    "prompt_encoder_config": {**SAM_VIT_H["prompt_encoder_config"], "hidden_size": 32},
    "mask_decoder_config": {**SAM_VIT_H["mask_decoder_config"], "hidden_size": 32, "mlp_dim": 64,
                            "num_attention_heads": 2, "iou_head_hidden_dim": 32},
}
SAM_PREPROCESSOR = {
    "do_convert_rgb": True, "do_normalize": True, "do_pad": True, "do_rescale": True, "do_resize": True,
    "image_mean": IMAGENET_MEAN, "image_std": IMAGENET_STD, "image_processor_type": "SamImageProcessor",
    "mask_pad_size": {"height": 256, "width": 256}, "mask_size": {"longest_edge": 256},
    "pad_size": {"height": 1024, "width": 1024}, "processor_class": "SamProcessor", "resample": 2,
    "rescale_factor": 1 / 255, "size": {"longest_edge": 1024},
}

# --- DreamSim ------------------------------------------------------------------------------------

# DreamSim's LoRA settings (its training config); dreamsim() reads these keys from adapter_config.json.
DREAMSIM_LORA = dict(r=16, lora_alpha=0.5, lora_dropout=0.3, bias="none", target_modules=["qkv"])
DREAMSIM_DIM, DREAMSIM_DEPTH = 768, 12  # DreamSim builds every backbone with vit_base(): fixed ViT-B
# The 'student' head keys dreamsim's extractor reads for dino_vitb16, shaped as its DINOHead(768, 2048).
# (Only the CLS token of DINO enters the ensemble; the head is loaded, never used.)
DINO_HEAD_SHAPES = {
    "module.head.mlp.0.weight": (2048, 768), "module.head.mlp.0.bias": (2048,),
    "module.head.mlp.2.weight": (2048, 2048), "module.head.mlp.2.bias": (2048,),
    "module.head.mlp.4.weight": (256, 2048), "module.head.mlp.4.bias": (256,),
    "module.head.last_layer.weight": (2048, 256),
}
# The folder torch.hub.load('facebookresearch/dino:main', ...) imports (hub dir = DreamSim's cache).
DINO_HUB_REPO = "facebookresearch_dino_main"
DINO_CHECKPOINT = "checkpoints/dino_vitbase16_pretrain.pth"
DINO_HUBCONF = '''"""Rehearsal stand-in for the DINO torch.hub entry point that DreamSim loads.

Written by prpg.rehearsal.hub; not DINO's code. dino_vitb16() builds DreamSim's own ViT-B/16 and
loads the random-weight checkpoint stored in torch.hub's checkpoints folder. Nothing is downloaded.
"""
import os

import torch

dependencies = ["torch"]


def dino_vitb16(pretrained=True, **kwargs):
    from dreamsim.feature_extraction.vision_transformer import vit_base

    model = vit_base(patch_size=16, num_classes=0, **kwargs)
    if pretrained:
        path = os.path.join(torch.hub.get_dir(), "checkpoints", "dino_vitbase16_pretrain.pth")
        model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return model
'''


# --- shapes and random weights -------------------------------------------------------------------


def check_shape(shape: str) -> str:
    if shape not in SHAPES:
        raise ValueError(f"unknown rehearsal shape {shape!r}; use one of {', '.join(SHAPES)}")
    return shape


def unet_config(shape: str) -> dict:
    return dict(SD15_UNET if check_shape(shape) == "paper" else MINI_UNET)


def vae_config(shape: str) -> dict:
    return dict(SD15_VAE if check_shape(shape) == "paper" else MINI_VAE)


def text_encoder_config(shape: str) -> dict:
    return dict(SD15_TEXT_ENCODER if check_shape(shape) == "paper" else MINI_TEXT_ENCODER)


def sam_config(shape: str) -> dict:
    return json.loads(json.dumps(SAM_VIT_H if check_shape(shape) == "paper" else MINI_SAM))


def timm_hub_config(backbone: str, shape: str) -> dict:
    """config.json of a timm backbone repo; mini adds model_args (timm's hub loader applies them)."""
    if backbone not in TIMM_HUB_CONFIGS:
        raise ValueError(f"unknown backbone {backbone!r}; use one of {', '.join(TIMM_HUB_CONFIGS)}")
    cfg = json.loads(json.dumps(TIMM_HUB_CONFIGS[backbone]))
    if check_shape(shape) == "mini":
        cfg["model_args"] = dict(MINI_VIT_ARGS)
        cfg["num_features"] = MINI_VIT_ARGS["embed_dim"]
    return cfg


def _sub_seed(seed: int, part: str) -> int:
    # One independent stream per model, so adding or skipping a model never changes another's weights.
    return zlib.crc32(f"{seed}:{part}".encode())


@contextlib.contextmanager
def empty_weights(seed: int = 0) -> Iterator[None]:
    """Build models with parameters on the meta device (no slow default init, no memory); buffers stay
    real, made from a seeded RNG that is restored afterwards."""
    from accelerate import init_empty_weights

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with init_empty_weights(include_buffers=False):
            yield


def _is_norm(module: nn.Module) -> bool:
    return "norm" in type(module).__name__.lower()


@torch.no_grad()
def materialize(model: nn.Module, seed: int, part: str) -> nn.Module:
    """Give every (meta) parameter real random values, in place, in one seeded pass: norm scales 1,
    biases 0, everything else N(0, INIT_STD). Tied parameters stay tied."""
    gen = torch.Generator().manual_seed(_sub_seed(seed, part))
    made: dict[int, nn.Parameter] = {}
    for module in model.modules():
        norm = _is_norm(module)
        for key, p in list(module._parameters.items()):
            if p is None:
                continue
            if id(p) not in made:
                t = torch.empty(p.shape, dtype=p.dtype)
                if norm and t.ndim == 1:
                    t.fill_(1.0 if key == "weight" else 0.0)
                elif key.endswith("bias"):
                    t.zero_()
                else:
                    t.normal_(0.0, INIT_STD, generator=gen)
                made[id(p)] = nn.Parameter(t, requires_grad=p.requires_grad)
            module._parameters[key] = made[id(p)]
    return model


def _build(part: str, shape: str) -> nn.Module:
    """One model of the hub, parameters on meta (call inside `empty_weights`)."""
    if part == "unet":
        from diffusers import UNet2DConditionModel

        return UNet2DConditionModel(**unet_config(shape))
    if part == "vae":
        from diffusers import AutoencoderKL

        return AutoencoderKL(**vae_config(shape))
    if part == "text_encoder":
        from transformers import CLIPTextConfig, CLIPTextModel

        return CLIPTextModel(CLIPTextConfig(**text_encoder_config(shape)))
    if part == "sam":
        from transformers import SamConfig, SamModel

        return SamModel(SamConfig(**sam_config(shape)))
    if part in TIMM_HUB_CONFIGS:
        import timm

        cfg = timm_hub_config(part, shape)
        return timm.create_model(cfg["architecture"], pretrained=False, num_classes=cfg["num_classes"],
                                 **cfg.get("model_args", {}))
    raise ValueError(f"unknown model {part!r}")


MODELS = ("unet", "vae", "text_encoder", "sam", *TIMM_HUB_CONFIGS)


def _tie(model: nn.Module) -> nn.Module:
    # transformers ties shared parameters (SAM's positional embedding) after init; do it here too, so
    # the saved file holds one copy as the real checkpoint does, and parameter counts match.
    if hasattr(model, "tie_weights"):
        model.tie_weights()
    return model


def empty_model(part: str, shape: str) -> nn.Module:
    """A model of the hub (one of MODELS) with meta parameters: its architecture, no weights."""
    with empty_weights():
        model = _build(part, check_shape(shape))
    return _tie(model)  # outside: accelerate's patched register_parameter would copy the tied parameter


def random_model(part: str, shape: str, seed: int = 0) -> nn.Module:
    """A model of the hub with seeded random weights, on the CPU."""
    with empty_weights(_sub_seed(seed, part)):
        model = _build(part, check_shape(shape))
    return _tie(materialize(model, seed, part))


# --- folders: stamps, atomic writes --------------------------------------------------------------


def _stamp(shape: str, seed: int, **extra) -> dict:
    return {"shape": shape, "seed": seed, "version": HUB_VERSION, **extra}


def _has_stamp(folder: Path, stamp: dict) -> bool:
    try:
        return json.loads((folder / STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def _refuse_foreign(folder: Path) -> None:
    # Never replace a folder this module did not write: it may hold real, downloaded weights.
    if folder.exists() and any(folder.iterdir()) and not (folder / STAMP).exists():
        raise FileExistsError(f"{folder} exists and was not written by prpg.rehearsal.hub (real weights?); "
                              "refusing to overwrite it. Use an empty HF_HOME / cache folder for rehearsals.")


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2) + "\n")


def repo_folder(hf_home: Path, repo_id: str) -> Path:
    return Path(hf_home) / "hub" / ("models--" + repo_id.replace("/", "--"))


def _write_repo(hf_home: Path, repo_id: str, stamp: dict, fill: Callable[[Path], None]) -> Path:
    """A cache repo (refs/main + snapshots/COMMIT) whose snapshot `fill` writes; written to a temp
    folder and renamed, so a crash never leaves half a model. Reused as is when its stamp matches."""
    repo = repo_folder(hf_home, repo_id)
    snapshot = repo / "snapshots" / COMMIT
    if _has_stamp(repo, stamp) and snapshot.is_dir():
        return snapshot
    _refuse_foreign(repo)
    with atomic_dir(repo) as tmp:
        fill(tmp / "snapshots" / COMMIT)
        (tmp / "refs").mkdir()
        (tmp / "refs" / "main").write_text(COMMIT)  # no newline: huggingface_hub reads it verbatim
        _write_json(tmp / STAMP, stamp)
    return snapshot


# --- the models' files ---------------------------------------------------------------------------


def _save_random(part: str, shape: str, seed: int, out: Path) -> None:
    model = random_model(part, shape, seed)
    model.save_pretrained(out, safe_serialization=True)


def write_tokenizer(out: Path) -> None:
    """SD 1.5's tokenizer folder (the slow CLIPTokenizer files) with CLIP's real BPE vocabulary."""
    from prpg.zoo.tokenizer import write_clip_vocab

    write_clip_vocab(out)  # vocab.json + merges.txt from the BPE file open_clip ships: no download
    _write_json(out / "tokenizer_config.json", SD15_TOKENIZER_CONFIG)
    _write_json(out / "special_tokens_map.json", SD15_SPECIAL_TOKENS)


def write_generator(snapshot: Path, shape: str, seed: int) -> None:
    for part in ("unet", "vae", "text_encoder"):  # one at a time: peak memory is one model
        _save_random(part, shape, seed, snapshot / part)
    write_tokenizer(snapshot / "tokenizer")
    _write_json(snapshot / "scheduler" / "scheduler_config.json", SD15_SCHEDULER)
    _write_json(snapshot / "feature_extractor" / "preprocessor_config.json", SD15_FEATURE_EXTRACTOR)
    _write_json(snapshot / "model_index.json", SD15_MODEL_INDEX)


def write_backbone(snapshot: Path, backbone: str, shape: str, seed: int) -> None:
    from safetensors.torch import save_file

    snapshot.mkdir(parents=True, exist_ok=True)
    model = random_model(backbone, shape, seed)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, snapshot / "model.safetensors",
              metadata={"format": "pt"})
    _write_json(snapshot / "config.json", timm_hub_config(backbone, shape))


def write_sam(snapshot: Path, shape: str, seed: int) -> None:
    _save_random("sam", shape, seed, snapshot)
    _write_json(snapshot / "preprocessor_config.json", SAM_PREPROCESSOR)


def build_hub(hf_home: Path, shape: str = "mini", *, seed: int = 0, generator: bool = True,
              backbones: Sequence[str] = ("dinov2_vitb14", "clip_vitb16", "mae_vitb16"),
              sam: bool = True) -> dict[str, Path]:
    """Write random-weight models into a Hugging Face cache at hf_home/hub (the layout HF_HOME=hf_home
    reads): models--<org>--<name>/refs/main (a fixed 40-hex commit) + snapshots/<commit>/<files>.
    Returns {repo_id: snapshot dir}. A repo already holding this (shape, seed) is kept as is."""
    check_shape(shape)
    for b in backbones:
        if b not in TIMM_HUB_CONFIGS:
            raise ValueError(f"unknown backbone {b!r}; use some of {', '.join(TIMM_HUB_CONFIGS)}")
    stamp = _stamp(shape, seed)
    out = {}
    if generator:
        out[PAPER_GENERATOR] = _write_repo(hf_home, PAPER_GENERATOR, stamp,
                                           lambda snap: write_generator(snap, shape, seed))
    for b in backbones:
        out[PAPER_BACKBONES[b]] = _write_repo(hf_home, PAPER_BACKBONES[b], stamp,
                                              lambda snap, b=b: write_backbone(snap, b, shape, seed))
    if sam:
        out[SAM_ID] = _write_repo(hf_home, SAM_ID, stamp, lambda snap: write_sam(snap, shape, seed))
    return out


# --- DreamSim's cache folder ---------------------------------------------------------------------


def _dreamsim_parts(dreamsim_type: str) -> tuple[list[str], str]:
    """(backbones, LoRA folder) that dreamsim() loads for this type."""
    from dreamsim.config import dreamsim_args

    supported = ("ensemble", "dino_vitb16", "clip_vitb32", "open_clip_vitb32")
    if dreamsim_type not in supported:
        raise ValueError(f"unsupported dreamsim_type {dreamsim_type!r}; use one of {', '.join(supported)}")
    backbones = dreamsim_args["model_config"][dreamsim_type]["model_type"].split(",")
    lora = "ensemble_lora" if dreamsim_type == "ensemble" else f"{backbones[0]}_single_lora"
    return backbones, lora


def _normal(gen: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.empty(shape).normal_(0.0, INIT_STD, generator=gen)


def _dreamsim_vit(patch: int, seed: int, part: str, clip_layout: bool) -> dict[str, torch.Tensor]:
    """A random ViT-B state dict in DreamSim's DINO-ViT key format. The CLIP layout replaces pos_drop
    by a LayerNorm (CLIP's ln_pre) and adds the 'proj' matrix, as load_(open_)clip_as_dino expect."""
    from dreamsim.feature_extraction.vision_transformer import vit_base

    with empty_weights(_sub_seed(seed, part)):
        vit = vit_base(patch_size=patch, num_classes=0)
        if clip_layout:
            vit.pos_drop = nn.LayerNorm(vit.embed_dim)
    sd = {k: v.contiguous() for k, v in materialize(vit, seed, part).state_dict().items()}
    if clip_layout:
        gen = torch.Generator().manual_seed(_sub_seed(seed, part + ".proj"))
        sd["proj"] = _normal(gen, DREAMSIM_DIM, 512)  # CLIP's image projection to its 512-d embedding
    return sd


def _write_dino(folder: Path, seed: int) -> None:
    gen = torch.Generator().manual_seed(_sub_seed(seed, "dino_head"))
    head = {k: torch.zeros(shape) if k.endswith("bias") else _normal(gen, *shape)
            for k, shape in DINO_HEAD_SHAPES.items()}
    torch.save({"student": head}, folder / "dino_vitb16_pretrain.pth")
    (folder / DINO_HUB_REPO).mkdir()
    (folder / DINO_HUB_REPO / "hubconf.py").write_text(DINO_HUBCONF)
    (folder / "checkpoints").mkdir()
    torch.save(_dreamsim_vit(16, seed, "dino_vitb16", clip_layout=False), folder / DINO_CHECKPOINT)
    # torch.hub trusts facebookresearch repos anyway; the list makes "no prompt, no network" explicit.
    (folder / "trusted_list").write_text("facebookresearch_dino\n")


def _write_lora(folder: Path, n_backbones: int, seed: int) -> None:
    """peft's adapter folder for the qkv LoRA of every block of every backbone (keys as peft saves them)."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    LoraConfig(**DREAMSIM_LORA).save_pretrained(str(folder))
    gen = torch.Generator().manual_seed(_sub_seed(seed, folder.name))
    r, tensors = DREAMSIM_LORA["r"], {}
    for i in range(n_backbones):
        for j in range(DREAMSIM_DEPTH):
            key = f"base_model.model.extractor_list.{i}.model.blocks.{j}.attn.qkv"
            tensors[f"{key}.lora_A.weight"] = _normal(gen, r, DREAMSIM_DIM)
            tensors[f"{key}.lora_B.weight"] = _normal(gen, 3 * DREAMSIM_DIM, r)
    save_file(tensors, folder / "adapter_model.safetensors", metadata={"format": "pt"})


def write_dreamsim(folder: Path, seed: int, dreamsim_type: str = "ensemble") -> None:
    backbones, lora = _dreamsim_parts(dreamsim_type)
    for b in backbones:
        if b == "dino_vitb16":
            _write_dino(folder, seed)
        else:  # clip_vitbP / open_clip_vitbP
            patch = int(b.removeprefix("open_").removeprefix("clip_vitb"))
            torch.save({"state_dict": _dreamsim_vit(patch, seed, b, clip_layout=True)},
                       folder / f"{b}_pretrain.pth.tar")
    _write_lora(folder / lora, len(backbones), seed)


def build_dreamsim(cache_dir: Path, shape: str = "mini", *, seed: int = 0,
                   dreamsim_type: str = "ensemble") -> Path:
    """Write DreamSim's cache_dir layout (what dreamsim(pretrained=True, cache_dir=...) reads offline)
    with random weights. DreamSim hard-codes ViT-B backbones, so both shapes write the same files."""
    check_shape(shape)
    _dreamsim_parts(dreamsim_type)
    cache_dir = Path(cache_dir)
    stamp = _stamp("ViT-B", seed, dreamsim_type=dreamsim_type)  # same content at both shapes
    if _has_stamp(cache_dir, stamp):
        return cache_dir
    _refuse_foreign(cache_dir)
    with atomic_dir(cache_dir) as tmp:
        write_dreamsim(tmp, seed, dreamsim_type)
        _write_json(tmp / STAMP, stamp)
    return cache_dir


def offline_env(hf_home: Path, dreamsim_cache: Path | None = None) -> dict[str, str]:
    """Environment variables under which the project's loaders read the rehearsal models offline
    (set them before huggingface_hub is imported: it reads HF_HOME at import time)."""
    env = {"HF_HOME": str(Path(hf_home).resolve()), "HF_HUB_OFFLINE": "1"}
    if dreamsim_cache is not None:
        env["PRPG_DREAMSIM_CACHE"] = str(Path(dreamsim_cache).resolve())
    return env
