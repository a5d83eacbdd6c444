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
# # 04 · Synthesize positives: personalized generations and cut-and-paste composites
#
# Two kinds of synthetic positives of the instance (docs/protocol.md §1.2, §1.5):
#
# - **DreamBooth positives** from the personalized generator (stage 03), with the vanilla prompt
#   "photo of a <new1> {category}" (`prompt_mode: class`) or 100 scene prompts per category
#   (`prompt_mode: file`; the paper's best sets use LLM-written scene prompts). CFG 5 by default
#   (paper: 4, 5, 7.5);
# - **cut-and-paste**: the real instance cut out with its mask and pasted at a random scale
#   (0.3-1.3) and position onto real scenes without it and/or generated scene backgrounds (stage 02),
#   saved with exact masks;
# - **oracle** (toybox only, `synthesize.oracle.n > 0`): the instance itself rendered in new test-like
#   scenes, with exact masks (no images when off; docs/toybox.md).
#
# Outputs: `outputs/synthetic/<instance>/{dreambooth,cut_paste,cut_paste_masks,oracle}/`.

# %% tags=["parameters"]
common = {}
data = {}
models = {}
synthesize = {}
instance = "mug_06"

# %%
import time
from pathlib import Path

from prpg.core.models import load_generator
from prpg.core.params import fill_empty_groups, parse_group, setup_device
from prpg.core.paths import chdir_repo_root
from prpg.core.plots import image_grid
from prpg.data import load_dataset
from prpg.personalize import load_personalized
from prpg.synthesize import cut_and_paste
from prpg.synthesize import synthesize as run_synthesis
from prpg.toybox.oracle import stage_positives

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

common_p = parse_group("common", common)
data_p = parse_group("data", data)
models_p = parse_group("models", models)
syn = parse_group("synthesize", synthesize)
device = setup_device(common_p)
ds = load_dataset(common_p.data_root)
category = ds.instance(instance).category
out = Path(f"outputs/synthetic/{instance}")
frozen = load_generator(models_p.generator, device=device)
personalized = load_personalized(frozen, f"outputs/personalize/{instance}")
print(f"{instance} ({category}): {syn.positives.n} DreamBooth positives ({syn.positives.prompt_mode} prompts, "
      f"CFG {syn.positives.guidance}, {syn.positives.steps} steps), {syn.cut_paste.n} cut-and-paste "
      f"({syn.cut_paste.backgrounds} backgrounds)")

# %% [markdown]
# ## Generate (each folder written atomically, seeded per image)

# %%
t0 = time.perf_counter()
run_synthesis(personalized, instance, category, out / "dreambooth", syn.positives, seed=common_p.seed)
t_db = time.perf_counter() - t0
# Generated backgrounds were made once per category by the priors stage.
cut_and_paste(ds, instance, out / "cut_paste", syn.cut_paste, seed=common_p.seed,
              generated_backgrounds=sorted(Path(f"outputs/backgrounds/{category}").glob("*.png")))
t_cp = time.perf_counter() - t0 - t_db
stage_positives(common_p, data_p.toybox, instance, syn.oracle.n, out / "oracle")
print(f"oracle positives: {syn.oracle.n} renders of {instance} in new scenes")
print(f"DreamBooth positives: {t_db:.1f} s; cut-and-paste: {t_cp:.1f} s")

# %% [markdown]
# ## Samples

# %%
rows = {name: sorted((out / name).glob("*.png")) for name in ("dreambooth", "cut_paste", "oracle")}
grid = image_grid({f"{instance}: {name} ({len(paths)})": paths for name, paths in rows.items()}, 10,
                  width=15, row_height=1.65)
