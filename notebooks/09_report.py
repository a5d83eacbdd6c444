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
# # 09 · Report
#
# Everything here is rebuilt from **git-tracked files only** — the current run's
# `reports/metrics/` and the committed experiments in `reports/results/<name>/` — so CI can
# regenerate it without a model or `outputs/`. The code is `prpg.report`; this notebook is the story.
#
# Scores are ×100 like the paper; "a ± b" is the mean over instances and half the width of its 95 %
# bootstrap CI. Tables go to `reports/tables/` (`.md` to read, `.csv` with every number), figures to
# `reports/figures/report_*.png`.

# %% tags=["parameters"]
common = {}

# %%
from IPython.display import Image, Markdown, display

from prpg import report
from prpg.core.params import fill_empty_groups, parse_group
from prpg.core.paths import chdir_repo_root

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

common_p = parse_group("common", common)
FIG = "reports/figures"
ID_COLS = ("source", "backbone", "model", "task")  # in the csv; the row labels say them


def show(df, stem, title, hide=ID_COLS):
    """Write <stem>.md/.csv and show the markdown as written."""
    md, _ = report.write_tables(df, stem, hide=hide, title=f"**{title}**")
    display(Markdown(md.read_text()))


def figure(fig, name):
    display(Image(str(report.save_figure(fig, f"{FIG}/report_{name}.png"))))


# %% [markdown]
# ## The current run: pretrained vs personalized
# `reports/metrics/` of the last `dvc repro`; headline numbers are over the test instances
# (`instance_split`), every instance when the dataset has no val/test split.

# %%
run = report.load_run(params={"dataset": common_p.dataset})
s = run.summary
# What the personalized models trained on (08_aggregate): an instance without synthetic positives trained on
# its real photos instead.
sp = s.get("synthetic_positives")
print(f"{common_p.dataset}: {s['n_instances']} {s.get('instance_split', '?')} instances" + (
    f"; synthetic positives per instance: mean {sp['mean']:.1f}, min {sp['min']}, {sp['instances_without']} without"
    if sp else ""))
show(report.run_table(s), "run_summary", "Current run, every task")
figure(report.plot_gains(s), "gains")

# %% [markdown]
# Per test split (PODS-style annotations: in-distribution, pose, distractors, both). Datasets without
# split annotations have only the "All" column.

# %%
if not s["per_split"]:
    print("this dataset has no test-split annotations: overall numbers only")
show(report.split_table(s), "run_splits", "Current run per test split")
show(report.category_table(run.instances, s.get("instance_split", "test")), "run_categories",
     "Current run per category (all test images)")

# %% [markdown]
# Contrastive training (LoRA, InfoNCE over triplets): loss and triplet accuracy of every instance.

# %%
figure(report.plot_training_curves(run.train_log), "training")

# %% [markdown]
# ## Committed experiments
# `prpg results save NAME [--headline]` snapshots a finished run into `reports/results/NAME/`. The main
# table takes the results flagged headline (one per dataset and backbone), next to the paper's
# published numbers (docs/protocol.md §4.1, exact; toybox has none).

# %%
results = report.load_results()
if not results:
    print("no committed experiments yet: `prpg results save NAME --headline` after a run adds one")
show(report.experiments_table(results), "experiments", "Committed experiments", hide=())
main = report.with_paper(report.main_table(results), report.paper_table())
show(main, "main_table", "Main table (ours and [paper])")
show(report.paper_table(), "paper_main", "Paper main table (§4.1, published)")

# %% [markdown]
# ## Generation methods (docs/protocol.md §4.2)
# Classification AP of the personalized model per test split, by positive set (real images only,
# Cut/Paste, (masked) DreamBooth, combined), with the pretrained backbone as reference. The paper's
# values are read off a bar chart (approximate).

# %%
methods = report.method_table(results)
show(methods, "methods", "Generation methods: classification AP per test split", hide=())
show(report.paper_method_table(), "paper_methods", "Paper §4.2 (PODS, approximate)",
     hide=("source", "dataset"))
figure(report.plot_methods(methods), "methods")
# Paired: the gain of each instance (personalized - pretrained on the same test images), its mean with a
# bootstrap CI over instances, and how many instances gained.
show(report.gain_table(results), "gains", "Paired gains per result (personalized - pretrained, x100)", hide=())

# %% [markdown]
# ## Sweeps
# Headline tasks against one setting, among results that differ in it: classifier-free guidance of the
# generator (the released sets use CFG 4 / 5 / 7.5), the contrastive loss, and the number of real
# images (the paper's scaling curve, docs/protocol.md §4.3, approximate, is shown for reference).

# %%
for param in ("guidance", "loss", "num_real"):
    sweep = report.sweep_table(results, param)
    show(sweep, f"sweep_{param}", f"Sweep over {param}", hide=())
    figure(report.plot_sweep(sweep, param), f"sweep_{param}")
show(report.paper_scaling_table(), "paper_scaling", "Paper §4.3 real-data scaling (approximate)")
