# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 00 · Pretrain the toybox model zoo
#
# No pretrained generator or encoder can be downloaded in the embedded setting, so this project
# trains its own small stand-ins on the toybox **pool** (instances never used in evaluation):
#
# - **generator** — Stable Diffusion 1.5's architecture (CLIP tokenizer + text encoder, AutoencoderKL,
#   conditional UNet, PNDM), shrunk to 64 px, trained from scratch on pool images and their captions;
# - **encoder** — a tiny ViT of the DINOv2 architecture (timm), category-supervised on pool images.
#   On toybox it also serves as the similarity model for filtering (the role DreamSim plays for SD).
#
# The results ship in `models/toybox/` with model cards. This stage is **frozen** in `dvc.yaml` (the
# default `dvc repro` does not retrain); regenerate with
# `dvc unfreeze pretrain_toybox && dvc repro pretrain_toybox && dvc freeze pretrain_toybox`
# (about 45 minutes on 2 CPU cores; a GPU is not needed).

# %% tags=["parameters"]
common = {"seed": 0, "device": "cpu", "dataset": "toybox", "data_root": "outputs/data/toybox", "data_source": "src/prpg/toybox"}
pretrain = {}

# %%
import json
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from prpg.paths import chdir_repo_root

chdir_repo_root()

from prpg.atomic import atomic_dir, write_json_atomic  # noqa: E402
from prpg.data import load_dataset  # noqa: E402
from prpg.models import TOYBOX_DIR, load_backbone, load_generator  # noqa: E402
from prpg.params import parse_group  # noqa: E402
from prpg.zoo import gates  # noqa: E402
from prpg.zoo.card import write_card  # noqa: E402
from prpg.zoo.encoder import eval_transform, pretrain_encoder  # noqa: E402
from prpg.zoo.generator import pretrain_generator  # noqa: E402

common_p = parse_group("common", common)
p = parse_group("pretrain", pretrain)
pool = load_dataset("outputs/data/toybox_pool")
world = load_dataset("outputs/data/toybox")
print(f"pool: {len(pool.instances)} instances; evaluation world: {len(world.instances)} instances")

# %% [markdown]
# ## Training data: every pool image with its caption
# Captions come from the scene facts the toybox renderer recorded ("a photo of a mug on a wooden
# table, tilted, with other mugs"), so the text encoder learns words that mean something in pixels.

# %%
pool_records = [r for split in ("train", "test") for r in pool.images(split)]
pool_images = gates.load_images(pool_records)
captions = [pool.annotation(r)["caption"] for r in pool_records]
categories = [pool.instance(r.instance).category for r in pool_records]
cat_names = sorted(set(categories))
print(len(pool_images), "images;", captions[0], "|", captions[-1])

# %% [markdown]
# ## Train (written atomically: models/toybox is replaced only when everything succeeded)

