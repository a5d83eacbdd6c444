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
# # 00 · Pretrain the toybox encoder (the DINOv2 stand-in)
#
# A tiny ViT of timm's DINOv2 architecture (the class the paper backbones use here too), trained
# from scratch on the toybox **pool** with a category objective: it must know *categories* (a mug
# from a shoe) but have no reason to tell *your* mug from other mugs — the gap personalization fills.
# Self-supervised instance discrimination (SimCLR-style) would instead teach it the very skill the
# method adds, so it is category supervision: a 5-way cross-entropy on CLS plus the same on every
# patch token (object category or background, from the pool's masks: "token labeling"), on object
# crops, box crops and scenes whose objects are re-coloured, re-textured and set on other
# backgrounds, so that only the shape says the category.
#
# Frozen in `dvc.yaml`; the result ships in `models/toybox/encoder`. Regenerate with
# `dvc unfreeze zoo && dvc repro zoo && dvc freeze zoo`.

# %% tags=["parameters"]
common = {}
data = {}
pretrain = {}

# %%
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from prpg.core.atomic import atomic_dir
from prpg.core.models import TOYBOX_ENCODER
from prpg.core.params import fill_empty_groups, parse_group
from prpg.core.paths import chdir_repo_root
from prpg.data.images import load_mask
from prpg.data.prepare import load_pool
from prpg.zoo import gates
from prpg.zoo.encoder import pretrain_encoder

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

common_p = parse_group("common", common)
data_p = parse_group("data", data)
p = parse_group("pretrain", pretrain)
pool = load_pool(data_p)  # outputs/pool/toybox_pool, built by the stage's first command
records = [r for split in ("train", "test") for r in pool.images(split)]
images = gates.load_images(records)
categories = [pool.instance(r.instance).category for r in records]
names = sorted(set(categories))
masks = [load_mask(r.mask_path) for r in records]
print(f"{len(images)} pool images of {len(pool.instances)} instances, categories {names}")

# %% [markdown]
# ## Train (written atomically into models/toybox/encoder)

# %%
with atomic_dir(TOYBOX_ENCODER) as out:
    stats = pretrain_encoder(images, masks, [names.index(c) for c in categories], len(names), out, p.encoder,
                             seed=common_p.seed)
    losses = stats.pop("losses")
    (out / "training.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
print(f"encoder: {stats['seconds'] / 60:.1f} min wall, {stats['cpu_seconds'] / 60:.1f} min CPU; "
      f"final loss {stats['final_loss']:.3f}, train accuracy {stats['final_train_accuracy']:.2f}")

# %%
fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(np.convolve(losses, np.ones(25) / 25, mode="valid"))
ax.set_title("encoder loss: CLS + patch category cross-entropy (25-step mean)")
ax.set_xlabel("step")
fig.tight_layout()
Path("reports/figures").mkdir(parents=True, exist_ok=True)
fig.savefig("reports/figures/toybox_encoder_training.png", dpi=100, metadata={"Software": None})
