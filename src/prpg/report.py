"""The report: tables and figures rebuilt from git-tracked files only (no model, no outputs/), so CI can
always regenerate them.

Inputs
    reports/metrics/{evaluate.json, instances.csv, train_log.csv}   the current run (08_aggregate)
    reports/results/<name>/{evaluate.json, instances.csv, params.json, [train_log.csv]}
                                                                    committed experiments (prpg.runs.results)
    reports/results/<name>/parts/<part>/{the same}                  one experiment saved in parts
                                                                    (merge_parts: one result)

Conventions
    Metrics are stored in [0, 1]; every table here shows them x100, like the paper.
    A column `X` holding a mean may have a companion `X ±` = half the width of its 95 % bootstrap CI,
    (high - low) / 2, also x100. CSVs keep both numeric; `display_frame` / the markdown merge them
    into "45.0 ± 5.0". The bootstrap CI need not be symmetric around the mean: ± is its half-width.
    The main table takes the results whose params.json says `"headline": true` (`prpg results save
    NAME --headline`), one per (dataset, backbone); the method and sweep tables take every result.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from prpg.core.atomic import write_bytes_atomic, write_text_atomic
from prpg.aggregate import aggregate, bootstrap_ci

RESULTS_DIR = Path("reports/results")
METRICS_DIR = Path("reports/metrics")
TABLES_DIR = Path("reports/tables")

TASKS = ("classification", "retrieval", "retrieval_ndcg", "retrieval_mrr", "retrieval_top10",
         "detection", "detection_ap50", "detection_f1", "detection_f1_50",
         "segmentation", "segmentation_ap50", "segmentation_f1", "segmentation_f1_50")
# The paper's "Ret" column is NDCG over the full ranking (the reference computes NDCG, MRR and top-10 and
# no mAP; NDCG is its first output, docs/protocol.md §2.2), so "Ret" is our retrieval_ndcg; our mAP
# ("retrieval") follows as the extra column "Ret mAP", which has no paper counterpart.
HEADLINE_TASKS = ("classification", "retrieval_ndcg", "detection", "segmentation", "retrieval")
TASK_LABELS = {"classification": "Cls", "retrieval_ndcg": "Ret", "detection": "Det", "segmentation": "Seg",
               "retrieval": "Ret mAP"}
SPLITS = ("in_distribution", "pose", "distractors", "pose_and_distractors")
SPLIT_LABELS = {"in_distribution": "ID", "pose": "Pose", "distractors": "Distractors",
                "pose_and_distractors": "Both", "all": "All"}
DATASETS = ("pods", "df2", "dogs", "toybox")
DATASET_LABELS = {"pods": "PODS", "df2": "DF2", "dogs": "Dogs", "toybox": "toybox"}
BACKBONES = ("toybox", "dinov2_vitb14", "clip_vitb16", "mae_vitb16")
BACKBONE_LABELS = {"toybox": "toybox", "dinov2_vitb14": "DINOv2", "clip_vitb16": "CLIP", "mae_vitb16": "MAE"}
MODELS = ("pretrained", "personalized")
METHODS = ("real", "cut_paste", "dreambooth_unfiltered", "dreambooth", "masked_dreambooth_unfiltered",
           "masked_dreambooth", "combined")
PAPER_DATASETS = ("pods", "df2", "dogs")
PM = " ±"  # suffix of a mean column's half-CI companion

RESULT_FILES = ("evaluate.json", "instances.csv", "params.json")  # train_log.csv is optional
REQUIRED_PARAMS = ("dataset", "backbone", "method")

# Published reference numbers, x100: the project page's results table (docs/protocol.md §4.1, exact;
# Dec 2024 version). Rows "-P (DB)" = personalized with DreamBooth-based synthetic data. Per task the
# three values are (PODS, DF2, Dogs). "Ret" is filed under retrieval_ndcg (see HEADLINE_TASKS).
PAPER_MAIN = {
    ("dinov2_vitb14", "pretrained"): {"classification": (31.0, 14.4, 83.1), "retrieval_ndcg": (71.7, 36.3, 89.4),
                                      "detection": (13.0, 4.4, 12.0), "segmentation": (11.8, 5.1, 11.4)},
    ("dinov2_vitb14", "personalized"): {"classification": (42.9, 34.9, 81.9), "retrieval_ndcg": (76.8, 64.4, 94.9),
                                        "detection": (13.7, 8.2, 16.5), "segmentation": (13.0, 8.7, 16.8)},
    ("clip_vitb16", "pretrained"): {"classification": (28.7, 12.7, 36.5), "retrieval_ndcg": (64.4, 34.7, 58.0),
                                    "detection": (0.2, 2.8, 7.4), "segmentation": (0.1, 3.0, 6.7)},
    ("clip_vitb16", "personalized"): {"classification": (44.2, 25.6, 65.4), "retrieval_ndcg": (72.2, 51.3, 80.4),
                                      "detection": (1.6, 4.0, 10.6), "segmentation": (0.6, 4.4, 10.2)},
    ("mae_vitb16", "pretrained"): {"classification": (8.4, 5.2, 11.3), "retrieval_ndcg": (35.0, 25.8, 33.6),
                                   "detection": (0.0, 0.2, 0.1), "segmentation": (0.0, 1.1, 1.1)},
    ("mae_vitb16", "personalized"): {"classification": (15.8, 12.1, 30.3), "retrieval_ndcg": (30.3, 23.2, 42.9),
                                     "detection": (0.1, 0.3, 0.2), "segmentation": (0.1, 1.2, 1.2)},
}
# Approximate (read off the project page's bar chart, docs/protocol.md §4.2): classification AP x100 per PODS
# test split of the fine-tuned backbone (presumably DINOv2), by positive set. Order: ID, Pose, Distractors,
# Both.
PAPER_METHODS = {
    "real": ("Real Imgs", (77.0, 46.0, 35.0, 27.0)),
    "cut_paste": ("Cut/Paste", (91.5, 64.0, 65.5, 47.5)),
    "masked_dreambooth": ("Masked DB", (91.0, 70.0, 57.5, 50.5)),
    "combined": ("Combined", (92.5, 71.5, 64.5, 56.0)),
}
# Approximate (line chart, docs/protocol.md §4.3): "classification accuracy" x100 vs number of real images;
# dataset and backbone not stated.
PAPER_SCALING = {
    "num_real": (3, 5, 10, 15, 20),
    "real": (36.0, 58.5, 66.5, 68.5, 68.4),
    "real+synthetic": (61.5, 69.5, 75.0, 75.5, 76.2),
}


class ReportError(ValueError):
    """A tracked input of the report is missing or malformed; the message names the file."""


@dataclass
class Result:
    """One evaluated run: a committed experiment (reports/results/<name>) or the current run."""

    name: str
    params: dict
    summary: dict  # evaluate.json: n_instances, instance_split, metrics, ci95, per_split, n
    instances: pd.DataFrame  # instances.csv: instance,category,instance_split,test_split,task,model,value
    train_log: pd.DataFrame | None  # train_log.csv: instance,step,epoch,loss,accuracy


# ----------------------------------------------------------------------------------------------- loading

def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{path}: not valid JSON ({err})") from None


def _check_summary(summary: dict, path: Path) -> dict:
    """Older or hand-made evaluate.json files may lack the optional keys; the tables treat them as empty."""
    if not isinstance(summary, dict) or not isinstance(summary.get("metrics"), dict):
        raise ReportError(f"{path}: no 'metrics' mapping; expected the schema 08_aggregate writes")
    summary.setdefault("ci95", {})
    summary.setdefault("per_split", {})
    summary.setdefault("n", {})
    return summary


def _load(folder: Path, name: str, params: dict) -> Result:
    log = folder / "train_log.csv"
    summary = _check_summary(_read_json(folder / "evaluate.json"), folder / "evaluate.json")
    return Result(name, params, summary, pd.read_csv(folder / "instances.csv"),
                  pd.read_csv(log) if log.is_file() else None)


def load_run(metrics_dir: str | Path = METRICS_DIR, name: str = "current",
             params: Mapping | None = None) -> Result:
    """The current run's tracked metrics (evaluate.json, instances.csv; train_log.csv optional)."""
    folder = Path(metrics_dir)
    missing = [f for f in ("evaluate.json", "instances.csv") if not (folder / f).is_file()]
    if missing:
        raise ReportError(f"{folder}: missing {', '.join(missing)}; the aggregate stage writes them "
                          "(`dvc repro aggregate`)")
    return _load(folder, name, dict(params or {}))


