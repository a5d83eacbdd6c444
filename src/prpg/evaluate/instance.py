"""Per-instance evaluation of several backbones on the four tasks (docs/protocol.md §2), and the mean over
instances with a bootstrap CI.

Result schema (plain floats in [0, 1]; keys stable, the report reads them):
    {"instance", "category", "instance_split",
     "metrics": {TASK: {MODEL: value}},                  # all test images ("all")
     "per_split": {SPLIT: {TASK: {MODEL: value}}}}        # PODS / toybox test splits; {} without annos
A metric that is undefined for an instance (no positives, no queries or no dense ground truth in a
split) is left out, never NaN; `aggregate` averages each (task, model) over the instances that have it.

Per test split (annos `test_split`): positives are the instance's images of that split and negatives
ALL other instances' images of the same split, for classification and detection/segmentation alike,
so a split's score measures that condition only (its positive rate is that of the whole test set).
Retrieval restricts the queries to the split; the gallery is always every train image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from prpg.core.configs import EvalConfig
from prpg.data import TEST_SPLITS, Dataset, DatasetError, ImageRecord
from prpg.evaluate.dense import dense_predictions
from prpg.evaluate.features import cached_features
from prpg.evaluate.protocol import global_feature
from prpg.evaluate.metrics import (
    DenseRecord,
    classification_ap,
    coco_metrics,
    max_similarity,
    retrieval_metrics,
)

if TYPE_CHECKING:
    from prpg.core.backbones import Backbone

GLOBAL_TASKS = ("classification", "retrieval", "retrieval_ndcg", "retrieval_mrr", "retrieval_top10")
DENSE_TASKS = tuple(f"{t}{m}" for t in ("detection", "segmentation") for m in ("", "_ap50", "_f1", "_f1_50"))
TASKS = GLOBAL_TASKS + DENSE_TASKS  # with the default top_k = 10


def task_names(cfg: EvalConfig) -> tuple[str, ...]:
    names = []
    if "classification" in cfg.tasks:
        names.append("classification")
    if "retrieval" in cfg.tasks:
        names += ["retrieval", "retrieval_ndcg", "retrieval_mrr", f"retrieval_top{cfg.top_k}"]
    if "dense" in cfg.tasks:
        names += list(DENSE_TASKS)
    return tuple(names)


def splits_of(records: Sequence[ImageRecord]) -> list[str]:
    """The test splits present, in the paper's order (unknown labels after, sorted)."""
    found = {r.test_split for r in records if r.test_split is not None}
    return [s for s in TEST_SPLITS if s in found] + sorted(found - set(TEST_SPLITS))


def global_metrics(train: torch.Tensor, train_instances: Sequence[str], test: torch.Tensor,
                   test_instances: Sequence[str], instance: str, top_k: int = 10) -> dict[str, float]:
    """Classification (score = max cosine to the instance's train images, AP over all the given test
    images) and retrieval (the instance's test images query all train images)."""
    own = np.asarray(train_instances) == instance
    if not own.any():
        raise DatasetError(f"no train image of {instance!r}; classification compares to them")
    labels = np.asarray(test_instances) == instance
    out = {}
    ap = classification_ap(labels, max_similarity(test, train[torch.from_numpy(own)]))
    if ap is not None:
        out["classification"] = ap
    if labels.any():
        sims = (test[torch.from_numpy(labels)].float() @ train.float().T).numpy()
        out.update(retrieval_metrics(sims, own, top_k) or {})
    return out


def dense_metrics(records: Sequence[DenseRecord]) -> dict[str, float]:
    out = {}
    for task, iou_type in (("detection", "bbox"), ("segmentation", "segm")):
        m = coco_metrics(list(records), iou_type)
        if m is not None:
            out.update({task: m["ap"], f"{task}_ap50": m["ap50"], f"{task}_f1": m["f1"],
                        f"{task}_f1_50": m["f1_50"]})
    return out


def _put(table: dict, values: Mapping[str, float], model: str, wanted: Sequence[str]) -> None:
    for task, v in values.items():
        if task not in wanted:
            continue
        v = float(v)
        if not (np.isfinite(v) and -1e-9 <= v <= 1 + 1e-9):
            raise RuntimeError(f"{task} of {model} is {v}; metrics must be finite and in [0, 1] (a bug)")
        table.setdefault(task, {})[model] = min(max(v, 0.0), 1.0)


def evaluate_instance(ds: Dataset, instance: str, models: Mapping[str, Backbone],
                      cfg: EvalConfig, cache_dir: Path | None = None) -> dict:
    """Every model of `models` (e.g. {"pretrained": ..., "personalized": ...}) on the instance's tasks.
    Features of the models named in cfg.cache_models are cached under cache_dir (features.py)."""
    if not models:
        raise ValueError("evaluate_instance needs at least one model in `models`")
    unknown = set(cfg.tasks) - {"classification", "retrieval", "dense"}
    if unknown:
        raise ValueError(f"EvalConfig.tasks: unknown {sorted(unknown)}; use classification, retrieval, dense")
    inst = ds.instance(instance)
    wanted = task_names(cfg)
    train, test = ds.images("train"), ds.images("test")
    dense_images = ds.dense_images() if "dense" in cfg.tasks else []
    splits = splits_of(test + dense_images)
    metrics: dict = {}
    per_split: dict = {s: {} for s in splits}
    for name, bb in models.items():
        cache = cache_dir if cache_dir is not None and name in cfg.cache_models else None
        if {"classification", "retrieval"} & set(cfg.tasks):
            kw = dict(root=ds.root, feature=global_feature(bb, cfg.eval_feature, cfg.protocol), batch=cfg.batch,
                      device=cfg.device, dataset=ds.name, protocol=cfg.protocol)
            tr, te = cached_features(bb, train, cache, **kw), cached_features(bb, test, cache, **kw)
            train_of, test_of = [r.instance for r in train], np.asarray([r.instance for r in test])
            test_split = np.asarray([r.test_split for r in test], dtype=object)
            _put(metrics, global_metrics(tr, train_of, te, test_of, instance, cfg.top_k), name, wanted)
            for s in splits:
                sel = test_split == s
                if sel.any():
                    _put(per_split[s], global_metrics(tr, train_of, te[torch.from_numpy(sel)], test_of[sel],
                                                      instance, cfg.top_k), name, wanted)
        if "dense" in cfg.tasks:
            if not dense_images:
                print(f"{ds.root}: no dense-eval images (test_dense/, or test/ with test_masks/); "
                      "detection and segmentation are left out")
                continue
            recs = dense_predictions(ds, instance, bb, cfg, cache)
            _put(metrics, dense_metrics(recs), name, wanted)
            for s in splits:
                _put(per_split[s], dense_metrics([r for r in recs if r.test_split == s]), name, wanted)
    return {"instance": instance, "category": inst.category, "instance_split": inst.split,
            "metrics": metrics, "per_split": {s: t for s, t in per_split.items() if t}}
