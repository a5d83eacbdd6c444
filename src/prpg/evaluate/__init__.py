"""Stage "evaluate": the four downstream tasks of the paper (docs/protocol.md §2), per instance.

- classification: AP of "is this test image the instance?", score = max cosine to its train images
- retrieval: the instance's test images query all train images (mAP, NDCG, MRR, top-k)
- detection / segmentation: one box and mask per dense image from patch similarity, COCO AP and F1

evaluate_instance returns one instance's metrics for several models; aggregate (prpg.aggregate)
averages instances.
Defaults follow the paper except where a reference bug is fixed behind an option: box_geometry
(docs/protocol.md §5.16) and eval_feature (docs/protocol.md §5.10, the paper's "cls" stays the default).
"""

from prpg.core.configs import EvalConfig
from prpg.evaluate.dense import dense_predictions, predict, threshold_mask
from prpg.evaluate.features import (
    DenseFeatures,
    cached_dense_features,
    cached_features,
    dense_records,
    embed_records,
    fingerprint,
)
from prpg.evaluate.geometry import PadGeometry, box_cells, box_on_grid
from prpg.evaluate.instance import TASKS, evaluate_instance, global_metrics, task_names
from prpg.evaluate.metrics import (
    DenseRecord,
    classification_ap,
    coco_metrics,
    retrieval_metrics,
)
from prpg.aggregate import aggregate, bootstrap_ci  # torch-free, so the report can use them alone

__all__ = [
    "TASKS",
    "DenseFeatures",
    "DenseRecord",
    "EvalConfig",
    "PadGeometry",
    "aggregate",
    "bootstrap_ci",
    "box_cells",
    "box_on_grid",
    "cached_dense_features",
    "cached_features",
    "classification_ap",
    "coco_metrics",
    "dense_predictions",
    "dense_records",
    "embed_records",
    "evaluate_instance",
    "fingerprint",
    "global_metrics",
    "predict",
    "retrieval_metrics",
    "task_names",
    "threshold_mask",
]
