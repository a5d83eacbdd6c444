"""Bad params and CLI inputs fail before any work, with one line that names the key or file, the value
and what to do; nothing is half-written (params.yaml untouched, tracked metrics kept by a failed stage)."""

import json
import shutil
from pathlib import Path

import pytest
import yaml

from prpg.core.params import ParamsError, load_params, parse_group
from prpg.prompts import reference_prompt_file, stand_in_reference_prompts
from tests.conftest import make_pods_tree, toybox_group
from tests.pipeline_repo import copy_repo, run

ROOT = Path(__file__).resolve().parents[1]

# (id, group, values, what the one-line message must name): every group, a count, a rate, a probability, a type,
# an unknown key, a name. Each is also a value `dvc exp run -S` could set.
PARAM_CASES = [
    ("common-negative-seed", "common", {"seed": -1}, ["common.seed = -1", "greater than or equal to 0"]),
    ("common-zero-threads", "common", {"threads": 0}, ["common.threads = 0"]),
    ("common-unknown-device", "common", {"device": "gpu"}, ["common.device = 'gpu'", "'cpu', 'cuda' or 'auto'"]),
    ("common-toybox-elsewhere", "common", {"data_root": "elsewhere"}, ["data_root must be outputs/data/toybox"]),
    ("data-zero-min-train", "data", {"min_train_images": 0}, ["data.min_train_images = 0"]),
    ("data-wrong-type", "data", {"gallery_instances_per_category": "one"}, ["data.gallery_instances_per_category = 'one'"]),
    ("data-toybox-size-range", "data", {"toybox": {"size": 16}}, ["data.toybox.size = 16"]),
    ("data-toybox-unknown-key", "data", {"toybox": {"workerz": 2}}, ["data.toybox.workerz = 2: unknown key"]),
    ("pretrain-encoder-zero-steps", "pretrain", {"encoder": {"steps": 0}}, ["pretrain.encoder.steps = 0"]),
    ("pretrain-encoder-zero-lr", "pretrain", {"encoder": {"lr": 0}}, ["pretrain.encoder.lr = 0", "greater than 0"]),
    ("pretrain-encoder-probability", "pretrain", {"encoder": {"texture_swap": 1.5}},
     ["pretrain.encoder.texture_swap = 1.5", "less than or equal to 1"]),
    ("pretrain-encoder-view-mix-element", "pretrain", {"encoder": {"view_mix": [0.5, -0.1, 0.6]}},
     ["pretrain.encoder.view_mix.1 = -0.1"]),
    ("pretrain-encoder-patch-multiple", "pretrain", {"encoder": {"image_size": 60}},
     ["pretrain.encoder", "image_size 60 must be a multiple of patch_size 8"]),
    ("pretrain-generator-resolution-multiple", "pretrain", {"generator": {"resolution": 60}},
     ["pretrain.generator", "resolution 60 must be a multiple of 16"]),
    ("pretrain-generator-no-levels", "pretrain", {"generator": {"vae_channels": []}},
     ["pretrain.generator.vae_channels", "at least 1 item"]),
    ("pretrain-generator-dropout", "pretrain", {"generator": {"caption_dropout": -0.1}},
     ["pretrain.generator.caption_dropout = -0.1"]),
    ("pretrain-generator-ema", "pretrain", {"generator": {"ema_decay": 1.5}}, ["pretrain.generator.ema_decay = 1.5"]),
    ("pretrain-gates-guidance", "pretrain", {"gates": {"guidance": -1}}, ["pretrain.gates.guidance = -1"]),
    ("pretrain-dreambooth-lr", "pretrain", {"dreambooth": {"lr": -1e-4}}, ["pretrain.dreambooth.lr = -0.0001"]),
    ("models-unknown-backbone", "models", {"backbone": "resnet50"},
     ["models.backbone = 'resnet50'", "unknown backbone", "toybox, dinov2_vitb14, clip_vitb16, mae_vitb16"]),
    ("models-missing-local-backbone", "models", {"backbone": "models/no-such-encoder"},
     ["models.backbone", "local folder 'models/no-such-encoder' does not exist"]),
    ("personalize-negative-steps", "personalize", {"steps": -1}, ["personalize.steps = -1"]),
    ("personalize-zero-lr", "personalize", {"lr": 0}, ["personalize.lr = 0"]),
    ("priors-negative-guidance", "priors", {"class_images": {"guidance": -1}}, ["priors.class_images.guidance = -1"]),
    ("personalize-resolution-multiple", "personalize", {"resolution": 100},
     ["personalize.resolution = 100", "multiple of 8"]),
    ("personalize-unknown-mode", "personalize", {"mode": "qlora"}, ["personalize.mode = 'qlora'"]),
    ("synthesize-zero-positives", "synthesize", {"positives": {"n": 0}}, ["synthesize.positives.n = 0"]),
    ("synthesize-negative-guidance", "synthesize", {"positives": {"guidance": -1}},
     ["synthesize.positives.guidance = -1"]),
    ("synthesize-unknown-prompt-set", "synthesize", {"positives": {"prompt_file": "podz"}},
     ["synthesize.positives.prompt_file = 'podz'", "unknown prompt set", "pods, df2, dogs, toybox"]),
    ("priors-zero-batch", "priors", {"negatives": {"batch": 0}}, ["priors.negatives.batch = 0"]),
    ("synthesize-scale-order", "synthesize", {"cut_paste": {"scale_min": 2.0, "scale_max": 1.0}},
     ["synthesize.cut_paste", "scale_min 2.0 > scale_max 1.0"]),
    ("filter-threshold-range", "filter", {"threshold": 2}, ["filter.threshold = 2"]),
    ("filter-zero-keep", "filter", {"n_keep": 0}, ["filter.n_keep = 0"]),
    ("filter-unknown-backbone", "filter", {"backbone": "resnet50"}, ["filter.backbone = 'resnet50'"]),
    ("train-lr-not-a-number", "train", {"lr": "abc"}, ["train.lr = 'abc'", "valid number"]),
    ("train-zero-lr", "train", {"lr": 0}, ["train.lr = 0"]),
    ("train-dropout-range", "train", {"lora_dropout": 1.0}, ["train.lora_dropout = 1.0"]),
    ("train-beta-range", "train", {"betas": [0.5, 1.5]}, ["train.betas.1 = 1.5"]),
    ("train-no-sources", "train", {"sources": []}, ["train.sources is empty"]),
    ("train-unknown-loss", "train", {"loss": "triplet"}, ["train.loss = 'triplet'"]),
    ("train-typo-key", "train", {"learning_rate": 0.1}, ["train.learning_rate = 0.1: unknown key"]),
    ("evaluate-zero-top-k", "evaluate", {"top_k": 0}, ["evaluate.top_k = 0"]),
    ("evaluate-unknown-task", "evaluate", {"tasks": ["classify"]}, ["evaluate.tasks.0 = 'classify'"]),
    ("group-not-a-mapping", "train", 5, ["group 'train' must be a mapping", "int 5"]),
]