def load_result(folder: str | Path) -> Result:
    """One committed experiment folder, whole or in parts/ (merged); a clear error names the folder and
    what it lacks."""
    folder = Path(folder)
    parts = folder / "parts"
    if parts.is_dir():
        found = sorted(d for d in parts.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not found:
            raise ReportError(f"{parts}: no part folders; save runs with `prpg results save NAME --part P`")
        return merge_parts([load_result(d) for d in found], folder.name, found)
    missing = [f for f in RESULT_FILES if not (folder / f).is_file()]
    if missing:
        raise ReportError(f"result folder {folder} is incomplete: missing {', '.join(missing)} (a result "
                          f"needs {', '.join(RESULT_FILES)}; train_log.csv optional). Save runs with "
                          "`prpg results save NAME`.")
    params = _read_json(folder / "params.json")
    lacking = [k for k in REQUIRED_PARAMS if k not in params]
    if lacking:
        raise ReportError(f"{folder / 'params.json'}: missing {', '.join(lacking)}")
    return _load(folder, folder.name, params)


def _per_instance(instances: pd.DataFrame) -> list[dict]:
    """instances.csv rows back to the per-instance results prpg.aggregate.aggregate takes."""
    out = []
    for (name, category, split), rows in instances.groupby(["instance", "category", "instance_split"], sort=False):
        tables: dict = {}
        for r in rows.itertuples():
            tables.setdefault(r.test_split, {}).setdefault(r.task, {})[r.model] = float(r.value)
        out.append({"instance": name, "category": category, "instance_split": split,
                    "metrics": tables.pop("all", {}), "per_split": tables})
    return out


def merge_parts(parts: Sequence[Result], name: str, folders: Sequence[Path] | None = None,
                seed: int = 0) -> Result:
    """One result from the parts of an experiment run on disjoint instance sets: the per-instance
    metrics and training logs concatenated, the summary recomputed over all instances by
    prpg.aggregate.aggregate (means, bootstrap CI with `seed`, as the aggregate stage with the default
    common.seed) from instances.csv, whose values are rounded to 6 decimals. The parts must agree on
    every params.json key but `instances`."""
    folders = list(folders or [Path(p.name) for p in parts])
    first, where = parts[0], folders[0]
    for part, folder in zip(parts[1:], folders[1:]):
        differ = sorted(k for k in set(first.params) | set(part.params)
                        if k != "instances" and first.params.get(k) != part.params.get(k))
        if differ:
            raise ReportError(f"{folder / 'params.json'} and {where / 'params.json'} differ in {', '.join(differ)}: "
                              "the parts of one result are the same experiment on other instances")
    seen: dict[str, Path] = {}
    for part, folder in zip(parts, folders):
        for inst in part.instances["instance"].unique():
            if inst in seen:
                raise ReportError(f"instance {inst} is in two parts of result {name}: {seen[inst]} and {folder}; "
                                  "each instance belongs to one part")
            seen[inst] = folder
    splits = {p.summary.get("instance_split", "all") for p in parts}
    if len(splits) > 1:
        raise ReportError(f"the parts of result {name} average over different instance splits {sorted(splits)}")

    instances = pd.concat([p.instances for p in parts], ignore_index=True)
    split = splits.pop()
    summary = aggregate(_per_instance(instances), instance_split=None if split == "all" else split,
                        n_boot=1000, seed=seed)
    summary["instance_split"] = split
    synthetic = [p.summary.get("synthetic_positives") for p in parts]
    if all(synthetic):
        counts = [len(p.params.get("instances") or p.instances["instance"].unique()) for p in parts]
        summary["synthetic_positives"] = {
            "mean": float(sum(s["mean"] * n for s, n in zip(synthetic, counts)) / sum(counts)),
            "min": min(s["min"] for s in synthetic),
            "instances_without": sum(s["instances_without"] for s in synthetic)}
    logs = [p.train_log for p in parts]
    params = {**first.params, "instances": sorted(seen), "parts": [f.name for f in folders]}
    return Result(name, params, summary, instances,
                  pd.concat(logs, ignore_index=True) if all(log is not None for log in logs) else None)


def load_results(root: str | Path = RESULTS_DIR) -> list[Result]:
    """Every committed experiment under `root`, by name; none (and no error) if the folder is absent.
    Hidden folders (atomic-write leftovers) are skipped."""
    root = Path(root)
    if not root.is_dir():
        return []
    return [load_result(d) for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]


# ----------------------------------------------------------------------------------------------- helpers

def _rank(value, order: Sequence) -> tuple:
    """Known names in the paper's order first, unknown after, alphabetically."""
    return (order.index(value), "") if value in order else (len(order), str(value))


def _task_label(task: str) -> str:
    return TASK_LABELS.get(task, task)


def _row_label(backbone: str, model: str) -> str:
    name = BACKBONE_LABELS.get(backbone, backbone)
    return name if model == "pretrained" else f"{name}-P" if model == "personalized" else f"{name} ({model})"


def _half_ci(summary: Mapping, task: str, model: str) -> float:
    ci = summary.get("ci95", {}).get(task, {}).get(model)
    return 100 * (ci[1] - ci[0]) / 2 if ci else math.nan


def _value_label(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


def _models(tables: Iterable[Mapping]) -> list[str]:
    found = {m for t in tables for m in t}
    return sorted(found, key=lambda m: _rank(m, MODELS))


# ----------------------------------------------------------------------------------------------- current run

def run_table(summary: Mapping, tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """Every task of one run: per model mean x100 and ± half CI, the gain (personalized - pretrained)
    and n (instances averaged, the fewest over models)."""
    metrics = summary["metrics"]
    tasks = [t for t in (tasks or sorted(metrics, key=lambda t: _rank(t, TASKS))) if t in metrics]
    models = _models(metrics[t] for t in tasks)
    rows = []
    for task in tasks:
        row = {}
        for m in models:
            v = metrics[task].get(m)
            row[m] = 100 * v if v is not None else math.nan
            row[m + PM] = _half_ci(summary, task, m)
        if {"pretrained", "personalized"} <= set(metrics[task]):
            row["gain"] = row["personalized"] - row["pretrained"]
        counts = summary.get("n", {}).get(task, {})
        row["n"] = min(counts.values()) if counts else pd.NA
        rows.append(row)
    return pd.DataFrame(rows, index=pd.Index(tasks, name="task"))


def split_table(summary: Mapping, tasks: Sequence[str] = HEADLINE_TASKS) -> pd.DataFrame:
    """Mean x100 per test split (ID / Pose / Distractors / Both) and over all test images, per task
    and model. Only "All" has a CI (per-split CIs are not aggregated); with per_split {} only All."""
    per_split = summary.get("per_split") or {}
    splits = sorted(per_split, key=lambda s: _rank(s, SPLITS))
    tasks = [t for t in tasks if t in summary["metrics"]]
    rows, index = [], []
    for task in tasks:
        for m in _models([summary["metrics"][task]]):
            row = {"task": task, "model": m}
            for s in splits:
                v = per_split[s].get(task, {}).get(m)
                row[SPLIT_LABELS.get(s, s)] = 100 * v if v is not None else math.nan
            row["All"] = 100 * summary["metrics"][task][m]
            row["All" + PM] = _half_ci(summary, task, m)
            rows.append(row)
            index.append(f"{_task_label(task)} · {m}")
    return pd.DataFrame(rows, index=pd.Index(index, name="row"))


def category_table(instances: pd.DataFrame, instance_split: str = "test",
                   tasks: Sequence[str] = HEADLINE_TASKS) -> pd.DataFrame:
    """Mean x100 per category over all test images (the instances the headline numbers average:
    instance_split 'test', or every instance when it is 'all')."""
    df = instances[instances["test_split"] == "all"]
    if instance_split != "all":
        df = df[df["instance_split"] == instance_split]
    df = df[df["task"].isin(tasks)]
    if df.empty:
        return pd.DataFrame(index=pd.Index([], name="category"))
    wide = df.pivot_table(index="category", columns=["task", "model"], values="value", aggfunc="mean") * 100
    cols = sorted(wide.columns, key=lambda c: (_rank(c[0], TASKS), _rank(c[1], MODELS)))
    wide = wide[cols]
    wide.columns = [f"{_task_label(t)} {m}" for t, m in cols]
    wide.insert(0, "instances", df.groupby("category")["instance"].nunique())
    return wide


# ----------------------------------------------------------------------------------------------- main table

def experiments_table(results: Iterable[Result]) -> pd.DataFrame:
    """What each committed result is (its params.json facts the tables group by) and its size."""
    keys = ("dataset", "backbone", "method", "guidance", "loss", "num_real", "generator_weights", "headline",
            "description")
    results = list(results)
    rows = [{**{k: r.params.get(k) for k in keys}, "instances": r.summary.get("n_instances")}
            for r in results]
    return pd.DataFrame(rows, index=pd.Index([r.name for r in results], name="result"),
                        columns=[*keys, "instances"])


def headline_results(results: Iterable[Result]) -> list[Result]:
    """The results flagged `"headline": true` in params.json: the paper's default setting."""
    return [r for r in results if r.params.get("headline", False)]


def _wide(records: list[dict], row_keys: Sequence[str], col_order: Sequence[str]) -> pd.DataFrame:
    """Records {row keys..., 'col', 'mean', 'pm'} -> one row per row key, columns col and col ±."""
    rows: dict = {}
    for rec in records:
        key = tuple(rec[k] for k in row_keys)
        row = rows.setdefault(key, dict(zip(row_keys, key)))
        row[rec["col"]] = rec["mean"]
        if "pm" in rec:
            row[rec["col"] + PM] = rec["pm"]
    cols = [c for name in col_order for c in (name, name + PM) if any(c in r for r in rows.values())]
    return pd.DataFrame(list(rows.values()), columns=[*row_keys, *cols])


def main_table(results: Iterable[Result], tasks: Sequence[str] = HEADLINE_TASKS) -> pd.DataFrame:
    """The paper's main table: rows backbone x model ("DINOv2", "DINOv2-P"), columns task x dataset
    ("Cls PODS", ...) with mean x100 and its "± " half CI, from the headline results (one per
    dataset and backbone: two would make a cell ambiguous, so that is an error)."""
    chosen = headline_results(results)
    seen: dict = {}
    records = []
    for r in chosen:
        key = (r.params["dataset"], r.params["backbone"])
        if key in seen:
            raise ReportError(f"two headline results for dataset {key[0]}, backbone {key[1]}: {seen[key]} "
                              f"and {r.name}; set \"headline\": false in one params.json")
        seen[key] = r.name
        for task in tasks:
            for model, v in r.summary["metrics"].get(task, {}).items():
                records.append({"backbone": key[1], "model": model, "col": _col(task, key[0]),
                                "mean": 100 * v, "pm": _half_ci(r.summary, task, model)})
    datasets = sorted({d for d, _ in seen}, key=lambda d: _rank(d, DATASETS))
    order = [_col(t, d) for t in tasks for d in datasets]
    table = _wide(records, ("backbone", "model"), order)
    return _main_order(table)


def _col(task: str, dataset: str) -> str:
    return f"{_task_label(task)} {DATASET_LABELS.get(dataset, dataset)}"


def _main_order(table: pd.DataFrame, suffix: str = "") -> pd.DataFrame:
    if table.empty:
        return table.set_axis(pd.Index([], name="row"))
    keys = [(_rank(b, BACKBONES), _rank(m, MODELS)) for b, m in zip(table["backbone"], table["model"])]
    table = table.iloc[sorted(range(len(table)), key=keys.__getitem__)]
    labels = [_row_label(b, m) + suffix for b, m in zip(table["backbone"], table["model"])]
    return table.set_axis(pd.Index(labels, name="row"))


def paper_table() -> pd.DataFrame:
    """The paper's published main table (docs/protocol.md §4.1, exact, x100; no CIs were published), same
    shape as main_table with rows labelled '... [paper]'."""
    records = [{"backbone": b, "model": m, "col": _col(task, d), "mean": v}
               for (b, m), by_task in PAPER_MAIN.items()
               for task, values in by_task.items() for d, v in zip(PAPER_DATASETS, values)]
    order = [_col(t, d) for t in HEADLINE_TASKS for d in PAPER_DATASETS]
    table = _main_order(_wide(records, ("backbone", "model"), order))
    table.index = [f"{_row_label(b, m)}{' (DB)' if m == 'personalized' else ''} [paper]"
                   for b, m in zip(table["backbone"], table["model"])]
    table.index.name = "row"
    table.insert(0, "source", "paper")
    return table


def with_paper(main: pd.DataFrame, paper: pd.DataFrame) -> pd.DataFrame:
    """Our rows, each followed by the paper's row for the same backbone and model, restricted to our
    columns. Only the real datasets (PODS, DF2, Dogs) have paper numbers: a paper row with none of
    our columns (e.g. toybox only) is left out."""
    if main.empty:
        return main
    ours = main.copy()
    ours.insert(0, "source", "ours")
    metric_cols = [c for c in main.columns if c not in ("backbone", "model")]
    pieces = []
    for label, row in ours.iterrows():
        pieces.append(ours.loc[[label]])
        match = paper[(paper["backbone"] == row["backbone"]) & (paper["model"] == row["model"])]
        shared = [c for c in metric_cols if c in paper.columns]
        if not match.empty and match[shared].notna().to_numpy().any():
            pieces.append(match.reindex(columns=ours.columns))
    return pd.concat(pieces)


# ----------------------------------------------------------------------------------------------- methods

def _split_values(summary: Mapping, task: str, model: str) -> dict:
    row = {}
    for s in sorted(summary.get("per_split") or {}, key=lambda s: _rank(s, SPLITS)):
        v = summary["per_split"][s].get(task, {}).get(model)
        row[SPLIT_LABELS.get(s, s)] = 100 * v if v is not None else math.nan
    v = summary["metrics"].get(task, {}).get(model)
    row["All"] = 100 * v if v is not None else math.nan
    row["All" + PM] = _half_ci(summary, task, model)
    return row


SYNTHETIC = "synthetic positives"  # method_table column: mean per instance, when the results tracked it


def method_table(results: Iterable[Result], task: str = "classification",
                 model: str = "personalized") -> pd.DataFrame:
    """Generation-method comparison (docs/protocol.md §4.2): `task` x100 per test split and over all, of the
    personalized model of every result, with one pretrained reference row per (dataset, backbone),
    taken from its headline result, else its first by name. Rows are labelled by method; a method
    run more than once (e.g. a CFG sweep) is labelled 'method (result name)'. Results that tracked it
    (08_aggregate's `synthetic_positives`) add the mean number of synthetic positives per instance."""
    results = sorted(results, key=lambda r: r.name)
    rows, refs = [], {}
    for r in results:
        p = r.params
        group = (p["dataset"], p["backbone"])
        if task not in r.summary["metrics"]:
            continue
        if group not in refs or (r.params.get("headline") and not refs[group].params.get("headline")):
            refs[group] = r
        if model in r.summary["metrics"][task]:
            positives = (r.summary.get("synthetic_positives") or {}).get("mean", math.nan)
            rows.append({"dataset": group[0], "backbone": group[1], "method": p["method"], "result": r.name,
                         **_split_values(r.summary, task, model), SYNTHETIC: positives})
    for (dataset, backbone), r in refs.items():
        if "pretrained" in r.summary["metrics"][task]:
            rows.append({"dataset": dataset, "backbone": backbone, "method": "pretrained", "result": r.name,
                         **_split_values(r.summary, task, "pretrained")})
    if not rows:
        return pd.DataFrame(columns=["dataset", "backbone", "method", "result"]).rename_axis("row")
    df = pd.DataFrame(rows)
    df = df.iloc[sorted(range(len(df)), key=lambda i: (
        _rank(df["dataset"].iloc[i], DATASETS), _rank(df["backbone"].iloc[i], BACKBONES),
        _rank(df["method"].iloc[i], ("pretrained", *METHODS)), df["result"].iloc[i]))]
    split_cols = [SPLIT_LABELS[s] for s in SPLITS if SPLIT_LABELS[s] in df.columns]
    ids = ["dataset", "backbone", "method", "result"]
    other = [c for c in df.columns if c not in {*ids, *split_cols, "All", "All" + PM, SYNTHETIC}]
    extra = [SYNTHETIC] if SYNTHETIC in df.columns and df[SYNTHETIC].notna().any() else []
    df = df[[*ids, *split_cols, *other, "All", "All" + PM, *extra]]
    dup = df.duplicated(["dataset", "backbone", "method"], keep=False)
    labels = [f"{m} ({n})" if d else m for m, n, d in zip(df["method"], df["result"], dup)]
    return df.set_axis(pd.Index(labels, name="row"))


def gain_table(results: Iterable[Result], tasks: Sequence[str] = HEADLINE_TASKS, n_boot: int = 1000,
               seed: int = 0) -> pd.DataFrame:
    """Paired gains: per result and task, the mean over instances of personalized - pretrained (x100,
    from instances.csv, over the instances its summary averages), the half-width of its 95 % bootstrap
    CI (prpg.aggregate.bootstrap_ci over the instances' gains) and how many instances gained.
    Both models are scored on the same instances, so this tells a consistent small gain from noise
    where the two means' own CIs overlap."""

    rows = []
    for r in sorted(results, key=lambda r: (_rank(r.params["dataset"], DATASETS),
                                            _rank(r.params["method"], METHODS), r.name)):
        df = r.instances[r.instances["test_split"] == "all"]
        split = r.summary.get("instance_split", "all")
        if split != "all":
            df = df[df["instance_split"] == split]
        wide = df.pivot_table(index=["instance", "task"], columns="model", values="value")
        if not set(MODELS) <= set(wide.columns):
            continue
        row = {"dataset": r.params["dataset"], "backbone": r.params["backbone"], "method": r.params["method"],
               "instances": int(df["instance"].nunique())}
        for task in tasks:
            if task not in wide.index.get_level_values("task"):
                continue
            gains = 100 * (wide.xs(task, level="task")["personalized"] - wide.xs(task, level="task")["pretrained"])
            gains = gains.dropna().to_numpy()
            low, high = bootstrap_ci(gains, n_boot, seed)
            label = TASK_LABELS.get(task, task)
            row.update({f"{label} gain": float(gains.mean()), f"{label} gain{PM}": (high - low) / 2,
                        f"{label} gained": f"{int((gains > 0).sum())}/{len(gains)}"})
        rows.append(pd.Series(row, name=r.name))
    if not rows:
        return pd.DataFrame(columns=["dataset", "backbone", "method", "instances"]).rename_axis("result")
    return pd.DataFrame(rows).rename_axis("result")


def paper_method_table() -> pd.DataFrame:
    """The paper's chart values (docs/protocol.md §4.2; approximate, read off a bar chart): classification AP
    x100 per PODS test split of the personalized backbone (presumably DINOv2), by method."""
    cols = [SPLIT_LABELS[s] for s in SPLITS]
    rows = [{"source": "paper (approx.)", "dataset": "pods", "method": m, "paper label": label,
             **dict(zip(cols, v))} for m, (label, v) in PAPER_METHODS.items()]
    return pd.DataFrame(rows).set_axis(pd.Index([f"{r['method']} [paper]" for r in rows], name="row"))


def paper_scaling_table() -> pd.DataFrame:
    """The paper's real-data scaling curve (docs/protocol.md §4.3; approximate, read off a line chart),
    x100."""
    df = pd.DataFrame(PAPER_SCALING).set_index("num_real")
    return df.T.rename_axis("row").rename(columns=lambda n: f"num_real={n}")


# ----------------------------------------------------------------------------------------------- sweeps

def sweep_table(results: Iterable[Result], param: str = "guidance", tasks: Sequence[str] = HEADLINE_TASKS,
                model: str = "personalized") -> pd.DataFrame:
    """Headline tasks (mean x100 ± half CI of `model`) against one params.json key (guidance, loss,
    num_real, ...). Results are grouped by dataset, backbone and method (minus the swept key); only
    groups where the key takes at least two values are a sweep and are shown."""
    context = [k for k in ("dataset", "backbone", "method") if k != param]
    groups: dict = {}
    for r in sorted(results, key=lambda r: r.name):
        value = r.params.get(param)
        if value is None or model not in {m for t in tasks for m in r.summary["metrics"].get(t, {})}:
            continue
        groups.setdefault(tuple(r.params[k] for k in context), []).append(r)
    rows = []
    for key, members in groups.items():
        if len({_value_label(r.params[param]) for r in members}) < 2:
            continue
        for r in members:
            row = {**dict(zip(context, key)), param: r.params[param], "result": r.name}
            for t in tasks:
                v = r.summary["metrics"].get(t, {}).get(model)
                if v is not None:
                    row[_task_label(t)] = 100 * v
                    row[_task_label(t) + PM] = _half_ci(r.summary, t, model)
            rows.append(row)
    if not rows:
        return pd.DataFrame(columns=[*context, param, "result"]).rename_axis("row")
    df = pd.DataFrame(rows)
    orders = {"dataset": DATASETS, "backbone": BACKBONES, "method": METHODS}

    def order(i: int) -> tuple:
        v = df[param].iloc[i]
        num = isinstance(v, (int, float)) and not isinstance(v, bool)
        return (*(_rank(df[k].iloc[i], orders[k]) for k in context),
                (0, float(v), "") if num else (1, 0.0, str(v)), df["result"].iloc[i])

    df = df.iloc[sorted(range(len(df)), key=order)]
    metric_cols = [c for t in tasks for c in (_task_label(t), _task_label(t) + PM) if c in df.columns]
    df = df[[*context, param, "result", *metric_cols]]
    dup = df.duplicated([*context, param], keep=False)
    labels = [f"{param}={_value_label(v)}" + (f" ({n})" if d else "")
              for v, n, d in zip(df[param], df["result"], dup)]
    return df.set_axis(pd.Index(labels, name="row"))


# ----------------------------------------------------------------------------------------------- figures

def _placeholder(fig: Figure, text: str) -> Figure:
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="0.4")
    return fig


def _bars(ax, groups: Sequence[str],
          series: Mapping[str, tuple[Sequence[float], Sequence[float] | None]]) -> None:
    """Grouped bars: one group per x label, one bar per series (values, optional half-CI error bars)."""
    palette = sns.color_palette("deep", max(len(series), 1))
    x = np.arange(len(groups))
    width = 0.8 / max(len(series), 1)
    for k, (name, (values, err)) in enumerate(series.items()):
        pos = x - 0.4 + width * (k + 0.5)
        vals = np.asarray(values, float)
        ax.bar(pos, np.nan_to_num(vals), width, label=name, color=palette[k])
        if err is not None and np.isfinite(np.asarray(err, float)).any():
            ax.errorbar(pos, vals, yerr=np.asarray(err, float), fmt="none", ecolor="0.2", capsize=2, lw=1)
    ax.set_xticks(x, groups)
    ax.grid(axis="y", alpha=0.3)
    ax.set_axisbelow(True)


def plot_gains(summary: Mapping, tasks: Sequence[str] | None = None) -> Figure:
    """Pretrained vs personalized (and any other model) per task, x100, with 95 % CI error bars."""
    table = run_table(summary, tasks)
    models = [c for c in table.columns if c not in ("gain", "n") and not c.endswith(PM)]
    fig = Figure(figsize=(max(6.0, 0.7 * len(table) + 2), 4), layout="constrained")
    if table.empty:
        return _placeholder(fig, "no metrics")
    ax = fig.add_subplot()
    _bars(ax, [_task_label(t) for t in table.index],
          {m: (table[m], table[m + PM]) for m in models})
    ax.set_ylabel("score x100 (95 % CI)")
    ax.set_title(f"Pretrained vs personalized, mean over {summary.get('n_instances', '?')} instances")
    ax.tick_params(axis="x", labelrotation=45 if len(table) > 6 else 0)
    ax.legend(frameon=False)
    return fig


def plot_methods(method_df: pd.DataFrame) -> Figure:
    """method_table as grouped bars: x = test split, one bar per method; one panel per dataset and
    backbone."""
    split_cols = [c for c in (*SPLIT_LABELS.values(),) if c in method_df.columns]
    groups = list(dict.fromkeys(zip(method_df.get("dataset", []), method_df.get("backbone", []))))
    fig = Figure(figsize=(10, 3.6 * max(len(groups), 1)), layout="constrained")
    if method_df.empty or not split_cols:
        return _placeholder(fig, "no committed experiments yet")
    axes = fig.subplots(len(groups), 1, squeeze=False)[:, 0]
    for ax, (dataset, backbone) in zip(axes, groups):
        sub = method_df[(method_df["dataset"] == dataset) & (method_df["backbone"] == backbone)]
        cols = [c for c in split_cols if sub[c].notna().any()]  # a dataset without splits: All only
        series = {label: (row[cols].to_numpy(float),
                          [row.get(c + PM, math.nan) for c in cols]) for label, row in sub.iterrows()}
        _bars(ax, cols, series)
        ax.set_title(f"{DATASET_LABELS.get(dataset, dataset)} · {BACKBONE_LABELS.get(backbone, backbone)}")
        ax.set_ylabel("AP x100")
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return fig


def plot_sweep(df: pd.DataFrame, param: str) -> Figure:
    """sweep_table as lines: one panel per task, x = the swept value, one line per (dataset, backbone,
    method), CI error bars. Numeric values keep their spacing; others are categories in table order."""
    tasks = [c for c in df.columns if c in TASK_LABELS.values() or c in TASKS]
    fig = Figure(figsize=(3.2 * max(len(tasks), 1) + 1, 3.8), layout="constrained")
    if df.empty or not tasks:
        return _placeholder(fig, f"no {param} sweep among the committed experiments")
    context = [k for k in ("dataset", "backbone", "method") if k in df.columns]
    values = list(dict.fromkeys(df[param]))
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    pos = {v: (float(v) if numeric else i) for i, v in enumerate(values)}
    palette = sns.color_palette("deep", max(df.groupby(context, sort=False).ngroups, 1))
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for ax, task in zip(axes, tasks):
        for k, (key, sub) in enumerate(df.groupby(context, sort=False)):
            label = " · ".join(str(v) for v in (key if isinstance(key, tuple) else (key,)))
            ax.errorbar([pos[v] for v in sub[param]], sub[task], yerr=sub.get(task + PM), marker="o",
                        capsize=2, color=palette[k], label=label)
        ticks = sorted(values, key=pos.__getitem__)
        ax.set_xticks([pos[v] for v in ticks], [_value_label(v) for v in ticks])
        ax.set_title(task)
        ax.set_xlabel(param)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("score x100 (95 % CI)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", frameon=False, fontsize=8, ncol=3)
    return fig


def plot_training_curves(train_log: pd.DataFrame | None, window: int = 10) -> Figure:
    """Contrastive training loss and triplet accuracy per instance (rolling mean over `window` logged
    steps), thin lines, with the mean over instances in black."""
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    if train_log is None or train_log.empty:
        return _placeholder(fig, "no training log")
    axes = fig.subplots(1, 2)
    log = train_log.sort_values(["instance", "step"])
    instances = list(dict.fromkeys(log["instance"]))
    palette = sns.color_palette("husl", len(instances))
    for ax, col in zip(axes, ("loss", "accuracy")):
        smooth = log.groupby("instance", sort=False)[col].transform(
            lambda s: s.rolling(window, min_periods=1).mean())
        for k, inst in enumerate(instances):
            sel = log["instance"] == inst
            ax.plot(log.loc[sel, "step"], smooth[sel], lw=0.8, alpha=0.6, color=palette[k],
                    label=inst if len(instances) <= 10 else None)
        mean = smooth.groupby(log["step"]).mean()
        ax.plot(mean.index, mean.to_numpy(), color="black", lw=2, label="mean")
        ax.set_xlabel("step")
        ax.set_ylabel(col)
        ax.grid(alpha=0.3)
    axes[0].set_title(f"contrastive loss ({len(instances)} instances)")
    axes[1].set_title("triplet accuracy")
    axes[1].legend(frameon=False, fontsize=7, ncol=2)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """PNG without the matplotlib version stamp, so the same inputs give the same bytes; atomic."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return write_bytes_atomic(Path(path), buf.getvalue())


# ----------------------------------------------------------------------------------------------- tables out

def _fmt(v, digits: int) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        return f"{v:.{digits}f}"
    return str(v)


def display_frame(df: pd.DataFrame, hide: Sequence[str] = (), digits: int = 1) -> pd.DataFrame:
    """Strings for reading: each `X` with an `X ±` companion becomes "45.0 ± 5.0" (just "45.0" where
    there is no CI), floats to `digits`, missing values blank; `hide` drops columns."""
    out = {}
    for c in df.columns:
        if c in hide or (str(c).endswith(PM) and str(c)[:-len(PM)] in df.columns):
            continue
        col = [_fmt(v, digits) for v in df[c]]
        if f"{c}{PM}" in df.columns:
            pm = [_fmt(v, digits) for v in df[f"{c}{PM}"]]
            col = [f"{a} ± {b}" if a and b else a for a, b in zip(col, pm)]
        out[c] = col
    return pd.DataFrame(out, index=df.index, columns=list(out))


def to_markdown(df: pd.DataFrame, hide: Sequence[str] = (), digits: int = 1) -> str:
    """A GitHub markdown table of display_frame(df) (no tabulate: it is not a declared dependency)."""
    shown = display_frame(df, hide, digits)
    if shown.empty and not len(shown.columns):
        return "_(no rows)_\n"
    head = [str(df.index.name or ""), *map(str, shown.columns)]
    body = [[str(i), *row] for i, row in zip(shown.index, shown.itertuples(index=False))]
    if not body:
        body = [["_(no rows)_", *[""] * len(shown.columns)]]

    def line(cells):
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    right = [pd.api.types.is_numeric_dtype(df[c]) for c in shown.columns]
    rule = "|" + "|".join([":---", *("---:" if r else ":---" for r in right)]) + "|"
    return "\n".join([line(head), rule, *map(line, body)]) + "\n"


def write_tables(df: pd.DataFrame, stem: str, out_dir: str | Path = TABLES_DIR, hide: Sequence[str] = (),
                 digits: int = 1, title: str | None = None) -> tuple[Path, Path]:
    """<stem>.md (for reading, `hide` columns dropped, means merged with ± CI) and <stem>.csv (every
    column, numeric, 4 decimals), both atomic."""
    out_dir = Path(out_dir)
    md = (f"{title}\n\n" if title else "") + to_markdown(df, hide, digits)
    md_path = write_text_atomic(out_dir / f"{stem}.md", md)
    csv_path = write_text_atomic(out_dir / f"{stem}.csv", df.to_csv(float_format="%.4f", lineterminator="\n"))
    return md_path, csv_path


# nbconvert's lab template with its head scripts left out: require.js, MathJax, mermaid and the widget
# manager all load from a CDN, and the report needs none of them (no widgets, math or diagrams; its
# figures are embedded PNGs, its CSS is inline). The page then loads nothing from the network.
_OFFLINE_TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{%- block jupyter_widgets -%}{%- endblock jupyter_widgets -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
"""
# A resource the page would load from elsewhere: a src/href/url() naming an http(s) address (links in
# CSS comments and in the text are not loads).
REMOTE_RESOURCE = re.compile(r"""(?:\b(?:src|href)\s*=\s*["']?|url\(\s*["']?|@import\s+["']|\bimport\(\s*["'])"""
                             r"""(?:https?:)?//""", re.IGNORECASE)


def remote_resources(html: str) -> list[str]:
    """The places where the page would load something over the network (empty: it renders offline)."""
    return [html[max(0, m.start() - 40): m.end() + 60] for m in REMOTE_RESOURCE.finditer(html)]


def export_html(executed_ipynb: str | Path, out_html: str | Path) -> Path:
    """The executed report notebook as one self-contained HTML page that renders offline (nbconvert's
    HTMLExporter, _OFFLINE_TEMPLATE), atomic; the same notebook outputs give the same bytes (cell ids
    numbered)."""
    import nbformat
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    nb = nbformat.read(str(executed_ipynb), as_version=4)
    for i, cell in enumerate(nb.cells):  # jupytext and papermill draw random cell ids: a re-run of the
        cell["id"] = f"cell-{i}"         # same report would rewrite the committed page
    exporter = HTMLExporter(extra_loaders=[DictLoader({"prpg_offline.html.j2": _OFFLINE_TEMPLATE})],
                            template_file="prpg_offline.html.j2")
    body, _ = exporter.from_notebook_node(nb)
    if remote := remote_resources(body):
        raise ReportError(f"{executed_ipynb}: its HTML export would load {len(remote)} resource(s) from the network, "
                          f"first: ...{remote[0]}...; embed it (a figure: display a PNG) instead of linking it")
    return write_text_atomic(Path(out_html), body)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m prpg.report html EXECUTED.ipynb OUT.html`: the stage's HTML export step."""
    parser = argparse.ArgumentParser(prog="python -m prpg.report")
    sub = parser.add_subparsers(dest="command", required=True)
    h = sub.add_parser("html", help="export an executed notebook to HTML")
    h.add_argument("executed", type=Path)
    h.add_argument("out", type=Path)
    args = parser.parse_args(argv)
    print(f"wrote {export_html(args.executed, args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
