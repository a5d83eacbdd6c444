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
# # 03 · Personalize the generator: DreamBooth on ~3 real photos of one instance
#
# DreamBooth with prior preservation (docs/protocol.md §1.1): each step denoises an instance image captioned
# "a photo of <new1> {category}" and a class image captioned "A photo of {category}" (made by the
# frozen generator in stage 02), loss = MSE(instance) + prior_weight x MSE(class). Options
# (`personalize` in params.yaml): full fine-tune or LoRA (`mode`), mask-weighted instance loss
# (`masked`), text-encoder training. Paper runs: SD 1.5 at 512 px, lr 2e-6 x 400 steps
# (experiments/shared/paper.yaml); toybox: the tiny generator at 64 px, tuned for CPU.
#
# `dvc repro` runs this once per instance in `run.instances` (`personalize@<instance>`).

# %% tags=["parameters"]
common = {}
models = {}
personalize = {}
priors = {}
instance = "mug_06"

# %%
import dataclasses

import matplotlib.pyplot as plt
import pandas as pd

from prpg.core.models import load_generator
from prpg.core.params import fill_empty_groups, parse_group, setup_device
from prpg.core.paths import chdir_repo_root
from prpg.core.plots import image_grid
from prpg.data import load_dataset, load_image
from prpg.personalize import INSTANCE_PROMPT
from prpg.personalize import personalize as run_dreambooth
from prpg.priors import class_images_dir
from prpg.zoo.generator import sample

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

common_p = parse_group("common", common)
models_p = parse_group("models", models)
db = parse_group("personalize", personalize)
pri = parse_group("priors", priors)
device = setup_device(common_p)
db = dataclasses.replace(db, device=device)
ds = load_dataset(common_p.data_root)
category = ds.instance(instance).category
records = ds.images("train", instance)
class_paths = sorted(class_images_dir("outputs/class_images", category).glob("*.png"))
base = load_generator(models_p.generator, device=device)
print(f"{instance} ({category}): {len(records)} train images, {len(class_paths)} class images; "
      f"mode={db.mode} masked={db.masked} steps={db.steps} lr={db.lr} on {device}")

# %% [markdown]
# ## Train (the output folder is written atomically; the base generator is not modified)

# %%
out_dir = f"outputs/personalize/{instance}"
result = run_dreambooth(base, records, category, class_paths, db, out_dir, seed=common_p.seed)
losses = pd.DataFrame(result.losses)
print(f"DreamBooth: {result.seconds:.1f} s, optimizer {result.optimizer}, final loss "
      f"{losses['loss'].tail(20).mean():.4f}")

# %% [markdown]
# ## Loss curve and a first look at the personalized generator

# %%
prompt = INSTANCE_PROMPT.format(identifier=db.identifier, category=category)
# Sampled with the class images' sampler steps: a count, so a rehearsal's reduced counts reduce it too.
before = sample(base, [prompt] * 4, seed=common_p.seed, steps=pri.class_images.steps)
after = sample(result.pipe, [prompt] * 4, seed=common_p.seed, steps=pri.class_images.steps)
fig, ax = plt.subplots(figsize=(5, 2.2))
ax.plot(losses["step"], losses["loss"].rolling(10, min_periods=1).mean())
ax.set_title(f"{instance}: DreamBooth loss (10-step mean)", fontsize=9)
ax.set_xlabel("step")
fig.tight_layout()
grid = image_grid({"real": [load_image(r.path) for r in records[:3]], "before": before, "after": after}, 4,
                  width=7, row_height=1.8, title=f"{instance}: '{prompt}'")
