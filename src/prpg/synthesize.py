"""Stage "synthesize": synthetic positives, shared negatives and cut-and-paste composites.

Positives (docs/protocol.md §1.2) come from the personalized generator, with either
  - the vanilla class prompt "photo of a <new1> {category}" (the reference's wording): exactly n
    images (the reference makes int(n / batch) * batch), or
  - a prompt file of 100 scene sentences per category: every sentence is sampled ceil(n / 100)
    times, so n = 450 gives 500 images, as in the reference (triplet sampling keeps 450 of them).
Negatives (docs/protocol.md §1.4, no reference code) come from the FROZEN generator with "a photo of a
{category}", once per category, shared by every instance of it.
Cut-and-paste (docs/protocol.md §1.5, no reference code) pastes the instance, cut from its real train images
with its mask, at a random scale and position onto real or generated backgrounds; no harmonization.

Reproducibility: every image has its own seed, derived from (run seed, what is made, for whom)
and recorded in prompts.csv, and its own torch generator, so its initial noise depends only on its
seed (not on its batch; the batch size can still move a pixel by one level through float rounding,
so same seed + same config = identical files). Generators live on the CPU: the same noise on any
device.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass as plain_dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass
from tqdm.auto import tqdm

from prpg import prompts as prompt_files
from prpg.core.atomic import atomic_dir
from prpg.data.names import contained
from prpg.core.configs import BackgroundsConfig, CutPasteConfig, NEGATIVE_PROMPT, NegativesConfig, Scheduler, SynthesizeConfig  # noqa: F401 (re-exported)
from prpg.core.paths import ensure_not_under_data

VANILLA_PROMPT = "photo of a {identifier} {category}"  # the reference's generation prompt
PROMPTS_CSV = "prompts.csv"
RECORD_JSON = "generation.json"  # what a shared folder was made with; reused only on an exact match
PASTES_CSV = "pastes.csv"


# ----------------------------------------------------------------------------- sampling


def image_seeds(seed: int, tag: str, n: int) -> list[int]:
    """n per-image seeds for `tag` (e.g. "positives/mug_03"): independent across tags, prefix-stable in n."""
    return [int(s) for s in np.random.SeedSequence([seed, zlib.crc32(tag.encode())]).generate_state(n)]


def make_scheduler(name: Scheduler, config):
    """A sampler built from the pipeline's scheduler config (same betas), by name."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpm++":
        return DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++", solver_order=2)
    raise ValueError(f"unknown scheduler '{name}': use default, ddim or dpm++")


@contextlib.contextmanager
def scheduler_swapped(pipe, name: Scheduler) -> Iterator[None]:
    """Sample with another scheduler, leaving the caller's pipeline as it was."""
    if name == "default":
        yield
        return
    original = pipe.scheduler
    pipe.scheduler = make_scheduler(name, original.config)
    try:
        yield
    finally:
        pipe.scheduler = original


def _resolution(pipe) -> int:
    return pipe.unet.config.sample_size * pipe.vae_scale_factor


def generate_images(pipe, prompts: Sequence[str], seeds: Sequence[int], out_dir: Path, *,
                    guidance: float, steps: int, scheduler: Scheduler = "default", batch: int = 4,
                    desc: str = "generate", record: dict | None = None) -> Path:
    """Write NNNN.png for each (prompt, seed) + prompts.csv (+ generation.json) atomically into out_dir."""
    import torch

    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    out_dir = Path(out_dir)
    ensure_not_under_data(out_dir)
    res = _resolution(pipe)
    width = max(4, len(str(len(prompts) - 1)))
    rows = []
    with atomic_dir(out_dir) as tmp, scheduler_swapped(pipe, scheduler), torch.no_grad():
        for start in tqdm(range(0, len(prompts), batch), desc=desc, mininterval=5):
            chunk_prompts = list(prompts[start : start + batch])
            chunk_seeds = list(seeds[start : start + batch])
            generators = [torch.Generator("cpu").manual_seed(s) for s in chunk_seeds]
            images = pipe(chunk_prompts, num_inference_steps=steps, guidance_scale=guidance,
                          generator=generators, height=res, width=res).images
            for k, (image, prompt, s) in enumerate(zip(images, chunk_prompts, chunk_seeds, strict=True)):
                name = f"{start + k:0{width}d}.png"
                image.save(tmp / name)
                rows.append((name, prompt, s))
        with open(tmp / PROMPTS_CSV, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["file", "prompt", "seed"])
            writer.writerows(rows)
        if record is not None:
            (tmp / RECORD_JSON).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return out_dir


