"""Every named experiment launches: its overrides go through DVC's own `-S` code into a copy of the repo,
and DVC then resolves the pipeline (params, dvc.yaml, the DAG, every dependency) without running a stage."""

import json
import shutil
from pathlib import Path

import pytest

from prpg.runs.experiments import (all_names, data_root_of, launch_problems, overrides, resolve,
                              set_instances, single_runs)
from prpg.prompts import reference_prompt_file, stand_in_reference_prompts
from tests.conftest import make_pods_tree
from tests.pipeline_repo import copy_repo

# Instances of each dataset's PODS-format stand-in (name, category, split): Dogs and DF2 have one category.
WORLDS = {
    "pods": (("mug_a", "mug", "test"), ("shoe_a", "shoe", "test"), ("mug_b", "mug", "val")),
    "dogs": (("barry", "dog", "test"), ("dog10", "dog", "test")),
    "df2": (("828_1_2", "shirt", "test"), ("901_1_1", "shirt", "test")),
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("launch") / "repo")
    for name, instances in WORLDS.items():
        make_pods_tree(root / "data" / name, name=name, instances=instances)
        # Paper experiments read the reference's prompt files (`prpg data download prompts`): stand-ins of
        # the same format, keyed by the world's instances.
        prompts = root / reference_prompt_file(name)
        prompts.parent.mkdir(parents=True, exist_ok=True)
        prompts.write_text(json.dumps(stand_in_reference_prompts({i: c for i, c, _ in instances})))
    return root


def test_every_name_is_enumerated_and_resolves():
    names = all_names()
    assert len(names) == len(set(names)) > 60
    assert {"toybox-dreambooth", "toybox-sweep-cfg", "pods-dinov2_vitb14", "dogs-mae_vitb16-cut_paste",
            "df2-clip_vitb16-sweep-loss"} <= set(names)
    for name in names:
        resolve(name)


@pytest.mark.parametrize("dataset", ["toybox", *WORLDS])
def test_every_named_experiment_launches(repo, dataset):
    from dvc.utils.hydra import apply_overrides

    original = (repo / "params.yaml").read_text()
    names = [n for n in all_names() if n.split("-")[0] == dataset]
    failures = {}
    try:
        for name in names:
            instances = None
            if dataset != "toybox":
                assert data_root_of(name) == f"data/{dataset}"
                instances = {i: c for i, c, split in WORLDS[dataset] if split == "test"}
            for values in single_runs(overrides(name)):
                (repo / "params.yaml").write_text(original)
                if instances:
                    set_instances(repo / "params.yaml", instances)
                apply_overrides(str(repo / "params.yaml"), values)
                problems = launch_problems(repo)
                if problems:
                    failures[f"{name} {values}"] = problems
    finally:
        (repo / "params.yaml").write_text(original)
    assert not failures, failures


def test_launch_check_names_what_is_missing(repo, tmp_path):
    from dvc.utils.hydra import apply_overrides

    original = (repo / "params.yaml").read_text()
    moved = tmp_path / "pods"
    shutil.move(repo / "data" / "pods", moved)
    try:
        set_instances(repo / "params.yaml", {"mug_a": "mug"})
        apply_overrides(str(repo / "params.yaml"), overrides("pods-dinov2_vitb14"))
        problems = launch_problems(repo)
        assert any("data/pods" in p and "does not exist" in p for p in problems), problems
        apply_overrides(str(repo / "params.yaml"), ["train.lr=abc"])
        assert any("train.lr" in p for p in launch_problems(repo))
    finally:
        shutil.move(moved, repo / "data" / "pods")
        (repo / "params.yaml").write_text(original)


def test_sweeps_expand_to_single_runs():
    runs = single_runs(["a=1", "b=4,5,7.5", "c=[x,y]", "~run.instances", "d=p,q"])
    assert len(runs) == 6 and runs[0] == ["a=1", "b=4", "c=[x,y]", "~run.instances", "d=p"]
    assert runs[-1] == ["a=1", "b=7.5", "c=[x,y]", "~run.instances", "d=q"]
