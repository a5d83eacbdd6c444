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
# # 01 · Data: the dataset every later stage reads
#
# The method starts from ~3 real photos of one object. Every dataset here (PODS, DF2, Dogs, your own,
# and the embedded **toybox** world) has the PODS layout: `train/ test/ *_masks/ test_dense/` with one
# folder per instance, an `<name>_info.json` and, for PODS, per-image test-split annotations.
#
# This stage builds the toybox world (default) or verifies a downloaded dataset, then writes a
# summary (`reports/metrics/data.json`, tracked by git) and a gallery figure.
#
# Run it with `dvc repro data`; explore it here in JupyterLab (paths resolve from the repo root).

# %% tags=["parameters"]
common = {}
data = {}

# %%
import time

import pandas as pd
from IPython.display import Image

from prpg.core.atomic import write_json_atomic
from prpg.core.params import fill_empty_groups, load_params, parse_group
from prpg.core.paths import chdir_repo_root
from prpg.data import load_dataset
from prpg.data.gallery import save_gallery
from prpg.data.prepare import prepare_dataset, summarize

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

# Every group of params.yaml, not only this stage's: the first stage stops a bad value anywhere
# (`dvc exp run -S train.lr=abc`) before any work, naming the key.
load_params("params.yaml")
common_p = parse_group("common", common)
data_p = parse_group("data", data)

# %% [markdown]
# ## Build or verify
# Toybox is procedural and seeded: the same `common.seed` gives byte-identical files. A real dataset
# is checked in place (`prpg data check`): every problem is listed, and the stage stops if any.

# %%
t0 = time.perf_counter()
root = prepare_dataset(common_p, data_p)
prepare_s = time.perf_counter() - t0
ds = load_dataset(root)
print(f"{ds.name}: {len(ds.instances)} instances in {len(ds.categories)} categories, ready in {prepare_s:.1f} s")

# %% [markdown]
# ## What is in it
# Instances are split into `val` (tuning) and `test` (headline numbers) as PODS's `class_to_split`.

# %%
summary = summarize(ds)
pd.DataFrame(summary["per_category"]).T

# %%
pd.Series(summary["test_splits"], name="test images")

# %% [markdown]
# ## Gallery
# Per category: an instance's 3 train images, then one image of each test split
# (ID, pose, distractors, both), with the ground-truth mask outlined.

# %%
gallery = save_gallery(ds, f"reports/figures/{ds.name}_gallery.png", per_category=data_p.gallery_instances_per_category)
Image(filename=str(gallery))

# %% [markdown]
# ## Metrics
# The last cell writes the stage's summary (git-tracked: `reports/metrics/data.json`).

# %%
write_json_atomic("reports/metrics/data.json", summary)
images = summary["images"]
print(f"{images['train']} train, {images['test']} test, {images['test_dense']} test_dense images")
