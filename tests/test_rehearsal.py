"""prpg rehearse: the world it renders, the counts it reduces and projects, and (slow) whole rehearsals
of a PODS, a Dogs and a DF2 experiment on mini random-weight models."""

import json
import os
from pathlib import Path

import pytest

from prpg.data import check_dataset, load_dataset
from prpg.rehearsal.rehearse import REDUCED, RehearsalError, count_ratios, flat_params, pick_instances, rehearse
from prpg.rehearsal.world import build_world

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("dataset,category,name", [("pods", "mug", "mug_rehearsal_00"), ("dogs", "dog", "dog0"),
                                                   ("df2", "shirt", "800_1_2")])
def test_world_is_a_valid_dataset_named_like_the_experiment(tmp_path, dataset, category, name):
    root = build_world(tmp_path / dataset, dataset, size=64, per_category=2)
    assert check_dataset(root) == []
    assert (root / f"{dataset}_info.json").is_file() and (root / f"{dataset}_image_annos.json").is_file()
    ds = load_dataset(root)
    assert category in ds.categories and name in {i.name for i in ds.instances}
    assert all(i.split == "test" for i in ds.instances)
    assert pick_instances(root, 1) == {ds.instances_in(category=ds.categories[0])[0].name: ds.categories[0]}
    with pytest.raises(FileExistsError):
        build_world(root, dataset, size=64)


def test_world_refuses_an_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match="--data-root"):
        build_world(tmp_path / "x", "imagenet")


def test_count_ratios_follow_the_counts():
    full = flat_params(ROOT / "params.yaml")
    reduced = {**full, **REDUCED}
    ratios = count_ratios(full, reduced)
    # personalize: 80 / 2 steps; train: 320 triplets x 2 epochs / (8 x 1)
    assert ratios["personalize"] == 40 and ratios["train"] == 320 * 2 / 8
    # toybox positives: 100 prompts x 1 image x 20 steps vs 2 prompts x 1 x 2 steps
    assert ratios["synthesize"] == 100 * 20 / (2 * 2)
    # priors: 16 class images x 20 steps + 32 negatives x 20 + 8 backgrounds x 20, vs 2x2 + 4x2 + 2x2
    assert ratios["priors"] == (16 * 20 + 32 * 20 + 8 * 20) / (2 * 2 + 4 * 2 + 2 * 2)


def test_rehearse_refuses_toybox_and_bad_arguments():
    with pytest.raises(RehearsalError, match="toybox experiment"):
        rehearse("toybox-dreambooth")
    with pytest.raises(RehearsalError, match="--shape"):
        rehearse("pods-dinov2_vitb14", shape="huge")
    with pytest.raises(KeyError,
                       match="unknown experiment .pods-resnet50.: no experiments/pods-resnet50.yaml"):
        rehearse("pods-resnet50")


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("rehearsal-hub")


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pods-dinov2_vitb14", "dogs-clip_vitb16", "df2-mae_vitb16-cut_paste"])
def test_mini_rehearsal_runs_the_paper_experiment(tmp_path, hub_dir, name):
    r = rehearse(name, shape="mini", device="cpu", repo=ROOT, report_dir=tmp_path / "reports", hub_dir=hub_dir)
    stages = {s.stage.split("@")[0] for s in r.stages}
    assert {"data", "priors", "personalize", "synthesize", "filter", "train", "evaluate", "aggregate"} <= stages
    report = json.loads((tmp_path / "reports" / f"{name}-mini-cpu.json").read_text())
    assert report["instances"] == r.instances and report["reduced"]["personalize.steps"] == 2
    assert all(s["peak_rss_bytes"] > 0 and s["wall_seconds"] > 0 for s in report["stages"])
    personalize = next(s for s in report["stages"] if s["stage"].startswith("personalize@"))
    assert personalize["output_bytes"] > 0 and personalize["count_ratio"] == 200  # 400 steps / 2
    assert "| personalize@" in (tmp_path / "reports" / f"{name}-mini-cpu.md").read_text()
    assert not os.environ.get("HF_HUB_OFFLINE")  # the offline switch stayed inside the rehearsal


def test_disk_grows_with_images_not_sampler_steps():
    from prpg.rehearsal.rehearse import image_ratios

    full = flat_params(ROOT / "params.yaml")
    ratios = image_ratios(full, {**full, **REDUCED})
    # toybox: 16 class images + 32 negatives + 8 backgrounds vs 2 + 4 + 2; 100 positives + 64 composites vs 2 + 4
    assert ratios["priors"] == 56 / 8 and ratios["synthesize"] == 164 / 6 and ratios["filter"] == 32 / 2