# ----------------------------------------------------------------------------- positives


def synthesis_prompts(cfg: SynthesizeConfig, instance: str, category: str) -> list[str]:
    """The prompt of every image, in file order (prompt-major in file mode)."""
    if cfg.prompt_mode == "class":
        return [prompt_files.fill(VANILLA_PROMPT, cfg.identifier, category)] * cfg.n
    table = prompt_files.load_prompts(cfg.prompt_file)
    sentences = prompt_files.prompts_for(table, instance=instance, category=category, source=cfg.prompt_file)
    sentences = sentences[: cfg.num_prompts]
    repeats = math.ceil(cfg.n / len(sentences))  # reference: ceil(n / 100) images per prompt
    return [prompt_files.fill(s, cfg.identifier, category) for s in sentences for _ in range(repeats)]


def synthesize(pipe, instance: str, category: str, out_dir: Path, cfg: SynthesizeConfig, seed: int) -> Path:
    """Positives of `instance` from its personalized pipeline into out_dir (NNNN.png + prompts.csv)."""
    prompts = synthesis_prompts(cfg, instance, category)
    record = {"kind": "positives", "instance": instance, "category": category, "seed": seed,
              "config": asdict(cfg)}
    return generate_images(pipe, prompts, image_seeds(seed, f"positives/{instance}", len(prompts)), out_dir,
                           guidance=cfg.guidance, steps=cfg.steps, scheduler=cfg.scheduler, batch=cfg.batch,
                           desc=f"positives {instance}", record=record)


def sample_stream(pipe, cfg: SynthesizeConfig, instance: str, category: str, seed: int,
                  tag: str = "more") -> Iterator[Image.Image]:
    """Endless positives (the prompts cycled, fresh per-image seeds), for a filter that runs out of
    synthesized images before it has kept enough; the filter's attempt cap bounds it."""
    import torch

    prompts = synthesis_prompts(cfg, instance, category)
    res = _resolution(pipe)
    start = 0
    while True:
        chunk = [prompts[(start + k) % len(prompts)] for k in range(cfg.batch)]
        seeds = image_seeds(seed, f"{tag}/{instance}", start + cfg.batch)[start:]
        with scheduler_swapped(pipe, cfg.scheduler), torch.no_grad():
            images = pipe(chunk, num_inference_steps=cfg.steps, guidance_scale=cfg.guidance, height=res, width=res,
                          generator=[torch.Generator("cpu").manual_seed(s) for s in seeds]).images
        yield from images
        start += cfg.batch


# ----------------------------------------------------------------------------- shared per category


def _is_complete(folder: Path, record: dict, n: int) -> bool:
    """The folder was made with exactly `record` and all its n images are present."""
    try:
        if json.loads((folder / RECORD_JSON).read_text()) != record:
            return False
        with open(folder / PROMPTS_CSV, newline="") as f:
            files = [row["file"] for row in csv.DictReader(f)]
    except (OSError, ValueError, KeyError):
        return False
    return len(files) == n and all((folder / name).is_file() for name in files)


def _shared(pipe, kind: str, category: str, prompts: list[str], folder: Path, seed: int,
            settings: dict) -> Path:
    """Generate once per category; a later instance of the category reuses the folder as is, when it
    was made with this record: every setting, and the generator's weights (a fingerprint, as the class
    images are keyed), not only its name, which a fine-tuned or regenerated model keeps."""
    from prpg.priors import generator_fingerprint  # here: this module stays torch-free at import

    record = {"kind": kind, "category": category, "seed": seed, "prompts": prompts,
              "generator": str(getattr(pipe, "name_or_path", None) or ""),
              "generator_weights": generator_fingerprint(pipe), "resolution": _resolution(pipe), **settings}
    if _is_complete(folder, record, len(prompts)):
        return folder
    seeds = image_seeds(seed, f"{kind}/{category}", len(prompts))
    return generate_images(pipe, prompts, seeds, folder, guidance=settings["guidance"], steps=settings["steps"],
                           scheduler=settings["scheduler"], batch=settings["batch"], desc=f"{kind} {category}",
                           record=record)