def one_line(msg: str) -> str:
    assert msg.strip() and "\n" not in msg.strip(), f"not one line: {msg!r}"
    return msg


@pytest.mark.parametrize("group, values, names", [pytest.param(g, v, n, id=i) for i, g, v, n in PARAM_CASES])
def test_bad_param_fails_in_one_line_naming_the_key(group, values, names):
    with pytest.raises(ParamsError) as err:
        parse_group(group, toybox_group(group, values))
    msg = one_line(str(err.value))
    assert msg.startswith("params.yaml: ") and "fix params.yaml" in msg
    for name in names:
        assert name in msg, msg


def test_defaults_and_shipped_values_still_validate():
    params = load_params(ROOT / "params.yaml")
    assert params["personalize"].steps == 80 and params["models"].backbone == "toybox"
    for backbone in ("dinov2_vitb14", "clip_vitb16", "mae_vitb16", "timm/vit_small_patch14_dinov2.lvd142m@main"):
        models = toybox_group("models", {"backbone": backbone})
        assert parse_group("models", models).backbone == backbone  # names and hub ids: the loaders take them
        assert parse_group("filter", toybox_group("filter", {"backbone": backbone})).backbone == backbone
    assert parse_group("models", toybox_group("models", {"backbone": "models/toybox"}),
                       root=ROOT).backbone == "models/toybox"  # a local folder


# (id, params.yaml text, what the message must name); None: no file at all
FILE_CASES = [
    ("missing-file", None, ["params.yaml: not found", "repository root"]),
    ("invalid-yaml", "train: {lr: 0.1\n", ["params.yaml: not valid YAML"]),
    ("not-a-mapping", "- common\n- train\n", ["params.yaml: must be a mapping of params groups", "got list"]),
    ("typo-group", "trian: {lr: 0.1}\n", ["params.yaml: unknown params group(s) ['trian']", "did you mean 'train'?"]),
    ("group-a-list", "train: [1, 2]\n", ["params.yaml: group 'train' must be a mapping"]),
]


@pytest.mark.parametrize("text, names", [pytest.param(t, n, id=i) for i, t, n in FILE_CASES])
def test_bad_params_file_names_the_file(tmp_path, text, names):
    path = tmp_path / "params.yaml"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ParamsError) as err:
        load_params(path)
    msg = one_line(str(err.value))
    assert str(path) in msg
    for name in names:
        assert name.replace("params.yaml", str(path)) in msg, msg


# ---- the command line: `prpg exp` / `prpg repro` check everything before DVC starts ---------------------

