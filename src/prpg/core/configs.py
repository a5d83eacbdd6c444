"""Configs of the training steps, as pydantic dataclasses.

Each class is both the runtime config a function takes and the schema of its params.yaml block, so
a typo in params.yaml (or `dvc exp run -S`) fails at once naming the key. No torch import here:
`prpg params` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Literal

import re
from pathlib import Path

from pydantic import ConfigDict, Field, ValidationInfo, field_validator
from pydantic.dataclasses import dataclass

from prpg.core.models import PAPER_BACKBONES  # a plain dict: no torch import
from prpg.prompts import PROMPT_SETS, REFERENCE_PROMPT_FILES

# Constrained element types (a bad element names its index, e.g. pretrain.generator.vae_channels.1).
PosInt = Annotated[int, Field(ge=1)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
Beta = Annotated[float, Field(ge=0.0, lt=1.0)]

# Backbones the loaders (prpg.core.models.load_backbone) take: a paper name, the toybox encoder, a local timm folder,
# or a Hugging Face hub id `org/name[@revision]` (loaded as hf-hub:<id>, as the paper names are).
BACKBONE_NAMES = ("toybox", *PAPER_BACKBONES)
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*(@[\w./-]+)?")


def check_backbone(value: str, info: ValidationInfo | None = None) -> str:
    """A supported backbone name, an existing local folder (relative to the params file's folder when
    validated with context {"root": ...}, else the cwd) or a hub id; else a ValueError listing them."""
    root = Path((info.context or {}).get("root", ".")) if info is not None else Path(".")
    if value in BACKBONE_NAMES or (root / value).is_dir():
        return value
    looks_local = value.startswith((".", "/", "~", "models/")) or value.count("/") > 1
    if _HUB_ID.fullmatch(value) and not looks_local:
        return value
    what = f"local folder {value!r} does not exist" if looks_local else f"unknown backbone {value!r}"
    raise ValueError(f"{what}; use one of {', '.join(BACKBONE_NAMES)}, a local timm folder, "
                     "or a hub id org/name[@revision]")


def check_prompt_file(value: str, info: ValidationInfo | None = None) -> str:
    """A shipped prompt set or an existing JSON file (as prpg.prompts.prompt_path takes it)."""
    root = Path((info.context or {}).get("root", ".")) if info is not None else Path(".")
    if value in PROMPT_SETS or (root / value).is_file():
        return value
    if Path(value).name in {name for name, _ in REFERENCE_PROMPT_FILES.values()}:  # paper runs' input data
        raise ValueError(f"prompt file {value!r} not found: it is the paper's (the reference's GPT prompts); run "
                         f"`prpg data download prompts --dest {Path(value).parent}` (needs internet once)")
    raise ValueError(f"unknown prompt set {value!r} (no such file either); use one of {', '.join(PROMPT_SETS)} "
                     "or the path of a JSON file {category or instance: [sentences]}")


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class GeneratorConfig:
    resolution: int = Field(ge=8)
    vae_channels: tuple[PosInt, ...] = Field(min_length=1)  # 3 levels: 64 px -> 16x16 latents
    latent_channels: int = Field(ge=1)
    unet_channels: tuple[PosInt, ...] = Field(min_length=1)
    attention_head_dim: int = Field(ge=1)
    text_hidden: int = Field(ge=1)
    text_layers: int = Field(ge=1)
    text_heads: int = Field(ge=1)
    max_length: int = Field(ge=1)  # toybox captions are short; SD uses 77
    vae_steps: int = Field(ge=1)
    vae_batch: int = Field(ge=1)
    vae_crop: int | None = Field(gt=0)  # train on random crops of this size (None: whole images)
    vae_lr: float = Field(gt=0)
    vae_kl_weight: float = Field(ge=0)
    unet_steps: int = Field(ge=1)
    unet_batch: int = Field(ge=1)
    unet_lr: float = Field(gt=0)
    snr_gamma: float | None = Field(gt=0)  # min-SNR loss weighting (None: plain epsilon MSE)
    caption_dropout: float = Field(ge=0.0, le=1.0)
    # Share of training samples whose caption is replaced by the image's bare category prompt ("a photo of a
    # mug"): every toybox caption names a background, so without this the prompt the gates, the
    # DreamBooth class images and the negatives use is one the generator never saw (0: off).
    category_caption: float = Field(0.0, ge=0.0, le=1.0)
    # Diffusion-loss weight of the latents the object covers (from the pool masks), relative to background
    # (1: off). The objects cover 12% of the pixels on average; their shape is what tells a category apart, so a
    # small training budget is better spent there than on the background photos and textures.
    object_weight: float = Field(ge=1.0)
    # Where object_weight applies: "mask" (the object's pixels) or "box" (its mask box, filled): a tote's mask
    # leaves out the background seen through its handle arc, and the arc's shape is what tells a tote apart.
    object_region: Literal["mask", "box"]
    # Object close-ups: each training image gets one more view, a square crop around its object whose side is
    # f x the object box's longer side, f uniform in (lo, hi), with the image's caption (None: whole scenes
    # only). At 64 px a pool object spans ~5x5 latents, too few for its shape; SD's own "a photo of a mug"
    # samples show the object large, and real pool photos cropped so are recognised 0.80-0.88 vs 0.75 whole.
    object_zoom: tuple[float, float] | None
    ema_decay: float = Field(ge=0.0, le=1.0)

    def __post_init__(self) -> None:
        # the VAE halves the side at each level but the last, the UNet likewise on the latents
        factor = 2 ** (len(self.vae_channels) - 1) * 2 ** (len(self.unet_channels) - 1)
        if self.resolution % factor:
            raise ValueError(f"resolution {self.resolution} must be a multiple of {factor} (2 ** (levels - 1) of "
                             "vae_channels times that of unet_channels)")
        if self.text_hidden % self.text_heads:
            raise ValueError(f"text_hidden {self.text_hidden} must be a multiple of text_heads {self.text_heads}")

    @field_validator("object_zoom")
    @classmethod
    def _zoom_range(cls, v):
        if v is not None and not 1.0 <= v[0] <= v[1]:
            raise ValueError(f"object_zoom must be (lo, hi) with 1 <= lo <= hi (the crop's side over the object "
                             f"box's), got {v}")
        return v


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class EncoderConfig:
    image_size: int = Field(ge=1)  # 8x8 patch grid at 64 px; dense tasks run it at 128 px (16x16) with interpolated pos-embeds
    resize: int = Field(ge=1)  # DINOv2's 256 -> 224 ratio
    patch_size: int = Field(ge=1)
    embed_dim: int = Field(ge=1)
    depth: int = Field(ge=1)
    heads: int = Field(ge=1)
    steps: int = Field(ge=1)  # ViTs from scratch need many epochs (8000 x 32 plain CE: 0.58 val probe)
    batch: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    # Patch-level category loss ("token labeling"): 64 labels per image instead of 1 (0 turns it off).
    token_label_weight: float = Field(ge=0.0)
    # Shares of the training views (prpg.zoo.encoder.VIEWS): square object crop, tight mask box through
    # the eval transform (how the filter and the gates crop objects), whole scene.
    view_mix: tuple[Share, Share, Share]
    # Instances of a category differ in palette and pattern, categories in shape: inside the mask the
    # object gets another object's pattern or a flat colour, outside it another background, and the
    # channel order is shuffled. (Plain hue jitter kept the patterns: 84 % train accuracy on the pool,
    # a 0.52 probe on unseen instances.)
    texture_swap: float = Field(ge=0.0, le=1.0)
    background_swap: float = Field(ge=0.0, le=1.0)
    rotation: float = Field(ge=0.0, le=180.0)  # degrees either way (the pose split tilts objects)
    jitter: float = Field(ge=0.0, le=1.0)  # brightness and contrast
    grayscale: float = Field(ge=0.0, le=1.0)

    def __post_init__(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.resize < self.image_size:
            raise ValueError(f"resize {self.resize} must be >= image_size {self.image_size} (resize, then center-crop)")
        if self.embed_dim % self.heads:
            raise ValueError(f"embed_dim {self.embed_dim} must be a multiple of heads {self.heads}")
        if sum(self.view_mix) <= 0:
            raise ValueError(f"view_mix {self.view_mix}: at least one share must be > 0")


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class DreamBoothKeys:
    """The DreamBooth training keys of both the smoke gate and the personalize stage."""

    steps: int = Field(ge=1)
    lr: float = Field(gt=0)
    batch: int = Field(ge=1)
    prior_weight: float = Field(ge=0)
    train_text_encoder: bool
    identifier: str


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class GateDreamBoothConfig(DreamBoothKeys):
    """The DreamBooth smoke gate's keys (params.yaml `pretrain.dreambooth`); the gate fine-tunes the whole
    toybox generator at its native size (prpg.zoo.gates.dreambooth_smoke)."""

    max_grad_norm: float = Field(gt=0)


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class DreamBoothConfig(DreamBoothKeys):
    """Stage "personalize" (prpg.personalize): params.yaml's `personalize` group, plus internal options."""

    max_grad_norm: float = Field(1.0, gt=0)  # gradient clipping (the reference's default)
    mode: Literal["full", "lora"]  # lora: peft adapters on the attention projections only
    masked: bool  # instance loss weighted by the train mask on the latent grid
    lora_rank: int = Field(4, ge=1)
    lora_alpha: float = Field(4.0, gt=0)
    resolution: int | None = Field(ge=8, multiple_of=8)  # None: the generator's native size (SD 1.5: 512, toybox: 64)
    center_crop: bool = False  # the reference random-crops
    random_flip: bool = False  # the reference does not flip
    gradient_checkpointing: bool
    use_8bit_adam: bool  # bitsandbytes AdamW8bit; CUDA only, else torch AdamW
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"  # autocast; the reference trains in fp32
    # dtype of the saved fine-tuned weights. fp16 halves the disk (SD 1.5's UNet + text encoder: 3.9 GB
    # fp32, 2.0 GB fp16) and is what the reference generates with (it loads the DreamBooth pipeline in fp16).
    save_dtype: Literal["fp32", "fp16"]
    device: str = "cpu"  # cpu | cuda | cuda:N | auto


