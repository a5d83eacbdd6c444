"""The toybox: a procedural world in the PODS layout (category easy, instance hard).

build_toybox(out) writes <out>/toybox (evaluation) and <out>/toybox_pool (pretraining pool).
"""

from prpg.toybox.backgrounds import BACKGROUNDS, CANONICAL, Background, render_background
from prpg.toybox.build import (
    ANNOS_FILE,
    EVAL_NAME,
    POOL_NAME,
    build_toybox,
    category_of,
    eval_names,
    instance_params,
    pool_names,
    world_instances,
)
from prpg.toybox.objects import CATEGORIES, Decal, Instance, Pattern, sample_instance
from prpg.toybox.scenes import TEST_SPLITS, Pose, Shot, render_shot, stable_seed
from prpg.toybox.sprites import render_sprite

__all__ = [
    "ANNOS_FILE",
    "BACKGROUNDS",
    "CANONICAL",
    "CATEGORIES",
    "EVAL_NAME",
    "POOL_NAME",
    "TEST_SPLITS",
    "Background",
    "Decal",
    "Instance",
    "Pattern",
    "Pose",
    "Shot",
    "build_toybox",
    "category_of",
    "eval_names",
    "instance_params",
    "pool_names",
    "render_background",
    "render_shot",
    "render_sprite",
    "sample_instance",
    "stable_seed",
    "world_instances",
]
