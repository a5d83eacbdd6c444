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
# - **class images** ("A photo of {category}"): DreamBooth's prior-preservation set (docs/protocol.md §1.1).
#   The reference regenerates them per instance, or mixes all categories in one folder; here they are made
#   once per category (`outputs/class_images/<category>`);
# - **negatives** ("a photo of a {category}"): other objects of the same category, the contrastive
#   negatives of every instance of the category (docs/protocol.md §1.4; `outputs/negatives/<category>`);
# - **generated backgrounds**: the category's scene prompts with the subject removed, for the
#   cut-and-paste composites (docs/protocol.md §1.5; `outputs/backgrounds/<category>`);
# - **oracle negatives** (toybox only, `priors.oracle_negatives.n > 0`): the category's pool instances
#   rendered in new scenes (`outputs/negatives_oracle/<category>`, no images when off; docs/toybox.md).
#
# `dvc repro` runs this notebook once per category in `run.categories` (`priors@<category>`).

# %% tags=["parameters"]
common = {}
data = {}
models = {}
priors = {}
synthesize = {}
category = "mug"

# %%
import time

from prpg.core.models import load_generator
from prpg.core.params import fill_empty_groups, parse_group, setup_device
from prpg.core.paths import chdir_repo_root
from prpg.core.plots import image_grid
from prpg.data import load_dataset
from prpg.priors import generate_class_images
from prpg.synthesize import category_backgrounds, generate_negatives
from prpg.toybox.oracle import stage_negatives

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

common_p = parse_group("common", common)
data_p = parse_group("data", data)
models_p = parse_group("models", models)
pri = parse_group("priors", priors)
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
cls = pri.class_images
class_paths = generate_class_images(frozen, category, cls.n, "outputs/class_images", seed=common_p.seed,
                                    steps=cls.steps, guidance=cls.guidance, batch=cls.batch)
t_class = time.perf_counter() - t0
negatives_dir = generate_negatives(frozen, category, "outputs/negatives", pri.negatives, seed=common_p.seed)
t_neg = time.perf_counter() - t0 - t_class
backgrounds = category_backgrounds(frozen, category, "outputs/backgrounds", pri.backgrounds, syn.cut_paste.backgrounds,
                                   seed=common_p.seed, instances=category_instances)
oracle_dir = stage_negatives(common_p, data_p.toybox, category, pri.oracle_negatives.n,
                             f"outputs/negatives_oracle/{category}")
print(f"oracle negatives: {pri.oracle_negatives.n} renders of pool {category}s in {oracle_dir}")
seconds = time.perf_counter() - t0
print(f"{len(class_paths)} class images ({t_class:.1f} s), {pri.negatives.n} negatives ({t_neg:.1f} s), "
      f"{len(backgrounds)} backgrounds; {seconds:.1f} s in all")

# %% [markdown]
# ## A look at each set

# %%
sets = {"class images": class_paths, "negatives": sorted(negatives_dir.glob("*.png"))}
if backgrounds:
    sets["backgrounds"] = backgrounds
grid = image_grid({f"{category}: {name}": paths for name, paths in sets.items()}, 8)
