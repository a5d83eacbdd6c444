"""prpg.data: read, check and download PODS-format datasets (PODS, DF2, Dogs, toybox, your own)."""

from prpg.data.check import Problem, check_dataset, format_report
from prpg.data.dataset import (
    INSTANCE_SPLITS,
    SPLITS,
    TEST_SPLITS,
    Dataset,
    DatasetError,
    ImageRecord,
    Instance,
    check_dataset_name,
    layout_problems,
    load_dataset,
    natural_key,
)
from prpg.data.download import DATASET_URLS, DownloadError, download_dataset
from prpg.data.images import IMAGE_EXTENSIONS, load_image, load_mask, mask_to_box, to_rgb
from prpg.data.names import NAME_RULE, BadNameError, check_name, contained

__all__ = [
    "DATASET_URLS",
    "IMAGE_EXTENSIONS",
    "INSTANCE_SPLITS",
    "NAME_RULE",
    "SPLITS",
    "TEST_SPLITS",
    "BadNameError",
    "Dataset",
    "DatasetError",
    "DownloadError",
    "ImageRecord",
    "Instance",
    "Problem",
    "check_dataset",
    "check_dataset_name",
    "check_name",
    "contained",
    "download_dataset",
    "format_report",
    "layout_problems",
    "load_dataset",
    "load_image",
    "load_mask",
    "mask_to_box",
    "natural_key",
    "to_rgb",
]