@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A folder holding the repo's params.yaml and a PODS-format data/pods; `prpg repro` recorded, not run."""
    import prpg.runs.repro

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    make_pods_tree(tmp_path / "data" / "pods")  # mug_00 (val), mug_01, shoe_00 (test)
    # paper experiments read the reference's prompt file (`prpg data download prompts`): a same-format stand-in
    prompts = tmp_path / reference_prompt_file("pods")
    prompts.parent.mkdir(parents=True)
    prompts.write_text(json.dumps(stand_in_reference_prompts({"mug_00": "mug", "mug_01": "mug", "shoe_00": "shoe"})))
    monkeypatch.chdir(tmp_path)
    ran = []
    monkeypatch.setattr(prpg.runs.repro, "repro", lambda jobs, gpus=(): ran.append(jobs))
    return ran


def set_params(**groups):
    values = yaml.safe_load(Path("params.yaml").read_text())
    for group, update in groups.items():
        values[group].update(update)
    Path("params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))


POD_RUN = dict(common={"dataset": "pods", "data_root": "data/pods", "data_source": "data/pods"})

# (id, argv, params changes, what the one-line error must name)
CLI_CASES = [
    ("unknown-method", ["exp", "toybox-foo"], {},
     ["prpg: error: unknown method 'foo': no experiments/methods/foo.yaml (known: combined, cut_paste, dreambooth, "
      "masked_dreambooth, oracle, oracle_positives, real)", "or add the file"]),
    ("unknown-backbone-name", ["exp", "pods-resnet50"], {},
     ["unknown experiment 'pods-resnet50': no experiments/pods-resnet50.yaml (known: df2-clip_vitb16,"]),
    ("unknown-sweep", ["exp", "toybox-sweep-lr"], {},
     ["unknown sweep 'lr': no experiments/sweeps/lr.yaml (known: cfg, loss)"]),
    ("unknown-dataset", ["exp", "imagenet-dinov2_vitb14"], {},
     ["unknown experiment 'imagenet-dinov2_vitb14': no experiments/imagenet-dinov2_vitb14.yaml"]),
    ("exp-jobs-0", ["exp", "toybox-real", "-j", "0"], {}, ["--jobs 0: use 1 or more"]),
    ("repro-jobs-0", ["repro", "-j", "0"], {}, ["--jobs 0: use 1 or more"]),
    ("jobs-over-gpus", ["exp", "toybox-real", "-j", "3", "--gpus", "0,1"], {}, ["--jobs 3 with 2 GPU(s)"]),
    ("per-category-0", ["exp", "pods-dinov2_vitb14", "--instances", "test", "--per-category", "0"], {},
     ["--per-category 0: use 1 or more"]),
    ("negative-offset", ["exp", "pods-dinov2_vitb14", "--instances", "test", "--offset", "-1"], {},
     ["--offset -1: use 0 or more"]),
    ("offset-past-the-end", ["exp", "pods-dinov2_vitb14", "--instances", "test", "--offset", "5", "--dry"], {},
     ["--instances test --offset 5: data/pods: no instances", "from the 5-th"]),
    ("per-category-without-instances", ["exp", "toybox-real", "--per-category", "1", "--dry"], {},
     ["--per-category and --offset pick instances of --instances test|val; add --instances"]),
    ("set-without-equals", ["exp", "toybox-real", "--dry", "-S", "train.lr"], {},
     ["-S 'train.lr': not a valid override", "missing EQUAL", "KEY=VALUE"]),
    ("set-unclosed-list", ["exp", "toybox-real", "--dry", "-S", "train.sources=[real,"], {},
     ["-S 'train.sources=[real,': not a valid override"]),
    ("set-unknown-key", ["exp", "toybox-real", "--dry", "-S", "trian.lr=1"], {},
     ["-S 'trian.lr=1': not a valid override", "Could not override 'trian.lr'"]),
    ("set-appended-key", ["exp", "toybox-real", "--dry", "-S", "+train.extra=1"], {},
     ["train.extra = 1: unknown key"]),
    ("set-bad-value", ["exp", "toybox-real", "--dry", "-S", "train.lr=abc"], {},
     ["params.yaml with the overrides of `prpg exp toybox-real`", "train.lr = 'abc'"]),
    ("set-bad-value-with-jobs", ["exp", "toybox-real", "-j", "2", "-S", "personalize.steps=-1"], {},
     ["personalize.steps = -1"]),
    ("set-bad-backbone", ["exp", "pods-dinov2_vitb14", "--dry", "-S", "models.backbone=resnet50"], {},
     ["models.backbone = 'resnet50'", "unknown backbone", "dinov2_vitb14"]),
    ("sweep-bad-value", ["exp", "toybox-sweep-cfg", "--dry", "-S", "train.epochs=0"], {}, ["train.epochs = 0"]),
    ("repro-bad-params", ["repro"], {"train": {"lr": -1}}, ["params.yaml: invalid parameters", "train.lr = -1"]),
    ("instance-wrong-category", ["repro"], {**POD_RUN, "run": {"categories": ["mug", "shoe"], "instances": {"mug_01": {"category": "shoe"}}}},
     ["params.yaml: run.instances.mug_01 is 'shoe', but data/pods/pods_info.json has mug_01 in category 'mug'",
      "set run.instances.mug_01: mug"]),
    ("instance-not-in-dataset", ["repro"], {**POD_RUN, "run": {"categories": ["mug"], "instances": {"mug_99": {"category": "mug"}}}},
     ["params.yaml: run.instances.mug_99: no instance 'mug_99' in data/pods/pods_info.json"]),
    ("exp-toybox-instances-on-pods", ["exp", "pods-dinov2_vitb14", "--dry"], {},
     ["run.instances.mug_06: no instance 'mug_06' in data/pods/pods_info.json", "--instances test"]),
]


@pytest.mark.parametrize("argv, changes, names", [pytest.param(a, c, n, id=i) for i, a, c, n in CLI_CASES])
def test_bad_cli_input_fails_before_dvc_in_one_line(workspace, capsys, argv, changes, names):
    from prpg.cli import main

    set_params(**changes)
    before = Path("params.yaml").read_text()
    assert main(argv) == 2
    err = one_line(capsys.readouterr().err)
    assert err.startswith("prpg: error: ")
    for name in names:
        assert name in err, err
    assert workspace == [] and Path("params.yaml").read_text() == before  # nothing ran, nothing written


def test_exp_without_params_yaml(workspace, capsys):
    from prpg.cli import main

    Path("params.yaml").unlink()
    assert main(["exp", "toybox-real", "--dry"]) == 2
    assert one_line(capsys.readouterr().err) == ("prpg: error: params.yaml: not found; run prpg exp from the "
                                                 "repository root\n")


def test_good_instances_pass(workspace, capsys):
    from prpg.cli import main

    set_params(**POD_RUN, run={"categories": ["mug", "shoe"], "instances": {"mug_01": {"category": "mug"}, "shoe_00": {"category": "shoe"}}})
    assert main(["repro", "-j", "1"]) == 0 and workspace == [1]
    assert main(["exp", "pods-dinov2_vitb14", "--instances", "test", "--dry"]) == 0


# ---- a failed stage keeps the tracked metrics ------------------------------------------------------

def test_tracked_metrics_and_plots_persist():
    """DVC deletes a stage's outs before it runs it, unless `persist: true`: every git-tracked metrics,
    plots and table output is kept, so a failed stage leaves the last good ones."""
    from dvc.repo import Repo

    with Repo(str(ROOT)) as repo:
        outs = [o for s in repo.index.stages for o in s.outs if not o.use_cache]
    tracked = [o for o in outs if o.def_path.startswith("reports/") and not o.def_path.startswith("reports/executed/")]
    assert len(tracked) >= 18
    assert [o.def_path for o in tracked if not o.persist] == []


@pytest.mark.slow
def test_a_failed_data_stage_keeps_data_json(tmp_path):
    """A real `dvc repro data` (micro toybox) that works, then one on a bad param of another group and one on
    a broken dataset: each fails in its first cell, in one line naming the key or file, and leaves
    reports/metrics/data.json and the gallery as they were."""
    repo = copy_repo(tmp_path / "repo")
    run(["dvc", "repro", "data"], repo)
    kept = {p: (repo / p).read_bytes() for p in ("reports/metrics/data.json", "reports/figures/toybox_gallery.png")}
    assert json.loads(kept["reports/metrics/data.json"])
    original = (repo / "params.yaml").read_text()

    def fails(*flags, **changes) -> str:
        values = yaml.safe_load(original)
        for group, update in changes.items():
            values[group].update(update)
        (repo / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
        proc = run(["dvc", "repro", *flags, "data"], repo, check=False)
        assert proc.returncode != 0
        assert {p: (repo / p).read_bytes() for p in kept} == kept  # the last good metrics are still there
        return proc.stdout + proc.stderr

    out = fails(data={"min_train_images": 0})
    assert "ParamsError: params.yaml: invalid parameters in group 'data': data.min_train_images = 0" in out
    # Not a group of the data stage (DVC re-runs it only when forced, or in a fresh run): it checks them all.
    out = fails("-f", train={"lr": "abc"})
    assert "ParamsError: params.yaml: invalid parameters in group 'train': train.lr = 'abc'" in out
    broken = repo / "data" / "broken"
    (broken / "train" / "cup_00").mkdir(parents=True)  # an instance without photos
    out = fails(common={"dataset": "broken", "data_root": "data/broken", "data_source": "data/broken"})
    assert "data/broken" in out
