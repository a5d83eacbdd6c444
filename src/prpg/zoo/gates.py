"""Quality gates for the toybox models: measured, written into the model cards, asserted in tests.

- encoder: category linear probe (trained on pool images) on the val instances' images;
  instance retrieval mAP on the test instances (the "pretrained" baseline; must leave headroom);
- generator: samples of "a photo of a {category}" classified by that probe;
- DreamBooth smoke: a short DreamBooth on one instance's 3 train images moves its samples toward
  that instance's test images relative to its category mates' (encoder cosine), before vs after.
"""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from prpg.data import Dataset, load_image, load_mask, mask_to_box
from prpg.zoo.encoder import embed
from prpg.zoo.generator import CATEGORY_PROMPT, sample


def load_images(records, resolution: int | None = None) -> list:
    """PIL images; with `resolution`, area-downsampled to the generator's size so real and generated
    images are compared at the same level of detail (the encoder's transform upsamples both alike)."""
    from PIL import Image

    images = [load_image(r.path) for r in records]
    return images if resolution is None else [im.resize((resolution, resolution), Image.BOX) for im in images]


def object_crops(records) -> list:
    """Each image cropped to its mask's box: the object, as the filter's real crops
    (docs/protocol.md §1.3)."""
    return [im.crop(mask_to_box(load_mask(r.mask_path))) for im, r in zip(load_images(records), records, strict=True)]


def usual_pose(records) -> list:
    """The records in the usual poses: PODS's train images and its in_distribution test split (not `pose`,
    nor the `distractors` splits)."""
    return [r for r in records if r.split == "train" or r.test_split == "in_distribution"]


def fit_category_probe(features: torch.Tensor, categories: list[str]) -> LogisticRegression:
    return LogisticRegression(max_iter=3000, C=1.0).fit(features.numpy(), categories)


def category_probe_accuracy(probe: LogisticRegression, features: torch.Tensor, categories: list[str]) -> float:
    return float((probe.predict(features.numpy()) == np.asarray(categories)).mean())


def retrieval_map(query: torch.Tensor, query_labels: list[str], gallery: torch.Tensor, gallery_labels: list[str]) -> float:
    """Mean over queries of the average precision of the cosine ranking of the gallery."""
    sims = (query @ gallery.T).numpy()
    g = np.asarray(gallery_labels)
    aps = [average_precision_score(g == q, s) for q, s in zip(query_labels, sims, strict=True) if (g == q).any()]
    return float(np.mean(aps))


def instance_retrieval(encoder, transform, ds: Dataset, split: str = "test") -> float:
    """Queries: test images of the `split` instances; gallery: train images of all instances
    (docs/protocol.md §2.2)."""
    gallery_recs = ds.images("train")
    query_recs = [r for i in ds.instances_in(split=split) for r in ds.images("test", i.name)]
    gallery = embed(encoder, load_images(gallery_recs), transform)
    query = embed(encoder, load_images(query_recs), transform)
    return retrieval_map(query, [r.instance for r in query_recs], gallery, [r.instance for r in gallery_recs])


def generator_category_accuracy(pipe, encoder, transform, probe, categories: list[str], per_category: int,
                                seed: int, steps: int = 50, guidance: float = 5.0) -> tuple[float, dict, list]:
    prompts = [CATEGORY_PROMPT.format(category=c) for c in categories for _ in range(per_category)]
    truth = [c for c in categories for _ in range(per_category)]
    images = sample(pipe, prompts, seed=seed, steps=steps, guidance=guidance)
    pred = probe.predict(embed(encoder, images, transform).numpy())
    per_cat = {c: float(np.mean([p == c for p, t in zip(pred, truth, strict=True) if t == c])) for c in categories}
    return float(np.mean(pred == np.asarray(truth))), per_cat, images


def instance_margin(features: torch.Tensor, own: torch.Tensor, mates: torch.Tensor) -> float:
    """Mean cosine to the instance's own test images minus mean cosine to its category mates' test images."""
    return float((features @ own.T).mean() - (features @ mates.T).mean())


def dreambooth_smoke(pipe, encoder, transform, ds: Dataset, instance: str, cfg, seed: int, n_samples: int = 16,
                     n_class_images: int = 32, steps: int = 50, guidance: float = 5.0) -> dict:
    """Before/after DreamBooth margin for one instance (the generator itself is not modified); `cfg`: the
    gate's training keys (GateDreamBoothConfig), run as a full, unmasked fine-tune at the native size."""
    from prpg.core.configs import DreamBoothConfig
    from prpg.personalize import CLASS_PROMPT, INSTANCE_PROMPT, dreambooth

    cfg = DreamBoothConfig(**dataclasses.asdict(cfg), mode="full", masked=False, resolution=None,
                           gradient_checkpointing=False, use_8bit_adam=False, save_dtype="fp32")

    inst = ds.instance(instance)
    mates = [i.name for i in ds.instances_in(category=inst.category) if i.name != instance]
    res = pipe.unet.config.sample_size * pipe.vae_scale_factor
    own = embed(encoder, load_images(ds.images("test", instance), res), transform)
    mate_feats = embed(encoder, load_images([r for m in mates for r in ds.images("test", m)], res), transform)
    prompt = INSTANCE_PROMPT.format(identifier=cfg.identifier, category=inst.category)

    tuned = copy.deepcopy(pipe)
    before = embed(encoder, sample(tuned, [prompt] * n_samples, seed=seed, steps=steps, guidance=guidance), transform)
    class_images = sample(tuned, [CLASS_PROMPT.format(category=inst.category)] * n_class_images, seed=seed + 1,
                          steps=steps, guidance=guidance)
    losses = dreambooth(tuned, load_images(ds.images("train", instance)), class_images, inst.category, cfg, seed)
    after_images = sample(tuned, [prompt] * n_samples, seed=seed, steps=steps, guidance=guidance)
    after = embed(encoder, after_images, transform)
    return {
        "instance": instance,
        "margin_before": instance_margin(before, own, mate_feats),
        "margin_after": instance_margin(after, own, mate_feats),
        "cos_own_before": float((before @ own.T).mean()),
        "cos_own_after": float((after @ own.T).mean()),
        "final_loss": float(np.mean(losses[-20:])),
        "samples_after": after_images,
    }