# ---- stage "synthesize" (prpg.synthesize) and "filter" (prpg.filter.filtering) ----
Scheduler = Literal["default", "ddim", "dpm++"]
NEGATIVE_PROMPT = "a photo of a {category}"
SAM = "facebook/sam-vit-huge"  # the SAM model PerSAM uses (filter and evaluate option `sam`)
DreamSimType = Literal["ensemble", "dino_vitb16", "clip_vitb32", "open_clip_vitb32"]


def check_prompt_source(file_key: str, file: str, source_key: str, source: str | None) -> None:
    """A prompt file's DVC dependency must hold it, or a changed file would not re-run the stage."""
    from prpg.prompts import SHIPPED_DIR, covers, prompt_file_path

    if source is not None and not covers(source, file):
        where = SHIPPED_DIR if file in PROMPT_SETS else str(Path(file).parent)
        raise ValueError(f"{file_key} {file!r} ({prompt_file_path(file)}) is not inside {source_key} {source!r}, "
                         f"the stage's DVC dependency: set {source_key} to {where} (its folder) or to the file")


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class SynthesizeConfig:
    n: int = Field(ge=1)  # positives per instance (file mode: ceil(n / 100) per scene prompt)
    prompt_mode: Literal["class", "file"]  # file: scene prompts from prompt_file
    prompt_file: str  # a shipped set (pods, df2, dogs, toybox) or a JSON path
    num_prompts: int | None = Field(ge=1)  # file mode: the first K scene prompts only (None: all)
    guidance: float = Field(ge=0)
    steps: int = Field(ge=1)
    scheduler: Scheduler = "default"  # default = the pipeline's own (PNDM for SD 1.5), as the reference
    batch: int = Field(ge=1)
    identifier: str = "<new1>"
    # The file or folder holding prompt_file, as a DVC dependency of the synthesize stage (dvc.yaml; as
    # common.data_source is of the data stage): a set name is not a path, so DVC is told where the file
    # is. src/prpg/prompts for the shipped sets, data/prompts for the downloaded reference files (paper
    # runs). None (runtime use outside the pipeline): not checked.
    prompt_source: str | None

    # A classmethod with a required `info`: pydantic passes the ValidationInfo (and so the params file's
    # folder, context "root") only to validators whose signature requires it; check_prompt_file's
    # optional `info` alone would get None and look the path up in the cwd.
    @field_validator("prompt_file")
    @classmethod
    def _prompt_file(cls, value: str, info: ValidationInfo) -> str:
        return check_prompt_file(value, info)

    def __post_init__(self) -> None:
        check_prompt_source("prompt_file", self.prompt_file, "prompt_source", self.prompt_source)


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class NegativesConfig:
    # ASSUMPTIONS, all three (docs/protocol.md §1.4): the reference has no negatives code; it only released
    # the images ({pods,dogs,df2}_negatives.zip), made by the frozen generator ("images of other objects in
    # the same semantic category"). Count, prompt and CFG are in no available source; the released zips
    # would settle the count. Paper runs use experiments/shared/paper.yaml's values (the count's reason there).
    n: int = Field(ge=1)
    prompt: str = NEGATIVE_PROMPT  # the DreamBooth class prompt "A photo of {sc}" (the frozen model's own view)
    guidance: float = Field(ge=0)
    steps: int = Field(ge=1)
    scheduler: Scheduler = "default"
    batch: int = Field(ge=1)


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class OracleConfig:
    """An oracle source (prpg.toybox.oracle, toybox only): `synthesize.oracle` renders the instance itself in
    new scenes (per instance), `priors.oracle_negatives` the category's pool instances (per category)."""

    n: int = Field(ge=0)  # images; 0: off (the stage writes the folder with no images)


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class ClassImagesConfig:
    """DreamBooth's prior-preservation images of a category (stage priors, params `priors.class_images`):
    "a photo of a <category>" from the frozen generator; personalize trains with all of them."""

    n: int = Field(ge=1)
    steps: int = Field(ge=1)  # sampler steps / CFG / batch
    guidance: float = Field(ge=0)
    batch: int = Field(ge=1)


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class BackgroundsConfig:
    """Generated cut-and-paste backgrounds (stage priors, params `priors.backgrounds`): the category's
    scene prompts with the subject removed ("A <new1> mug on a picnic table" -> "a photo of a picnic
    table"), from the frozen generator, shared per category like the negatives. Made only when
    `synthesize.cut_paste.backgrounds` is generated or both."""

    n: int = Field(ge=1)  # one per scene prompt, cycled
    prompt_file: str  # a shipped set or a JSON path, as synthesize.positives.prompt_file
    prompt_source: str | None  # its DVC dependency (the priors stage); see SynthesizeConfig
    guidance: float = Field(ge=0)
    steps: int = Field(ge=1)
    scheduler: Scheduler = "default"
    batch: int = Field(ge=1)

    @field_validator("prompt_file")
    @classmethod
    def _prompt_file(cls, value: str, info: ValidationInfo) -> str:  # with info: see SynthesizeConfig
        return check_prompt_file(value, info)

    def __post_init__(self) -> None:
        check_prompt_source("priors.backgrounds.prompt_file", self.prompt_file, "priors.backgrounds.prompt_source",
                            self.prompt_source)


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class CutPasteConfig:
    n: int = Field(ge=1)  # composites per instance (as many as DreamBooth positives)
    # Scale s ~ U(scale_min, scale_max): the pasted object's longer side (of its mask's tight box)
    # becomes s x the background's shorter side, aspect kept; s > 1 overflows and is clipped.
    scale_min: float = Field(0.3, gt=0)
    scale_max: float = Field(1.3, gt=0)
    # The paper released both variants without saying which its "Cut/Paste" row uses; "both"
    # alternates them (even files real, odd generated), "real" / "generated" reproduce one release.
    backgrounds: Literal["real", "generated", "both"]
    # Real backgrounds: TRAIN images of other instances, never test images (those are what the
    # evaluation scores). "other_categories" keeps the instance's own category out of the scene;
    # single-category datasets (DF2 shirts, Dogs) must use "other_instances".
    real_source: Literal["other_categories", "other_instances"]
    size: int = Field(ge=8)  # composites are size x size
    # (The generated backgrounds come from the priors stage: BackgroundsConfig.)

    def __post_init__(self) -> None:
        if self.scale_min > self.scale_max:
            raise ValueError(f"CutPasteConfig: scale_min {self.scale_min} > scale_max {self.scale_max}")


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class FilterConfig:
    model: Literal["dreamsim", "backbone"]
    # timm ViT (prpg.core.models.load_backbone name): the similarity model when model="backbone", and the
    # patch features that localize the object for "dense_otsu" / "persam".
    backbone: str
    dreamsim_type: DreamSimType = "ensemble"
    cache_dir: str | None = None  # DreamSim weights; None -> $PRPG_DREAMSIM_CACHE or ~/.cache/prpg/dreamsim
    threshold: float = Field(ge=-1.0, le=1.0)
    reduce: Literal["mean", "max"]
    localize: Literal["dense_otsu", "persam", "none"]
    sam: str = SAM  # hub id or local save_pretrained folder (persam only)
    persam_points: int = Field(2, ge=1)  # persam="simple" only; "reference" uses 5 spaced (DINOv2) or top-2
    # persam="reference": the reference's PerSAM (docs/protocol.md §2.3: spaced points, 2 learned mask
    # weights, 2 cascaded refinements; paper runs); "simple": top points, one SAM call, best-rated mask.
    persam: Literal["simple", "reference"]
    dense_resolution: int | None = Field(ge=1)  # patch-feature input side; None: the backbone's
    # How the localizing backbone sees an image: "sam_pad" = the reference (SAM processor: long side
    # resized, padded to a square); "squash" = resized to the square (the same on square toybox images).
    dense_input: Literal["squash", "sam_pad"]
    backbone_resize: Literal["squash", "eval"] = "squash"  # see prpg.filter.similarity.backbone_transform
    max_attempts: int = Field(ge=1)  # images looked at, localized or not (ref. max_image_count)
    keep_rejected: int | Literal["all"] = 15  # rejected images saved for inspection (reference: first 15)

    _backbone = field_validator("backbone")(check_backbone)

    def __post_init__(self):
        if isinstance(self.keep_rejected, int) and self.keep_rejected < 0:
            raise ValueError(f"keep_rejected must be >= 0 or 'all', got {self.keep_rejected}")


