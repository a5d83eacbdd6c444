"""Means over instances with bootstrap CIs: the aggregate stage's headline numbers and the report's
merge of a result's parts. numpy only (no torch), so the report needs no model library to import it."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from prpg.data.dataset import TEST_SPLITS


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean: n_boot resamples of the instances, with replacement,
    from numpy's default_rng(seed). The same seed gives the same resampled instance sets to every
    task and model with the same count (a paired bootstrap)."""
    values = np.asarray(values, np.float64)
    idx = np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))
    low, high = np.percentile(values[idx].mean(axis=1), [2.5, 97.5])
    return float(low), float(high)


def _collect(tables: Sequence[Mapping]) -> dict[str, dict[str, list[float]]]:
    out: dict = {}
    for table in tables:
        for task, by_model in table.items():
            for model, v in by_model.items():
                out.setdefault(task, {}).setdefault(model, []).append(float(v))
    return out


def aggregate(per_instance: Sequence[Mapping], instance_split: str | None = "test", n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Mean over the instances whose instance_split matches (the paper's headline numbers are on PODS's
    test instances; None takes all, e.g. a dataset without class_to_split), with a 95% bootstrap CI
    (metrics.bootstrap_ci). A (task, model) missing for an instance is averaged over the others;
    "n" says over how many.
        {"n_instances", "metrics": {TASK: {MODEL: mean}}, "ci95": {TASK: {MODEL: [low, high]}},
         "per_split": {SPLIT: {TASK: {MODEL: mean}}}, "n": {TASK: {MODEL: count}}}"""
    chosen = [r for r in per_instance if instance_split is None or r["instance_split"] == instance_split]
    if not chosen:
        found = sorted({str(r["instance_split"]) for r in per_instance})
        raise ValueError(f"no result with instance_split {instance_split!r} (found {found}); "
                         "pass instance_split=None to average over all")
    values = _collect([r["metrics"] for r in chosen])
    split_names = sorted({s for r in chosen for s in r["per_split"]},
                         key=lambda s: (TEST_SPLITS.index(s) if s in TEST_SPLITS else len(TEST_SPLITS), s))
    per_split = {s: _collect([r["per_split"].get(s, {}) for r in chosen]) for s in split_names}
    def mean(table):
        return {t: {m: float(np.mean(v)) for m, v in ms.items()} for t, ms in table.items()}

    return {
        "n_instances": len(chosen),
        "metrics": mean(values),
        "ci95": {t: {m: list(bootstrap_ci(v, n_boot, seed)) for m, v in ms.items()}
                 for t, ms in values.items()},
        "per_split": {s: mean(table) for s, table in per_split.items()},
        "n": {t: {m: len(v) for m, v in ms.items()} for t, ms in values.items()},
    }


# The headline metrics file (reports/metrics/headline.json, the pipeline's DVC `metrics`): per task the
# pretrained and personalized means and their difference, under short keys so that `dvc exp show` fits a
# terminal. "ret" is retrieval NDCG, the paper's "Ret" column (prpg.report.HEADLINE_TASKS).
HEADLINE = {"cls": "classification", "ret": "retrieval_ndcg", "det": "detection", "seg": "segmentation"}


def headline(summary: Mapping, digits: int = 4) -> dict:
    """{"n": instances, KEY: {"pre": mean, "per": mean, "gain": per - pre}} for each HEADLINE task that
    `summary` (aggregate's result) holds for both models, rounded to `digits`."""
    out: dict = {"n": int(summary["n_instances"])}
    for key, task in HEADLINE.items():
        means = summary["metrics"].get(task, {})
        if "pretrained" in means and "personalized" in means:
            pre, per = float(means["pretrained"]), float(means["personalized"])
            out[key] = {"pre": round(pre, digits), "per": round(per, digits), "gain": round(per - pre, digits)}
    return out
