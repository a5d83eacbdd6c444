"""Metrics of the four tasks on precomputed scores, through sklearn and pycocotools.

Every function returns None where the metric is undefined (no positives, no queries, no ground truth)
so that callers can leave the key out: results are JSON, and NaN is not allowed there.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from sklearn.metrics import average_precision_score, ndcg_score


# --- classification ------------------------------------------------------------------------------


def max_similarity(queries: torch.Tensor, references: torch.Tensor) -> np.ndarray:
    """(N,) max cosine of each L2-normalized query to the references (the instance's train images)."""
    return (queries.float() @ references.float().T).max(dim=1).values.numpy().astype(np.float64)


def classification_ap(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """Average precision (PR-AUC, sklearn; tied scores form one threshold); None without positives."""
    labels = np.asarray(labels, bool)
    if not labels.any():
        return None
    return float(average_precision_score(labels, scores))


# --- retrieval -----------------------------------------------------------------------------------


def retrieval_metrics(sims: np.ndarray, relevant: np.ndarray, top_k: int = 10) -> dict[str, float] | None:
    """Queries (rows of `sims`, Q x G) ranking the gallery; `relevant` (G,) marks the instance's items.

    - retrieval: mean over queries of sklearn average precision (ours; the reference has no mAP)
    - retrieval_ndcg: sklearn ndcg_score over the full ranking, binary relevance, log2 discount (the
      reference's NDCG; sklearn averages over tied scores where the reference breaks ties arbitrarily)
    - retrieval_mrr, retrieval_top{k}: from the rank of the first relevant item, ties counted against
      the query (an irrelevant item tied with the best relevant one ranks before it), so a constant
      model gets no credit.
    None without queries or without a relevant gallery item."""
    sims = np.asarray(sims, np.float64)
    relevant = np.asarray(relevant, bool)
    if sims.ndim != 2 or sims.shape[0] == 0 or not relevant.any():
        return None
    rel = np.broadcast_to(relevant, sims.shape).astype(int)
    ap = np.mean([average_precision_score(rel[q], sims[q]) for q in range(sims.shape[0])])
    best = np.where(relevant, sims, -np.inf).max(axis=1, keepdims=True)
    rank = 1 + ((sims >= best) & ~relevant).sum(axis=1)
    return {"retrieval": float(ap), "retrieval_ndcg": float(ndcg_score(rel, sims)),
            "retrieval_mrr": float(np.mean(1.0 / rank)),
            f"retrieval_top{top_k}": float(np.mean(rank <= top_k))}


# --- detection and segmentation ------------------------------------------------------------------


def encode(mask: np.ndarray) -> dict:
    return mask_utils.encode(np.asfortranarray(np.asarray(mask, np.uint8)))


@dataclass(frozen=True)
class DenseRecord:
    """One dense-eval image: its ground truth (None: not the target instance, or an empty mask) and the
    one prediction (None: nothing found). Masks are kept as COCO RLE (1200 PODS masks at ~1 Mpx)."""

    height: int
    width: int
    gt: dict | None  # RLE
    pred: dict | None  # RLE
    score: float
    test_split: str | None = None
    path: str = ""
    # Explicit COCO (x, y, w, h) boxes (the reference protocol's, evaluation.protocol); None: the mask's box.
    gt_box: tuple[float, ...] | None = None
    pred_box: tuple[float, ...] | None = None

    @classmethod
    def from_masks(cls, height: int, width: int, gt: np.ndarray | None, pred: np.ndarray | None,
                   score: float, test_split: str | None = None, path: str = "",
                   gt_box: tuple[float, ...] | None = None, pred_box: tuple[float, ...] | None = None) -> DenseRecord:
        """Empty masks count as absent; an absent prediction scores 0. gt_box / pred_box, when given,
        replace the masks' boxes for detection (they go with a present mask only)."""
        gt_rle = encode(gt) if gt is not None and np.any(gt) else None
        pred_rle = encode(pred) if pred is not None and np.any(pred) else None
        return cls(int(height), int(width), gt_rle, pred_rle, float(score) if pred_rle is not None else 0.0,
                   test_split, path, gt_box if gt_rle is not None else None,
                   pred_box if pred_rle is not None else None)


def _box(rle: dict) -> list[float]:
    return [float(v) for v in mask_utils.toBbox(rle)]  # (x, y, w, h), w = x1 - x0 as prpg.data.mask_to_box


def coco_inputs(records: list[DenseRecord], iou_type: str) -> tuple[dict, list[dict]]:
    """The COCO ground-truth dataset and detections, one category (id 1).

    Every image is listed; only target images with a non-empty mask get a category-1 annotation. The
    other images have none, so a detection there matches nothing and COCOeval counts it as a false
    positive ranked by its score (the reference gives them a category-0 GT, which COCOeval ignores: the
    same). An empty prediction gives no detection at all (the reference writes a score-0 category-0
    record, which COCOeval ignores too: the same numbers)."""
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    images = [{"id": i + 1, "height": r.height, "width": r.width} for i, r in enumerate(records)]
    anns, dets = [], []
    for i, r in enumerate(records):
        if r.gt is not None:
            gt_box = _box(r.gt) if r.gt_box is None else [float(v) for v in r.gt_box]
            ann = {"id": len(anns) + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "bbox": gt_box}
            if iou_type == "segm":
                ann.update(segmentation=r.gt, area=float(mask_utils.area(r.gt)))
            else:
                ann["area"] = ann["bbox"][2] * ann["bbox"][3]
            anns.append(ann)
        if r.pred is not None:
            det = {"image_id": i + 1, "category_id": 1, "score": float(r.score)}
            box = _box(r.pred) if r.pred_box is None else [float(v) for v in r.pred_box]
            det.update({"segmentation": r.pred} if iou_type == "segm" else {"bbox": box})
            dets.append(det)
    gt = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "object"}]}
    return gt, dets


