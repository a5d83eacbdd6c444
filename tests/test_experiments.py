"""Named experiments (prpg.experiments) and committed results (prpg.results)."""

import json
import shutil
from pathlib import Path

import pytest

from prpg.experiments import command, instances_of, resolve
from prpg.results import method_name, save_result

ROOT = Path(__file__).resolve().parents[1]


def test_method_names_follow_the_paper():
    assert method_name(("real",), False) == "real"
    assert method_name(("dreambooth_filtered",), False) == "dreambooth"
    assert method_name(("dreambooth_filtered",), True) == "masked_dreambooth"
    assert method_name(("cut_paste", "dreambooth_filtered"), True) == "combined"
    assert method_name(("dreambooth",), False) == "dreambooth_unfiltered"


def test_named_toybox_experiment_is_one_exp_run():
    cmd = command("toybox-cut_paste")
    assert cmd[:5] == ["dvc", "exp", "run", "-n", "toybox-cut_paste"] and "personalize.masked=false" in cmd
    assert "--queue" not in cmd and "train.sources=[cut_paste]" in cmd


def test_a_sweep_goes_through_the_queue():
    cmd = command("toybox-sweep-cfg")
    assert "--queue" in cmd and "-n" not in cmd
    assert "synthesize.positives.guidance=4,5,7.5" in cmd


def test_paper_experiment_has_the_paper_settings():
    o = resolve("pods-clip_vitb16")
    assert o["models.backbone"] == "clip_vitb16" and o["common.data_root"] == "data/pods"
    assert o["models.generator"] == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert (o["personalize.lr"], o["personalize.steps"], o["train.num_triplets"], o["evaluate.dense_grid"]) == (
        2e-6, 400, 4500, 64)
    assert resolve("dogs-dinov2_vitb14-cut_paste")["train.sources"] == "[cut_paste]"
    with pytest.raises(KeyError, match="unknown backbone"):
        resolve("pods-resnet50")
    with pytest.raises(KeyError, match="unknown sweep"):
        resolve("toybox-sweep-lr")


def test_instances_replace_the_run_mapping(pods_tree):
    picked = instances_of(str(pods_tree), split=None, per_category=1)
    assert len(picked) == len(set(picked.values()))  # one per category
    cmd = command("toybox-real", instances=picked)
    i = cmd.index("~run.instances")
    assert cmd[i + 2].startswith("+run.instances={") and all(f"{k}:{v}" in cmd[i + 2] for k, v in picked.items())


def test_save_result_snapshots_the_tracked_metrics(tmp_path):
    metrics = tmp_path / "metrics"
    with pytest.raises(FileNotFoundError, match="evaluate.json"):
        save_result("x", metrics_dir=metrics, results_dir=tmp_path / "results", params_file=ROOT / "params.yaml")
    metrics.mkdir()
    (metrics / "evaluate.json").write_text(json.dumps({"metrics": {"classification": {"pretrained": 0.1}}}))
    (metrics / "instances.csv").write_text("instance,value\nmug_06,0.1\n")
    (metrics / "train_log.csv").write_text("instance,step,loss\nmug_06,1,2.0\n")
    out = save_result("toybox-x", "a test", True, metrics_dir=metrics, results_dir=tmp_path / "results",
                      params_file=ROOT / "params.yaml")
    params = json.loads((out / "params.json").read_text())
    assert params["dataset"] == "toybox" and params["method"] == "dreambooth" and params["headline"] is True
    assert params["guidance"] == 5.0 and params["description"] == "a test"
    assert json.loads((out / "evaluate.json").read_text())["metrics"]["classification"]["pretrained"] == 0.1
    with pytest.raises(ValueError, match="plain folder name"):
        save_result("../x", metrics_dir=metrics, results_dir=tmp_path / "results", params_file=ROOT / "params.yaml")
    shutil.rmtree(out)