# ---- stage "train" (prpg.train.contrastive, prpg.train.triplets) ----
TrainLoss = Literal["info_nce", "multi_pos", "hinge"]
RefType = Literal["real", "synthetic", "both"]


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class TrainConfig:
    """Contrastive LoRA fine-tuning (docs/protocol.md §1.6-1.7)."""

    loss: TrainLoss  # reference info_nce_fixed; multi_pos; hinge (on embeddings, fixed)
    temperature: float = Field(gt=0)  # hard-coded in the reference
    margin: float = Field(0.05, ge=0)  # hinge only
    feature: Literal["cls+patch", "cls"]  # training embedding (reference patch_tokens=True)
    lora_r: int = Field(ge=1)
    lora_alpha: float = Field(gt=0)  # LoRA scaling alpha / r
    lora_dropout: float = Field(ge=0, lt=1)
    lr: float = Field(gt=0)
    betas: tuple[Beta, Beta] = (0.5, 0.999)
    weight_decay: float = Field(0.0, ge=0)
    batch: int = Field(ge=1)
    epochs: int = Field(ge=1)
    max_steps: int | None = Field(None, ge=1)  # optional cap on optimizer steps (all epochs)
    augment: bool = True  # flip, rotation +-10 deg, RandomResizedCrop(crop, 0.8-1.0) on normalized tensors
    ref_type: RefType  # anchor pool: the real train images, the synthetic positives, or both
    num_synthetic: int | None = Field(ge=1)  # positives kept after the seeded shuffle; None: all
    num_triplets: int = Field(ge=1)
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    # bf16 autocast of the forward pass on CUDA (ignored on CPU); the LoRA weights, the loss and Adam stay
    # fp32. Off by default and in paper runs: the reference trains in fp32 (Lightning's default). With
    # alpha / r = 1/32 the LoRA delta is 4e-5..3e-4 of the qkv weight (Frobenius) over the first 50 steps,
    # far below bf16's 2^-8 step; peft adds it on a separate path, so it survives, but bf16 rounding of
    # activations and gradients moved the 50-step deltas by 2.6 % (12 % after step 1; cosine 0.9997) on a
    # random-weight ViT-B/14, CPU autocast. An option for speed (2.6x on that CPU).
    bf16: bool
    num_workers: int = Field(0, ge=0)


