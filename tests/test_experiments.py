"""Named experiments (prpg.runs.experiments) and committed results (prpg.runs.results)."""

import json
import shutil
from pathlib import Path

import pytest

from prpg.runs.experiments import all_names, command, data_root_of, instances_of, resolve
from prpg.runs.results import method_name, save_result

ROOT = Path(__file__).resolve().parents[1]


def test_method_names_follow_the_paper():
    assert method_name(("real",), False, "generated") == "real"
    assert method_name(("dreambooth_filtered",), False, "generated") == "dreambooth"
    assert method_name(("dreambooth_filtered",), True, "generated") == "masked_dreambooth"
    assert method_name(("cut_paste", "dreambooth_filtered"), True, "generated") == "combined"
    assert method_name(("dreambooth",), False, "generated") == "dreambooth_unfiltered"
    assert method_name(("oracle",), False, "oracle") == "oracle"  # toybox's oracle sources, named as their files
    assert method_name(("oracle",), False, "generated") == "oracle_positives"
    assert method_name(("cut_paste",), False, "oracle") == "cut_paste+oracle_negatives"


def test_named_toybox_experiment_is_one_exp_run():
    cmd = command("toybox-cut_paste")
    assert cmd[:5] == ["dvc", "exp", "run", "-n", "toybox-cut_paste"] and "personalize.masked=false" in cmd
    assert "--queue" not in cmd and "train.sources=[cut_paste]" in cmd


def test_a_sweep_goes_through_the_queue():
    cmd = command("toybox-sweep-cfg")
    assert "--queue" in cmd and "-n" not in cmd
    assert "synthesize.positives.guidance=4,5,7.5" in cmd


# pods-dinov2_vitb14, written out by hand: the paper's settings (experiments/shared/paper.yaml), PODS, DINOv2,
# masked DreamBooth.
PODS_DINOV2 = {
    "models.generator": "stable-diffusion-v1-5/stable-diffusion-v1-5", "common.device": "cuda",
    "personalize.steps": 400, "personalize.lr": 2e-6, "priors.class_images.n": 200,
    "priors.class_images.steps": 50, "priors.class_images.guidance": 7.5, "priors.class_images.batch": 4,
    "personalize.masked": True, "personalize.gradient_checkpointing": True, "personalize.use_8bit_adam": True,
    "personalize.resolution": 512, "personalize.save_dtype": "fp16",
    "synthesize.positives.n": 450, "synthesize.positives.steps": 50, "synthesize.positives.guidance": 5.0,
    "synthesize.positives.batch": 8,
    "priors.negatives.n": 1000, "priors.negatives.steps": 50, "priors.negatives.guidance": 7.5,
    "priors.negatives.batch": 8,
    "synthesize.cut_paste.n": 450, "synthesize.cut_paste.size": 512, "priors.backgrounds.steps": 50,
    "priors.backgrounds.guidance": 7.5, "priors.backgrounds.n": 100,
    "priors.backgrounds.batch": 8,
    "filter.model": "dreamsim", "filter.localize": "persam", "filter.threshold": 0.6, "filter.n_keep": 450,
    "filter.max_attempts": 5000, "filter.backbone": "dinov2_vitb14", "filter.dense_resolution": 896,
    "filter.dense_input": "sam_pad", "filter.persam": "reference",
    "train.lora_alpha": 0.5, "train.lr": 3e-4, "train.num_triplets": 4500, "train.num_synthetic": 450,
    "train.bf16": False,
    "evaluate.dense_grid": 64, "evaluate.protocol": "reference", "evaluate.box_geometry": "reference",
    "evaluate.dense_mode": "threshold",
    "common.dataset": "pods", "common.data_root": "data/pods", "common.data_source": "data/pods",
    "synthesize.positives.prompt_file": "data/prompts/gpt_prompts_pods.json",
    "synthesize.positives.prompt_source": "data/prompts",
    "priors.backgrounds.prompt_file": "data/prompts/gpt_prompts_pods.json",
    "priors.backgrounds.prompt_source": "data/prompts",
    "models.backbone": "dinov2_vitb14", "train.sources": "[dreambooth_filtered]",
}