# %%
t_start, cpu_start = time.perf_counter(), time.process_time()
with atomic_dir(TOYBOX_DIR) as out, tempfile.TemporaryDirectory() as work:
    enc_stats = pretrain_encoder(pool_images, [cat_names.index(c) for c in categories], len(cat_names),
                                 out / "encoder", p.encoder, seed=common_p.seed)
    gen_stats = pretrain_generator(pool_images, captions, out / "generator", p.generator, seed=common_p.seed,
                                   work_dir=Path(work))

    # ## Gates, on the saved models loaded back through the public loading layer
    encoder = load_backbone(out / "encoder")
    tf = eval_transform(p.encoder)
    pipe = load_generator(out / "generator")
    probe = gates.fit_category_probe(gates.embed(encoder, pool_images, tf), categories)
    val_recs = [r for i in world.instances_in(split="val") for s in ("train", "test") for r in world.images(s, i.name)]
    probe_acc = gates.category_probe_accuracy(probe, gates.embed(encoder, gates.load_images(val_recs), tf),
                                              [world.instance(r.instance).category for r in val_recs])
    retrieval = gates.instance_retrieval(encoder, tf, world, split="test")
    g = p.gates
    # The generator's samples are judged by a probe fit on real pool images at the generator's resolution.
    low_res_probe = gates.fit_category_probe(
        gates.embed(encoder, gates.load_images(pool_records, p.generator.resolution), tf), categories)
    gen_acc, gen_per_cat, samples = gates.generator_category_accuracy(
        pipe, encoder, tf, low_res_probe, cat_names, g.samples_per_category, seed=common_p.seed, steps=g.sample_steps,
        guidance=g.guidance)
    db = gates.dreambooth_smoke(pipe, encoder, tf, world, g.dreambooth_instance, p.dreambooth, seed=common_p.seed,
                                n_samples=g.dreambooth_samples, n_class_images=g.dreambooth_class_images,
                                steps=g.sample_steps, guidance=g.guidance)
    total_s, total_cpu_s = time.perf_counter() - t_start, time.process_time() - cpu_start

    regen = ("`dvc unfreeze pretrain_toybox && dvc repro pretrain_toybox && dvc freeze pretrain_toybox` "
             "(notebook `notebooks/00_pretrain_toybox.py`, params group `pretrain`).")
    write_card(out / "encoder", "Toybox encoder (DINOv2 stand-in)",
               "A tiny ViT of timm's DINOv2 architecture. Load with `prpg.models.load_backbone('toybox')`. "
               "Category-supervised on the toybox pool; it knows categories, not instances.",
               {"architecture": "timm vit_small_patch14_dinov2 class, resized (see config.json)",
                "data": f"toybox pool: {len(pool_images)} images of {len(pool.instances)} instances",
                "objective": "5-way category cross-entropy on CLS, crop/flip/colour-jitter augmentation",
                "steps": p.encoder.steps, "batch": p.encoder.batch, "seed": common_p.seed,
                "parameters": enc_stats["params"], "train wall time (s, 2 CPU cores)": enc_stats["seconds"],
                "train CPU time (s, all threads)": enc_stats["cpu_seconds"],
                "preprocessing": f"resize {p.encoder.resize} bicubic, center crop {p.encoder.image_size}, ImageNet mean/std"},
               {"category linear probe, val instances (gate >= 0.90)": probe_acc,
                "instance retrieval mAP, test instances (pretrained baseline)": retrieval,
                "final train loss": enc_stats["final_loss"]}, regen)
    write_card(out / "generator", "Toybox generator (Stable Diffusion 1.5 stand-in)",
               "SD 1.5's architecture, shrunk: CLIP tokenizer (real CLIP BPE ids) + CLIPTextModel, AutoencoderKL, "
               "UNet2DConditionModel, PNDM. Load with `prpg.models.load_generator('models/toybox/generator')`.",
               {"resolution": p.generator.resolution, "data": f"toybox pool: {len(pool_images)} captioned images",
                "objective": "VAE: L1+MSE+1e-6 KL; UNet+text encoder: epsilon MSE, 10% empty captions, EMA",
                "steps": f"vae {p.generator.vae_steps} x {p.generator.vae_batch}, unet {p.generator.unet_steps} x {p.generator.unet_batch}",
                "seed": common_p.seed, "parameters": gen_stats["params"],
                "train wall time (s, 2 CPU cores)": gen_stats["total_seconds"],
                "train CPU time (s, all threads)": gen_stats["cpu_seconds"]},
               {"samples recognised as their category (gate >= 0.80)": gen_acc,
                **{f"  {c}": v for c, v in gen_per_cat.items()},
                f"DreamBooth smoke ({db['instance']}): margin before": db["margin_before"],
                f"DreamBooth smoke ({db['instance']}): margin after": db["margin_after"],
                "final unet loss": gen_stats["unet_final_loss"], "final vae loss": gen_stats["vae_final_loss"]}, regen)
print(f"pretraining + gates: {total_s / 60:.1f} min wall, {total_cpu_s / 60:.1f} min CPU")

# %% [markdown]
# ## Samples: "a photo of a {category}"

# %%
fig, axes = plt.subplots(len(cat_names), 8, figsize=(12, 1.6 * len(cat_names)), squeeze=False)
per = p.gates.samples_per_category
for r, c in enumerate(cat_names):
    for k in range(8):
        ax = axes[r, k]
        ax.axis("off")
        if k < per:
            ax.imshow(samples[r * per + k])
    axes[r, 0].set_title(c, fontsize=8, loc="left")
fig.suptitle(f"toybox generator samples (CFG {p.gates.guidance}, {p.gates.sample_steps} steps); "
             f"{gen_acc:.0%} recognised by the category probe", fontsize=9)
fig.tight_layout()
Path("reports/figures").mkdir(parents=True, exist_ok=True)
fig.savefig("reports/figures/toybox_generator_samples.png", dpi=100, metadata={"Software": None})

# %% [markdown]
# ## Training curves and the DreamBooth smoke test

# %%
fig, axes = plt.subplots(1, 4, figsize=(16, 3))
for ax, (name, losses) in zip(axes, [("encoder CE", enc_stats["losses"]), ("VAE", gen_stats["losses"]["vae"]),
                                     ("UNet eps-MSE", gen_stats["losses"]["unet"])], strict=False):
    ax.plot(np.convolve(losses, np.ones(25) / 25, mode="valid"))
    ax.set_title(name)
    ax.set_xlabel("step")
axes[3].imshow(np.concatenate([np.asarray(im) for im in db["samples_after"][:6]], axis=1))
axes[3].set_title(f"after DreamBooth on {db['instance']}", fontsize=8)
axes[3].axis("off")
fig.tight_layout()
fig.savefig("reports/figures/toybox_pretraining.png", dpi=100, metadata={"Software": None})

# %% [markdown]
# ## Metrics (git-tracked)

# %%
metrics = {
    "encoder": {"category_probe_val": probe_acc, "instance_retrieval_map_test": retrieval,
                "train_seconds": enc_stats["seconds"]},
    "generator": {"category_accuracy": gen_acc, "per_category": gen_per_cat,
                  "train_seconds": gen_stats["total_seconds"]},
    "dreambooth_smoke": {k: db[k] for k in ("margin_before", "margin_after", "cos_own_before", "cos_own_after")},
    "total_minutes": total_s / 60,
    "total_cpu_minutes": total_cpu_s / 60,
}
write_json_atomic("reports/metrics/toybox_models.json", metrics)
print(json.dumps(metrics, indent=1))