# ---- stage "evaluate" (prpg.evaluate) ----
EvalTask = Literal["classification", "retrieval", "dense"]  # dense = detection + segmentation


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class EvalConfig:
    tasks: tuple[EvalTask, ...] = ("classification", "retrieval", "dense")
    # Global feature of both models. The paper evaluates on the CLS token although it trains on
    # concat(CLS, mean patch) (docs/protocol.md §2.0, §5.10); "cls+patch" evaluates what was trained.
    eval_feature: Literal["cls", "cls+patch"]
    top_k: int = Field(ge=1)  # retrieval top-k accuracy, reported as retrieval_top{k}
    # Dense path: long side resized to dense_grid x patch_size px, padded to a square. The paper uses a
    # 64x64 grid (896 px for /14, 1024 px for /16); 16 suits toybox (16 x 8 px = its native 128 px).
    dense_grid: int = Field(ge=1)
    dense_mode: Literal["threshold", "persam"]  # persam needs the `sam` weights
    target_images: Literal["first", "all"]  # the paper: the first train image's mask only
    # reference: boxes ignore the padding (docs/protocol.md §5.16)
    box_geometry: Literal["fixed", "reference"]
    min_object_size: int | None = Field(None, ge=1)  # None: 100 px per 1024x1024 px of image (the paper's 100)
    sam: str = SAM  # hub id or local save_pretrained folder (persam only)
    persam_points: int = Field(2, ge=1)
    batch: int = Field(32, ge=1)
    device: str = "cpu"
    # Models (keys of evaluate_instance's `models`) whose features are cached under cache_dir: the
    # pretrained backbone is the same for every instance; a personalized one would only fill the disk.
    cache_models: tuple[str, ...] = ("pretrained",)
    # "reference": the reference implementation's evaluation (paper runs; prpg.evaluate.protocol lists
    # each rule: filled largest-contour seg GT, box of all cleaned foreground, centre-in-box cells, ImageNet
    # stats for CLIP's dense input, mean MAE target, projected 512-d pretrained CLIP, un-antialiased
    # position-embedding resampling). "fixed": ours, where those differ (toybox default).
    protocol: Literal["fixed", "reference"]
