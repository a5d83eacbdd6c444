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
# # 05 · Filter the DreamBooth positives: keep the ones that look like the real instance
#
# The paper (docs/protocol.md §1.3): the real references are the instance's train images cropped to their mask
# boxes; each generated image is localized (dense patch similarity + Otsu on toybox; for paper runs the
# reference's PerSAM, `persam: reference`, on DINOv2 patches of the padded SAM canvas, `dense_input: sam_pad`
# at 896 px), cropped to the predicted box, embedded by the similarity model (DreamSim for paper runs, the
# toybox encoder on toybox) and kept if the **mean** cosine to the real crops is >= the threshold.
# Attempts are bounded (`max_attempts`), and an image that cannot be localized counts as an attempt
# (the reference's loop can run forever on those). When the synthesized set runs out before `n_keep`
# are kept, more are sampled from the personalized generator (`sample_more`).
#
# Output: `outputs/filtered/<instance>/{kept,rejected}/`, `scores.csv`, `summary.json`.

# %% tags=["parameters"]
common = {}
models = {}
synthesize = {}
filter = {}  # noqa: A001 (the params group's name)
instance = "mug_06"

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

from prpg.core.params import fill_empty_groups, parse_group, setup_device
from prpg.core.paths import chdir_repo_root
from prpg.core.plots import image_grid
from prpg.data import load_dataset
from prpg.filter.candidates import candidate_images, personalized_samples
from prpg.filter.filtering import filter_instance

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

common_p = parse_group("common", common)
models_p = parse_group("models", models)
syn = parse_group("synthesize", synthesize)
flt = parse_group("filter", filter)
device = setup_device(common_p)
ds = load_dataset(common_p.data_root)
category = ds.instance(instance).category
synthesized = sorted(Path(f"outputs/synthetic/{instance}/dreambooth").glob("*.png"))
print(f"{instance}: {len(synthesized)} synthesized positives; keep {flt.n_keep} with {flt.model} "
      f"({flt.backbone if flt.model == 'backbone' else flt.dreamsim_type}), {flt.reduce} cosine >= {flt.threshold}, "
      f"localize {flt.localize} (persam {flt.persam}, dense input {flt.dense_input} at "
      f"{flt.dense_resolution or 'the backbone size'} px), at most {flt.max_attempts} attempts")

# %% [markdown]
# ## Filter

# %%
# Fresh samples are drawn (and the personalized generator loaded) only once the synthesized set runs out.
more = personalized_samples(models_p.generator, f"outputs/personalize/{instance}", syn.positives, instance, category,
                            seed=common_p.seed, device=device) if flt.sample_more else ()
t0 = time.perf_counter()
summary = filter_instance(candidate_images(synthesized, more, max_attempts=flt.max_attempts), ds, instance,
                          Path(f"outputs/filtered/{instance}"), flt, n_keep=flt.n_keep, device=device)
print(f"kept {summary['kept']} / {summary['attempts']} attempts ({summary['not_localized']} not localized; "
      f"stopped: {summary['stopped']}) in {time.perf_counter() - t0:.1f} s")

# %% [markdown]
# ## Scores, and kept vs rejected

# %%
out = Path(f"outputs/filtered/{instance}")
scores = pd.read_csv(out / "scores.csv")
fig, axes = plt.subplots(1, 1, figsize=(5, 2.5))
scores["score"].plot.hist(bins=30, ax=axes)
axes.axvline(flt.threshold, color="r")
axes.set_title(f"{instance}: filter scores ({flt.reduce} cosine to the real crops)", fontsize=9)
fig.tight_layout()

shown = {"kept": scores[scores.kept == 1].head(8), "rejected": scores[(scores.kept == 0) & (scores.file.notna())].head(8)}
grid = image_grid({name: [out / f for f in rows.file] for name, rows in shown.items()}, 8, row_height=1.75,
                  captions={name: [f"{name} {v:.2f}" for v in rows.score] for name, rows in shown.items()})
