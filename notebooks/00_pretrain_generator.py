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
# # 00 · Pretrain the toybox generator (the Stable Diffusion 1.5 stand-in)
#
# No pretrained generator can be downloaded in the embedded setting, so this project trains its own:
# Stable Diffusion 1.5's architecture (CLIP tokenizer with the real CLIP BPE ids + CLIPTextModel,
# AutoencoderKL, conditional UNet, PNDM sampling), shrunk to 64 px and trained from scratch on the
# toybox **pool** (instances never used in evaluation) with captions made of the scene facts.
#
# Frozen in `dvc.yaml` (the default `dvc repro` never retrains it; the result ships in
# `models/toybox/generator`). Regenerate with
# `dvc unfreeze zoo && dvc repro zoo && dvc freeze zoo`, which
# trains the encoder at the same time (one core each), then runs the gates (`00_zoo_gates`).

# %% tags=["parameters"]
common = {}
data = {}
pretrain = {}

# %%
import json
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from prpg.core.atomic import atomic_dir
from prpg.core.models import TOYBOX_GENERATOR
from prpg.core.params import fill_empty_groups, parse_group, resolve_device
from prpg.core.paths import chdir_repo_root
from prpg.data.images import load_mask
from prpg.data.prepare import load_pool
from prpg.zoo import gates
from prpg.zoo.generator import pretrain_generator

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

common_p = parse_group("common", common)
data_p = parse_group("data", data)
p = parse_group("pretrain", pretrain)
pool = load_pool(data_p)  # outputs/pool/toybox_pool, built by the stage's first command
# The first pretrain.generator_pool_per_category instances of each category (names pool_<category>_000, ...).
keep = {i.name for c in pool.categories for i in pool.instances_in(category=c)[: p.generator_pool_per_category]}
records = [r for split in ("train", "test") for r in pool.images(split) if r.instance in keep]
images = gates.load_images(records)
captions = [pool.annotation(r)["caption"] for r in records]
categories = [pool.instance(r.instance).category for r in records]
# Object masks weight the denoising loss (pretrain.generator.object_weight > 1) and place the object
# close-ups (object_zoom); unused otherwise.
use_masks = p.generator.object_weight != 1.0 or p.generator.object_zoom is not None
masks = [load_mask(r.mask_path) for r in records] if use_masks else None
print(f"{len(images)} pool images of {len(keep)} instances; e.g. '{captions[0]}' | '{captions[-1]}'")

# %% [markdown]
# ## Train: VAE, then UNet + text encoder (written atomically into models/toybox/generator)

# %%
with atomic_dir(TOYBOX_GENERATOR) as out, tempfile.TemporaryDirectory() as work:
    # Not setup_device: the stage pins OMP_NUM_THREADS=1 so generator and encoder train side by side.
    stats = pretrain_generator(images, captions, out, p.generator, seed=common_p.seed, work_dir=Path(work),
                               categories=categories, masks=masks, device=resolve_device(common_p.device))
    losses = stats.pop("losses")
    (out / "training.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
print(f"generator: {stats['total_seconds'] / 60:.1f} min wall, {stats['cpu_seconds'] / 60:.1f} min CPU; "
      f"final losses vae {stats['vae_final_loss']:.4f}, unet {stats['unet_final_loss']:.4f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
for ax, name in zip(axes, ("vae", "unet"), strict=True):
    ax.plot(np.convolve(losses[name], np.ones(25) / 25, mode="valid"))
    ax.set_title(f"{name} loss (25-step mean)")
    ax.set_xlabel("step")
fig.tight_layout()
Path("reports/figures").mkdir(parents=True, exist_ok=True)
fig.savefig("reports/figures/toybox_generator_training.png", dpi=100, metadata={"Software": None})