def generate_negatives(frozen_pipe, category: str, negatives_root: Path, cfg: NegativesConfig,
                       seed: int) -> Path:
    """negatives_root/<category>/NNNN.png from the frozen generator; reused when already complete."""
    prompts = [cfg.prompt.replace("{category}", category)] * cfg.n
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("n", "prompt")}
    folder = Path(negatives_root) / category
    return _shared(frozen_pipe, "negatives", category, prompts, folder, seed, settings)


# ----------------------------------------------------------------------------- backgrounds

# "A photo of a", "A close-up of my", "An", ...: the words that can lead up to the subject.
_LEAD_IN = (r"(?:(?:a|an|the)\s+)?(?:(?:photo|picture|close-up|closeup|snapshot|shot|image)\s+of\s+)?"
            r"(?:a|an|the|my|your)?\s*")
_DETERMINERS = {"a", "an", "the", "some", "two", "three", "its", "his", "her", "their", "my", "your", "our",
                "this", "that", "these", "those", "several"}
_PREPOSITIONS = {"on", "in", "at", "near", "by", "under", "beside", "next", "to", "of", "with", "against",
                 "inside", "front", "behind", "among", "over", "atop", "onto", "into"}


def background_prompt(sentence: str, identifier: str) -> str:
    """A filled scene sentence with its subject removed: "A <new1> mug filled with tea on a picnic
    table" -> "a photo of a picnic table". The subject is the identifier and the word after it (our
    category, or the reference's own word: "<new1> bag"). Only the first clause is kept (later ones
    describe the object: pose, distractors), and the words between the subject and the first
    determiner (what the object does) go with the subject; a subject inside the sentence is cut out."""
    subject = re.escape(identifier) + r"(?:\s+[\w-]+)?"
    lead = re.match(_LEAD_IN + subject, sentence, flags=re.IGNORECASE)
    if lead:
        words = sentence[lead.end():].strip(" ,.;:").split(",")[0].split()
        first = next((i for i, w in enumerate(words) if w.lower() in _DETERMINERS), None)
        if first is None:  # "on gravel": no determiner, drop the leading prepositions only
            first = next((i for i, w in enumerate(words) if w.lower() not in _PREPOSITIONS), len(words))
        scene = " ".join(words[first:])
    else:
        scene = re.sub(r"(?:\b(?:a|an|the|my|your)\s+)?" + subject, " ", sentence, flags=re.IGNORECASE)
        scene = re.sub(r"\s+", " ", scene).strip(" ,.;:")
    scene = scene.rstrip(".")
    if not scene:
        raise ValueError(f"no scene left in {sentence!r} once its subject '{identifier} ...' is removed")
    return scene if scene.lower().startswith("a photo of") else f"a photo of {scene}"


def generate_backgrounds(frozen_pipe, category: str, backgrounds_root: Path, cfg: BackgroundsConfig,
                         seed: int, instances: Sequence[str] = ()) -> Path:
    """backgrounds_root/<category>/NNNN.png: scene prompts without their subject, cycled to n.
    `instances` (the category's instances in the dataset) select the lists of an instance-keyed
    (reference) prompt file; a category-keyed file is used as it is."""
    table = prompt_files.load_prompts(cfg.prompt_file)
    sentences = prompt_files.category_prompts(table, category=category, instances=instances,
                                              source=cfg.prompt_file)
    # The subject is removed from the FILLED sentence so reference files (literal "<new1> bag") work too.
    ident = "<new1>"
    scenes = [background_prompt(prompt_files.fill(s, ident, category), ident) for s in sentences]
    prompts = [scenes[i % len(scenes)] for i in range(cfg.n)]
    settings = {k: getattr(cfg, k) for k in ("guidance", "steps", "scheduler", "batch")}
    folder = Path(backgrounds_root) / category
    contained(backgrounds_root, category, "category")  # it may come from a dataset's class_to_sc
    return _shared(frozen_pipe, "backgrounds", category, prompts, folder, seed, settings)


def category_backgrounds(frozen_pipe, category: str, backgrounds_root: str | Path, cfg: BackgroundsConfig,
                         mode: str, seed: int, instances: Sequence[str] = ()) -> list[Path]:
    """The category's generated backgrounds (generate_backgrounds) when cut-and-paste uses them (`mode`,
    synthesize.cut_paste.backgrounds: generated or both); otherwise none, and an empty
    backgrounds_root/<category>/, which the priors stage's DVC output needs to exist."""
    if mode in ("generated", "both"):
        folder = generate_backgrounds(frozen_pipe, category, Path(backgrounds_root), cfg, seed=seed, instances=instances)
        return sorted(folder.glob("*.png"))
    with atomic_dir(Path(backgrounds_root) / category):
        pass
    return []