def run_cocoeval(gt: dict, dets: list[dict], iou_type: str) -> COCOeval:
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress and tables
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(dets), iouType=iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def reference_f1(ev: COCOeval) -> tuple[float, float]:
    """(F1 averaged over IoU .5:.95, F1 at IoU .5), the reference's formula: per IoU threshold and
    recall point, precision and recall averaged over area ranges and maxDets (-1 = undefined, skipped),
    F1 = 2PR / (P + R + 1e-6), averaged over the recall points."""
    precision = np.where(ev.eval["precision"] == -1, np.nan, ev.eval["precision"])  # (T, R, K, A, M)
    recall = np.where(ev.eval["recall"] == -1, np.nan, ev.eval["recall"])  # (T, K, A, M)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-undefined slices (no GT of that size)
        p = np.nanmean(precision, axis=(2, 3, 4))  # (T, R)
        r = np.nanmean(recall, axis=(1, 2, 3))[:, None]  # (T, 1)
    f1 = np.nan_to_num(2 * p * r / (p + r + 1e-6)).mean(axis=1)  # (T,)
    return float(f1.mean()), float(f1[int(np.argmin(np.abs(ev.params.iouThrs - 0.5)))])


def coco_metrics(records: list[DenseRecord], iou_type: str) -> dict[str, float] | None:
    """{"ap": AP@[.5:.95], "ap50", "f1", "f1_50"}; None without any ground truth (undefined). Ground
    truth but no detection at all is 0 everywhere (pycocotools cannot load an empty result list)."""
    gt, dets = coco_inputs(records, iou_type)
    if not gt["annotations"]:
        return None
    if not dets:
        return {"ap": 0.0, "ap50": 0.0, "f1": 0.0, "f1_50": 0.0}
    ev = run_cocoeval(gt, dets, iou_type)
    f1, f1_50 = reference_f1(ev)
    return {"ap": max(0.0, float(ev.stats[0])), "ap50": max(0.0, float(ev.stats[1])),
            "f1": f1, "f1_50": f1_50}