def test_named_experiments_resolve_to_their_overrides():
    assert resolve("pods-dinov2_vitb14") == PODS_DINOV2
    got = resolve("pods-dinov2_vitb14")
    assert all(type(got[k]) is type(v) for k, v in PODS_DINOV2.items())  # 2e-6 a float, not a string
    dogs = {k: v.replace("pods", "dogs") if isinstance(v, str) and k.startswith(("common.", "synthesize.", "priors.")) else v
            for k, v in PODS_DINOV2.items()}
    assert resolve("dogs-clip_vitb16-cut_paste-sweep-cfg") == {
        **dogs, "synthesize.cut_paste.real_source": "other_instances", "models.backbone": "clip_vitb16",
        "train.sources": "[cut_paste]", "personalize.masked": False, "synthesize.positives.guidance": "4,5,7.5"}
    assert resolve("toybox") == resolve("toybox-dreambooth") == {
        "train.sources": "[dreambooth_filtered]", "personalize.masked": False}
    assert resolve("toybox-combined") == {"train.sources": "[dreambooth_filtered,cut_paste]",
                                          "personalize.masked": True}
    assert resolve("toybox-sweep-loss") == {"train.sources": "[dreambooth_filtered]", "personalize.masked": False,
                                            "train.loss": "info_nce,multi_pos,hinge"}


def test_every_experiment_file_is_reachable_by_name():
    names = set(all_names())
    assert {"toybox", "toybox-real", "toybox-sweep-cfg", "df2-mae_vitb16-combined",
            "pods-clip_vitb16-sweep-loss"} <= names
    bases = {p.stem for p in (ROOT / "experiments").glob("*.yaml")}
    assert bases == {"toybox"} | {f"{d}-{b}" for d in ("pods", "dogs", "df2")
                                   for b in ("dinov2_vitb14", "clip_vitb16", "mae_vitb16")}
    assert len(names) == len(bases) * (1 + 5 + 2) + 2  # alone, 5 methods, 2 sweeps; toybox: 2 oracle methods
    assert {"toybox-oracle", "toybox-oracle_positives"} <= names and "pods-dinov2_vitb14-oracle" not in names
    resolve("pods-dinov2_vitb14-oracle")  # a name all the same: its params fail, toybox-only (tests/test_oracle.py)


def test_unknown_names_say_which_file_is_missing():
    with pytest.raises(KeyError, match=r"unknown experiment 'pods-resnet50': no experiments/pods-resnet50\.yaml "
                                       r"\(known: df2-clip_vitb16, .*\); names are <base>\[-<method>\]"):
        resolve("pods-resnet50")
    with pytest.raises(KeyError, match=r"unknown method 'lora': no experiments/methods/lora\.yaml \(known: combined, "
                                       r"cut_paste, dreambooth, masked_dreambooth, oracle, oracle_positives, real\)"):
        resolve("pods-dinov2_vitb14-lora")
    with pytest.raises(ValueError, match=r"unknown sweep 'lr': no experiments/sweeps/lr\.yaml \(known: cfg, loss\)"):
        resolve("toybox-sweep-lr")
    with pytest.raises(KeyError, match="unknown experiment 'methods/real'"):
        resolve("methods/real")  # a part to extend, not an experiment


@pytest.mark.parametrize("text, message", [
    ("extends: [shared/base]\n", r"bad\.yaml: extends 'shared/base', but experiments/shared/base\.yaml does not exist"),
    ("extends: [bad]\n", r"bad\.yaml: extends itself \(bad -> bad\)"),
    ("extends: 3\n", r"bad\.yaml: extends must be a list of experiment files"),
    ("- train.lr: 1\n", r"bad\.yaml: must be a mapping of dotted params keys to values .*got list"),
    ("train: {lr: 1}\n", r"bad\.yaml: 'train' is not a dotted params key"),
    ("trian.lr: 1\n", r"bad\.yaml: 'trian.lr' is not a dotted params key of a known group \(common, data"),
    ("train.sources: [real]\n", r"bad\.yaml: train.sources must be a plain value \(a list as a string"),
    ("train.lr: [1\n", r"bad\.yaml: not valid YAML"),
])
def test_a_bad_experiment_file_is_one_error_naming_it(tmp_path, monkeypatch, text, message):
    import prpg.runs.experiments as experiments

    (tmp_path / "bad.yaml").write_text(text)
    monkeypatch.setattr(experiments, "experiments_dir", lambda: tmp_path)
    with pytest.raises(experiments.ExperimentFileError, match=r"^experiments/" + message):
        resolve("bad")


