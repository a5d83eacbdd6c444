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
# # 02 · Category priors: class images, negatives and scene backgrounds (once per category)
#
# Three image sets come from the **frozen** generator and are shared by every instance of a category:
#
# - **class images** ("A photo of {category}"): DreamBooth's prior-preservation set (paper §1.1). The
#   reference regenerates them per instance, or mixes all categories in one folder; here they are made
#   once per category (`outputs/class_images/<category>`);
# - **negatives** ("a photo of a {category}"): other objects of the same category, the contrastive
#   negatives of every instance of the category (paper §1.4; `outputs/negatives/<category>`);
# - **generated backgrounds**: the category's scene prompts with the subject removed, for the
#   cut-and-paste composites (paper §1.5; `outputs/backgrounds/<category>`).
#
# `dvc repro` runs this notebook once per category in `run.categories` (`priors@<category>`).

# %% tags=["parameters"]
common = {"seed": 0, "device": "cpu", "dataset": "toybox", "data_root": "outputs/data/toybox", "data_source": "src/prpg/toybox"}
models = {"generator": "models/toybox/generator", "backbone": "toybox"}
personalize = {}
synthesize = {}
category = "mug"

# %%
import time
from pathlib import Path

import matplotlib.pyplot as plt
from PIL import Image

from prpg.core.paths import chdir_repo_root

chdir_repo_root()

from prpg.core.atomic import atomic_dir  # noqa: E402
from prpg.priors import generate_class_images  # noqa: E402
from prpg.data import load_dataset  # noqa: E402
from prpg.core.models import load_generator  # noqa: E402
from prpg.core.params import parse_group, setup_device  # noqa: E402
from prpg.synthesize import generate_backgrounds, generate_negatives  # noqa: E402

common_p = parse_group("common", common)
models_p = parse_group("models", models)
db = parse_group("personalize", personalize)
syn = parse_group("synthesize", synthesize)
device = setup_device(common_p)
# The category's instances in the dataset: an instance-keyed (reference) prompt file gives their scenes.
category_instances = [i.name for i in load_dataset(common_p.data_root).instances_in(category=category)]
frozen = load_generator(models_p.generator, device=device)
print(f"category {category!r}; frozen generator {models_p.generator} on {device}")

# %% [markdown]
# ## Generate (each set is written atomically and reused only when made with exactly these settings)

# %%
t0 = time.perf_counter()
class_paths = generate_class_images(frozen, category, db.num_class_images, "outputs/class_images", seed=common_p.seed,
                                    steps=db.class_steps, guidance=db.class_guidance, batch=db.class_batch)
t_class = time.perf_counter() - t0
negatives_dir = generate_negatives(frozen, category, "outputs/negatives", syn.negatives, seed=common_p.seed)
t_neg = time.perf_counter() - t0 - t_class
n_backgrounds = 0
if syn.cut_paste.backgrounds in ("generated", "both"):
    backgrounds_dir = generate_backgrounds(frozen, category, "outputs/backgrounds", syn.cut_paste, seed=common_p.seed,
                                           instances=category_instances)
    n_backgrounds = len(list(backgrounds_dir.glob("*.png")))
else:  # keep the DVC output present (an empty folder) when only real backgrounds are used
    with atomic_dir(Path("outputs/backgrounds") / category):
        pass
seconds = time.perf_counter() - t0
print(f"{len(class_paths)} class images ({t_class:.1f} s), {syn.negatives.n} negatives ({t_neg:.1f} s), "
      f"{n_backgrounds} backgrounds; {seconds:.1f} s in all")

# %% [markdown]
# ## A look at each set

# %%
sets = {"class images": class_paths, "negatives": sorted(negatives_dir.glob("*.png"))}
if n_backgrounds:
    sets["backgrounds"] = sorted(backgrounds_dir.glob("*.png"))
fig, axes = plt.subplots(len(sets), 8, figsize=(12, 1.7 * len(sets)), squeeze=False)
for row, (name, paths) in enumerate(sets.items()):
    for k, ax in enumerate(axes[row]):
        ax.axis("off")
        if k < len(paths):
            ax.imshow(Image.open(paths[k]))
    axes[row, 0].set_title(f"{category}: {name}", fontsize=8, loc="left")
fig.tight_layout()