def real_background_paths(ds, instance: str, source: str = "other_categories") -> list[Path]:
    """Train images of other instances (of other categories, by default): real scenes without `instance`."""
    category = ds.instance(instance).category
    if source == "other_categories":
        others = [i for i in ds.instances if i.category != category]
    elif source == "other_instances":
        others = [i for i in ds.instances if i.name != instance]
    else:
        raise ValueError(f"unknown real_source '{source}': use other_categories or other_instances")
    paths = [r.path for o in others for r in ds.images("train", o.name)]
    if not paths:
        single = source == "other_categories"
        hint = " (a single-category dataset: use real_source: other_instances)" if single else ""
        raise ValueError(f"{ds.root}: no train images of {source.replace('_', ' ')} to use as backgrounds"
                         + hint)
    return paths


# ----------------------------------------------------------------------------- cut and paste


@plain_dataclass(frozen=True)
class Cutout:
    """The object cut from a real photo: colours and 0/1 alpha over its mask's tight box."""

    rgb: np.ndarray  # float32 (h, w, 3)
    alpha: np.ndarray  # float32 (h, w)
    source: str


def cut_out(image: Image.Image, mask: np.ndarray, source: str = "") -> Cutout:
    from prpg.data import mask_to_box

    box = mask_to_box(mask)
    if box is None:
        raise ValueError(f"{source or 'mask'}: empty mask, nothing to cut out")
    if mask.shape != (image.height, image.width):
        raise ValueError(f"{source}: mask {mask.shape[::-1]} and image {image.size} differ in size")
    x0, y0, x1, y1 = box
    rgb = np.asarray(image.convert("RGB"), np.float32)[y0:y1, x0:x1]
    return Cutout(rgb, mask[y0:y1, x0:x1].astype(np.float32), source)