def test_experiments_come_from_the_checkout_outside_the_repository(tmp_path, monkeypatch):
    from prpg.runs.experiments import experiments_dir

    monkeypatch.chdir(tmp_path)  # no repository here: the checkout the package runs from
    assert experiments_dir() == ROOT / "experiments"
    assert resolve("toybox-real")["train.sources"] == "[real]"


def test_yaml_values_become_hydra_values():
    from prpg.runs.experiments import hydra_value

    assert [hydra_value(v) for v in (True, False, None, 2e-6, "4,5,7.5", 3)] == [
        "true", "false", "null", "2e-06", "4,5,7.5", "3"]


def test_instances_replace_the_run_mapping(pods_tree, tmp_path):
    import yaml

    from prpg.runs.experiments import set_instances

    picked = instances_of(str(pods_tree), split=None, per_category=1)
    assert len(picked) == len(set(picked.values()))  # one per category
    params = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params)
    # DF2-like names that Hydra would read as numbers, and names that need quoting in YAML
    set_instances(params, {"828_1_2": "shirt", "007": "shirt", "mug_06": "mug"})
    run = yaml.safe_load(params.read_text())["run"]
    assert run["instances"] == {"828_1_2": {"category": "shirt"}, "007": {"category": "shirt"}, "mug_06": {"category": "mug"}}
    assert run["categories"] == ["mug", "shirt"]
    assert "# what the per-category" in params.read_text()  # comments kept
    assert not any("run.instances" in v for v in command("toybox-real"))


def test_save_result_snapshots_the_tracked_metrics(tmp_path, monkeypatch):
    from prpg.core.models import weights_fingerprint

    monkeypatch.chdir(ROOT)  # model paths in params.yaml are relative to the repository root
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
    for key, folder in (("generator_weights", "generator"), ("backbone_weights", "encoder")):
        assert params[key] is not None and params[key] == weights_fingerprint(ROOT / "models/toybox" / folder)
    assert json.loads((out / "evaluate.json").read_text())["metrics"]["classification"]["pretrained"] == 0.1
    with pytest.raises(ValueError, match="plain folder name"):
        save_result("../x", metrics_dir=metrics, results_dir=tmp_path / "results", params_file=ROOT / "params.yaml")
    with pytest.raises(ValueError, match="holds a whole result"):
        save_result("toybox-x", part="07", metrics_dir=metrics, results_dir=tmp_path / "results",
                    params_file=ROOT / "params.yaml")
    shutil.rmtree(out)


def test_save_result_in_parts(tmp_path):
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    for f, text in (("evaluate.json", '{"metrics": {}}'), ("instances.csv", "instance\n"),
                    ("train_log.csv", "instance\n")):
        (metrics / f).write_text(text)
    kw = dict(metrics_dir=metrics, results_dir=tmp_path / "results", params_file=ROOT / "params.yaml")
    out = save_result("toybox-x", part="06", **kw)
    assert out == tmp_path / "results" / "toybox-x" / "parts" / "06"
    assert sorted(p.name for p in out.iterdir()) == ["evaluate.json", "instances.csv", "params.json", "train_log.csv"]
    assert save_result("toybox-x", part="07", **kw).parent == out.parent  # a second part beside the first
    with pytest.raises(ValueError, match=r"toybox-x is saved in parts .* --part P"):
        save_result("toybox-x", **kw)
    with pytest.raises(ValueError, match="part name '../y'"):
        save_result("toybox-x", part="../y", **kw)


