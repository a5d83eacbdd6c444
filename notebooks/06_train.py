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
# # 06 · Personalize the representation: triplets and LoRA contrastive fine-tuning
#
# The paper (docs/protocol.md §1.6-1.7). Triplets pair a **real** anchor (one of the ~3 train photos) with a
# **synthetic positive** (stages 04-05: filtered DreamBooth images, cut-and-paste composites, or a mix) and a
# **negative** (another object of the category, stage 02). The pretrained ViT gets LoRA adapters on
# its attention `qkv` projections and is trained with InfoNCE on concat(CLS, mean patch token): every
# anchor is pulled toward every positive of the batch against all in-batch negatives.
#
# `train.sources` picks the positives (the generation-method comparison): `dreambooth_filtered`
# (default; the paper's best set), `dreambooth` (unfiltered), `cut_paste`, `real` (real only), `oracle`
# (toybox: the instance itself in new scenes) or a mix; `train.negatives` the negatives: `generated`
# (stage 02's) or `oracle` (toybox: renders of the category's pool instances).
#
# Output: `outputs/train/<instance>/` = `triplets.csv` + `model/` (peft adapter, `train_log.csv`,
# `train_config.json`).

# %% tags=["parameters"]
common = {}
models = {}
train = {}
instance = "mug_06"

# %%
import dataclasses
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from prpg.core import backbones
from prpg.core.atomic import atomic_dir
from prpg.core.params import fill_empty_groups, parse_group, setup_device
from prpg.core.paths import chdir_repo_root
from prpg.data import load_dataset
from prpg.train.contrastive import train as train_lora
from prpg.train.triplets import make_triplets, negative_set, positive_sets, save_triplets

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

common_p = parse_group("common", common)
models_p = parse_group("models", models)
cfg = parse_group("train", train)
device = setup_device(common_p)
cfg = dataclasses.replace(cfg, device=device)
ds = load_dataset(common_p.data_root)
category = ds.instance(instance).category
real = [r.path for r in ds.images("train", instance)]


synthetic = positive_sets(cfg.sources, instance, real)
negatives = negative_set(cfg.negatives, category)
print(f"{instance} ({category}): {len(real)} real anchors; positives "
      + ", ".join(f"{k} {len(v)}" for k, v in synthetic.items()) + f"; {len(negatives)} {cfg.negatives} negatives")

# %% [markdown]
# ## Triplets (seeded; saved for inspection) and training

# %%
triplets = make_triplets(real, synthetic, negatives, ref_type=cfg.ref_type, num_synthetic=cfg.num_synthetic,
                         num_triplets=cfg.num_triplets, seed=common_p.seed)
base = backbones.load(models_p.backbone, device=device)
out = Path(f"outputs/train/{instance}")
with atomic_dir(out) as tmp:
    save_triplets(triplets, tmp / "triplets.csv")
    summary = train_lora(base, tmp / "triplets.csv", cfg, seed=common_p.seed, out_dir=tmp / "model")
print(f"{summary['steps']} steps in {summary['seconds']:.1f} s on {summary['device']}; "
      f"final loss {summary['final_loss']:.3f}, triplet accuracy {summary['final_accuracy']:.2f}; "
      f"{summary['trainable_params']} LoRA parameters")

# %% [markdown]
# ## Training curves

# %%
log = pd.read_csv(out / "model/train_log.csv")
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
for ax, col in zip(axes, ("loss", "accuracy"), strict=True):
    ax.plot(log["step"], log[col], alpha=0.4)
    ax.plot(log["step"], log[col].rolling(10, min_periods=1).mean())
    ax.set_title(f"{instance}: {col}")
    ax.set_xlabel("step")
fig.tight_layout()
