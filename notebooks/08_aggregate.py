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
# # 08 · Aggregate over instances
#
# The reference implementation stops at one results file per instance. The paper's numbers are a
# mean over instances — over the **test** instances (`class_to_split`) for the headline numbers —
# here with a 95 % bootstrap confidence interval, overall and per test split.
#
# Outputs (git-tracked, for `dvc metrics diff` / `dvc exp show`): `reports/metrics/evaluate.json`
# ({task: {model: mean}}, `ci95`, `per_split`, `n_instances`), `reports/metrics/instances.csv`
# (one row per instance, task and model) and `reports/metrics/train_log.csv` (the contrastive
# training curves of every instance, for the report and `dvc plots`).

# %% tags=["parameters"]
common = {}
run = {}

# %%
import json
from pathlib import Path

import pandas as pd

from prpg.aggregate import aggregate, headline
from prpg.core.atomic import write_json_atomic, write_text_atomic
from prpg.core.params import fill_empty_groups, parse_group
from prpg.core.paths import chdir_repo_root
from prpg.train.triplets import REAL_SOURCE, positives_per_source

chdir_repo_root()  # JupyterLab starts the kernel in notebooks/ (the stage runner: at the repo root)
fill_empty_groups(globals())  # run interactively, nothing injected: the groups come from params.yaml

common_p = parse_group("common", common)
run_p = parse_group("run", run)
results = [json.loads(Path(f"outputs/evaluate/{name}/metrics.json").read_text()) for name in run_p.instances]
splits = pd.Series([r["instance_split"] for r in results]).value_counts().to_dict()
splits

# %% [markdown]
# ## Mean over instances (test instances when there are any; else every instance, flagged)

# %%
instance_split = "test" if any(r["instance_split"] == "test" for r in results) else None
summary = aggregate(results, instance_split=instance_split, n_boot=1000, seed=common_p.seed)
summary["instance_split"] = instance_split or "all"

# %% [markdown]
# ## What each instance trained on: distinct positive images per source (from its triplets)
#
# With a weak generator the filter may keep few samples, or none: then the training falls back to the
# real photos as positives (source `real`). The synthetic count is tracked with the metrics, so
# `dvc exp show` tells how many synthetic positives a run really used.

# %%
positives = pd.DataFrame([{"instance": name, "source": source, "positives": n} for name in run_p.instances
                          for source, n in positives_per_source(f"outputs/train/{name}/triplets.csv").items()])
synthetic = positives[positives.source != REAL_SOURCE].groupby("instance").positives.sum()
synthetic = synthetic.reindex(list(run_p.instances), fill_value=0)
summary["synthetic_positives"] = {"mean": float(synthetic.mean()), "min": int(synthetic.min()),
                                  "instances_without": int((synthetic == 0).sum())}
synthetic.to_dict()
rows = [{"instance": r["instance"], "category": r["category"], "instance_split": r["instance_split"],
         "test_split": split, "task": task, "model": model, "value": value}
        for r in results
        for split, tasks in [("all", r["metrics"]), *r["per_split"].items()]
        for task, by_model in tasks.items() for model, value in by_model.items()]
Path("reports/metrics").mkdir(parents=True, exist_ok=True)
write_json_atomic("reports/metrics/evaluate.json", summary)
# The headline numbers (DVC's `metrics` of the pipeline: `dvc metrics show`, `dvc exp show`).
write_json_atomic("reports/metrics/headline.json", headline(summary))
write_text_atomic("reports/metrics/instances.csv", pd.DataFrame(rows).to_csv(index=False, float_format="%.6f"))
write_text_atomic("reports/metrics/positives.csv", positives.to_csv(index=False))
logs = [pd.read_csv(f"outputs/train/{name}/model/train_log.csv").assign(instance=name) for name in run_p.instances]
train_log = pd.concat(logs)[["instance", "step", "epoch", "loss", "accuracy"]]
write_text_atomic("reports/metrics/train_log.csv", train_log.to_csv(index=False, float_format="%.6f"))
print(f"mean over {summary['n_instances']} of {len(results)} instances ({summary['instance_split']}); synthetic "
      f"positives per instance: mean {synthetic.mean():.1f}, {int((synthetic == 0).sum())} without")
table = pd.DataFrame(summary["metrics"]).T
table["gain"] = table.get("personalized") - table.get("pretrained")
table.round(3)