def test_write_params_is_what_dvc_exp_run_would_set(tmp_path):
    from prpg.runs.experiments import write_params
    from prpg.core.params import load_params

    params_file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    values = write_params("toybox-combined", params_file, {"mug_07": "mug", "tote_07": "tote"},
                          ["synthesize.positives.guidance=7.5"])
    assert values[-1] == "synthesize.positives.guidance=7.5"
    p = load_params(params_file)  # validated: the written file is a valid params.yaml
    assert p["train"].sources == ("dreambooth_filtered", "cut_paste") and p["personalize"].masked is True
    assert p["synthesize"].positives.guidance == 7.5 and p["run"].instances == {"mug_07": "mug", "tote_07": "tote"}
    assert list(p["run"].categories) == ["mug", "tote"]
    with pytest.raises(ValueError, match="toybox-sweep-cfg: a sweep is several runs"):
        write_params("toybox-sweep-cfg", params_file)


def test_exp_with_jobs_runs_the_chains_side_by_side_on_the_written_params(tmp_path, monkeypatch):
    import prpg.runs.repro
    from prpg.cli import main
    from prpg.core.params import load_params

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr(prpg.runs.repro, "repro", lambda jobs, gpus=(): ran.append((jobs, load_params("params.yaml"))))
    assert main(["exp", "toybox-cut_paste", "-j", "2", "-S", "train.epochs=1"]) == 0
    (jobs, p), = ran
    assert jobs == 2 and p["train"].sources == ("cut_paste",) and p["train"].epochs == 1
    with pytest.raises(SystemExit, match="takes no --queue or --dry"):
        main(["exp", "toybox-real", "-j", "2", "--dry"])


def test_instances_from_an_offset_are_one_part(pods_tree):
    first = instances_of(str(pods_tree), split=None, per_category=1)
    second = instances_of(str(pods_tree), split=None, per_category=1, offset=1)
    assert first == {"mug_00": "mug", "shoe_00": "shoe"} and second == {"mug_01": "mug"}  # one shoe only
    both = instances_of(str(pods_tree), split=None, per_category=2)
    assert both == {**first, **second}
    with pytest.raises(ValueError, match="from the 99-th"):
        instances_of(str(pods_tree), split=None, offset=99)


def test_instances_come_from_the_experiment_s_dataset(tmp_path):
    params_file = tmp_path / "params.yaml"
    shutil.copy(ROOT / "params.yaml", params_file)
    assert data_root_of("toybox-real", params_file) == "outputs/data/toybox"  # the world the data stage built
    assert data_root_of("pods-dinov2_vitb14", params_file) == "data/pods"  # a paper run's own dataset
    assert data_root_of("dogs-clip_vitb16-sweep-cfg", params_file) == "data/dogs"
    text = params_file.read_text()
    params_file.write_text(text.replace("data_root: outputs/data/toybox", "data_root: elsewhere/toybox"))
    with pytest.raises(ValueError, match=r"(?s)params\.yaml: invalid parameters in group 'common'.*data_root must be"):
        data_root_of("toybox-real", params_file)  # read through the validated params, not as raw YAML
    with pytest.raises(ValueError, match=r"nowhere\.yaml: not found"):
        data_root_of("toybox-real", tmp_path / "nowhere.yaml")


def test_paper_experiment_resolves_to_the_reference_protocol(capsys, tmp_path, monkeypatch):
    """`prpg exp pods-dinov2_vitb14 --dry` prints the reference behaviour for every fidelity item."""
    from prpg.cli import main
    from prpg.prompts import stand_in_reference_prompts

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "models", tmp_path / "models")
    (tmp_path / "data" / "prompts").mkdir(parents=True)  # what `prpg data download prompts` writes
    (tmp_path / "data" / "prompts" / "gpt_prompts_pods.json").write_text(
        json.dumps(stand_in_reference_prompts({"mug_06": "mug"})))
    monkeypatch.chdir(tmp_path)
    assert main(["exp", "pods-dinov2_vitb14", "--dry"]) == 0
    cmd = capsys.readouterr().out
    for value in ("evaluate.protocol=reference", "evaluate.box_geometry=reference", "evaluate.dense_mode=threshold",
                  "evaluate.dense_grid=64", "filter.dense_resolution=896", "filter.dense_input=sam_pad",
                  "filter.persam=reference", "train.bf16=false", "train.lora_alpha=0.5", "filter.n_keep=450",
                  "synthesize.positives.prompt_file=data/prompts/gpt_prompts_pods.json"):
        assert f"-S {value}" in cmd, value