def _resize_float(a: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # PIL's bilinear widens its kernel when shrinking: antialiased, with non-negative weights.
    return np.asarray(Image.fromarray(a, "F").resize(size, Image.Resampling.BILINEAR))


def resize_cutout(cut: Cutout, long_side: int) -> tuple[np.ndarray, np.ndarray]:
    """(rgb float32, hard mask) with the longer side = long_side. Colours are resized premultiplied by
    alpha, so the photo's own background never bleeds into the object's edge pixels."""
    h, w = cut.alpha.shape
    k = long_side / max(h, w)
    size = (max(1, round(w * k)), max(1, round(h * k)))
    alpha = _resize_float(cut.alpha, size)
    premult = np.stack([_resize_float(cut.rgb[..., c] * cut.alpha, size) for c in range(3)], axis=-1)
    mask = alpha >= 0.5
    rgb = np.where(mask[..., None], premult / np.maximum(alpha, 1e-6)[..., None], 0.0)
    return np.clip(rgb, 0, 255), mask


def paste(background: np.ndarray, cut: Cutout, scale: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, dict]:
    """Paste `cut` with its longer side = scale x the background's shorter side, at a random place.

    Position: the object's top-left corner is uniform over the placements that keep it inside the
    background, per axis; along an axis where it is larger than the background it is uniform over the
    placements that cover the background, so it crosses the border only when it must. Pixels outside
    are clipped; the returned mask is exactly the pasted pixels that are visible.
    """
    height, width = background.shape[:2]
    long_side = max(1, round(scale * min(height, width)))
    rgb, obj = resize_cutout(cut, long_side)
    h, w = obj.shape
    x0 = int(rng.integers(min(0, width - w), max(0, width - w) + 1))
    y0 = int(rng.integers(min(0, height - h), max(0, height - h) + 1))
    # The visible window of the object, in image and object coordinates.
    ix0, iy0, ix1, iy1 = max(0, x0), max(0, y0), min(width, x0 + w), min(height, y0 + h)
    window = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
    local = obj[window]
    out = background.copy()
    out[iy0:iy1, ix0:ix1][local] = np.round(rgb[window][local]).astype(np.uint8)
    mask = np.zeros((height, width), bool)
    mask[iy0:iy1, ix0:ix1] = local
    info = {"scale": round(scale, 4), "x": x0, "y": y0, "width": w, "height": h,
            "visible": round(float(mask.sum() / max(1, obj.sum())), 4)}
    return out, mask, info


def prepare_background(image: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random full-height (or full-width) square crop, resized to size x size, uint8."""
    w, h = image.size
    side = min(w, h)
    x0, y0 = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    box = (x0, y0, x0 + side, y0 + side)
    return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS, box=box), np.uint8)


def compose_cut_and_paste(cutouts: Sequence[Cutout], real: Sequence[Path], generated: Sequence[Path],
                          out_dir: Path, cfg: CutPasteConfig, seed: int, tag: str = "") -> Path:
    """out_dir/NNNN.png + pastes.csv, and the masks in out_dir's sibling `<name>_masks/NNNN.png`."""
    from prpg.data import load_image

    pools = {"real": list(real), "generated": list(generated)}
    kinds = {"real": ["real"], "generated": ["generated"], "both": ["real", "generated"]}[cfg.backgrounds]
    for kind in kinds:
        if not pools[kind]:
            raise ValueError(f"cut_and_paste with backgrounds '{cfg.backgrounds}' needs {kind} backgrounds; "
                             "none given")
    if not cutouts:
        raise ValueError("cut_and_paste needs at least one cut-out of the instance")
    out_dir = Path(out_dir)
    masks_dir = out_dir.parent / f"{out_dir.name}_masks"
    ensure_not_under_data(out_dir)
    rng = np.random.default_rng([seed, zlib.crc32(f"cut_and_paste/{tag}".encode())])
    width = max(4, len(str(cfg.n - 1)))
    rows = []
    with atomic_dir(masks_dir) as tmp_masks, atomic_dir(out_dir) as tmp:
        for i in tqdm(range(cfg.n), desc=f"cut_and_paste {tag}", mininterval=5):
            kind = kinds[i % len(kinds)]
            bg_path = pools[kind][int(rng.integers(len(pools[kind])))]
            cut = cutouts[int(rng.integers(len(cutouts)))]
            background = prepare_background(load_image(bg_path), cfg.size, rng)
            scale = float(rng.uniform(cfg.scale_min, cfg.scale_max))
            image, mask, info = paste(background, cut, scale, rng)
            name = f"{i:0{width}d}.png"
            Image.fromarray(image).save(tmp / name)
            Image.fromarray(mask.astype(np.uint8) * 255, "L").save(tmp_masks / name)
            rows.append({"file": name, "background": str(bg_path), "background_kind": kind,
                         "source": cut.source, **info})
        with open(tmp / PASTES_CSV, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    return out_dir


def instance_cutouts(ds, instance: str) -> list[Cutout]:
    """One cut-out per real train image of the instance (its mask is required)."""
    from prpg.data import load_image, load_mask

    cutouts = []
    for record in ds.images("train", instance):
        if record.mask_path is None:
            raise ValueError(f"{record.path}: no train mask (train_masks/{instance}/<same stem>); "
                             "cut-and-paste needs one")
        cutouts.append(cut_out(load_image(record.path), load_mask(record.mask_path), str(record.path)))
    if not cutouts:
        raise ValueError(f"{ds.root}: instance '{instance}' has no train images")
    return cutouts


def cut_and_paste(ds, instance: str, out_dir: Path, cfg: CutPasteConfig, seed: int, *,
                  generated_backgrounds: Sequence[Path] = ()) -> Path:
    """Composites of `instance` into out_dir (+ out_dir's `_masks` sibling), on real backgrounds (train
    photos of other instances) and/or `generated_backgrounds`, the category's from the priors stage
    (category_backgrounds)."""
    real = real_background_paths(ds, instance, cfg.real_source) if cfg.backgrounds in ("real", "both") else []
    generated = list(generated_backgrounds) if cfg.backgrounds in ("generated", "both") else []
    if cfg.backgrounds in ("generated", "both") and not generated:
        raise ValueError(f"synthesize.cut_paste.backgrounds is '{cfg.backgrounds}' but no generated backgrounds were "
                         "given: the priors stage makes them (priors.backgrounds), run it first")
    cutouts = instance_cutouts(ds, instance)
    return compose_cut_and_paste(cutouts, real, generated, out_dir, cfg, seed, tag=instance)
