"""A throwaway copy of this repository (tracked + untracked-not-ignored files) as its own git repo,
with a micro params.yaml, so pipeline tests run `dvc` exactly as a user would, off the real tree."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

MICRO_TOYBOX = {
    "size": 64,
    "instances_per_category": 3,
    "val_per_category": 1,
    "pool_per_category": 2,
    "test_per_split": 2,
    "dense_per_split": 3,
    "pool_test_per_split": 1,
}


MICRO_PRETRAIN = {
    "encoder": {"steps": 3, "batch": 4},
    # object_weight > 1 (on object boxes) and object_zoom: the notebook reads the pool masks and adds the close-ups (optional paths run too).
    "generator": {"vae_steps": 3, "vae_batch": 2, "unet_steps": 3, "unet_batch": 2, "object_weight": 2.0,
                  "object_region": "box", "object_zoom": [1.2, 2.0]},
    "dreambooth": {"steps": 2},
    "gates": {"samples_per_category": 1, "sample_steps": 2, "dreambooth_instance": "mug_01",
              "dreambooth_class_images": 1, "dreambooth_samples": 1},
}

# One instance, tiny step counts: the generation stages end to end in seconds.
MICRO_RUN = {
    "run": {"categories": ["mug"], "instances": {"mug_01": {"category": "mug"}}},
    "personalize": {"steps": 2},
    "synthesize": {"positives": {"n": 4, "prompt_mode": "class", "steps": 2, "batch": 4},
                   "cut_paste": {"n": 4}},
    "priors": {"class_images": {"n": 2, "steps": 2, "batch": 2}, "negatives": {"n": 4, "steps": 2, "batch": 4},
               "backgrounds": {"n": 2, "steps": 2, "batch": 2}},
    "filter": {"n_keep": 2, "max_attempts": 6},
}


def _merge(base: dict, override: dict) -> dict:
    for k, v in override.items():
        base[k] = _merge(dict(base.get(k) or {}), v) if isinstance(v, dict) and k != "instances" else v
    return base


# What the pipeline writes (left out of the copy so the tests see fresh outputs). The frozen zoo stage's
# outputs (models/toybox, reports/executed, toybox_models.json, its figures) are copied like a clone has them.
REGENERATED = ("outputs/", "reports/tables/", "reports/report.html", "reports/figures/report_",
               "reports/figures/toybox_gallery.png", "reports/metrics/data.json", "reports/metrics/evaluate.json",
               "reports/metrics/headline.json",
               "reports/metrics/instances.csv", "reports/metrics/positives.csv", "reports/metrics/train_log.csv",
               "reports/results/toybox-")


def env() -> dict[str, str]:
    """The project's environment first on PATH (stages call python / prpg by name)."""
    e = dict(os.environ)
    e["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{e.get('PATH', '')}"
    e.update(GIT_AUTHOR_NAME="prpg-test", GIT_AUTHOR_EMAIL="test@prpg", GIT_COMMITTER_NAME="prpg-test",
             GIT_COMMITTER_EMAIL="test@prpg", DVC_NO_ANALYTICS="1", PYTHONUNBUFFERED="1")
    return e


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=env(), capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def copy_repo(dst: Path, toybox: dict | None = None, params: dict | None = None) -> Path:
    """Copy the repo to dst as a fresh git repo; micro toybox world, plus `params` merged into
    params.yaml (nested dicts are merged key by key)."""
    from prpg.rehearsal.rehearse import copy_repo as copy_tree

    def micro_params(root: Path) -> None:
        values = yaml.safe_load((root / "params.yaml").read_text())
        values["data"]["toybox"].update(toybox or MICRO_TOYBOX)
        _merge(values, params or {})
        (root / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))

    return copy_tree(ROOT, dst, exclude=REGENERATED, before_commit=micro_params)
