"""Named experiments: each is one `dvc exp run` with the parameter overrides that define it.

`prpg exp NAME` runs it (`--queue` queues it, `--dry` prints the command). Paper runs need a GPU and
the real datasets/models (see README); toybox runs work offline on CPU. Sweeps use DVC's Hydra syntax
(`-S 'key=a,b,c'`) and therefore go through the queue: `dvc queue start -j N` runs them.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

# The paper's settings (protocol §1): SD 1.5 DreamBooth at 512 px, 450 LLM-prompt positives at CFG 5,
# DreamSim + PerSAM filtering at 0.6, 4500 triplets, LoRA r 16 / alpha 0.5, lr 3e-4, 64x64 dense grid.
PAPER = {
    "models.generator": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "common.device": "cuda",
    "personalize.steps": 400, "personalize.lr": 2e-6, "personalize.num_class_images": 200,
    "personalize.class_steps": 50, "personalize.class_guidance": 7.5, "personalize.class_batch": 4,
    "personalize.masked": True, "personalize.gradient_checkpointing": True, "personalize.use_8bit_adam": True,
    "personalize.resolution": 512, "personalize.save_dtype": "fp16",
    "synthesize.positives.n": 450, "synthesize.positives.steps": 50, "synthesize.positives.guidance": 5.0,
    "synthesize.positives.batch": 8,
    "synthesize.negatives.n": 1000, "synthesize.negatives.steps": 50, "synthesize.negatives.guidance": 7.5,
    "synthesize.negatives.batch": 8,
    "synthesize.cut_paste.n": 450, "synthesize.cut_paste.size": 512, "synthesize.cut_paste.steps": 50,
    "synthesize.cut_paste.guidance": 7.5, "synthesize.cut_paste.n_generated_backgrounds": 100,
    "synthesize.cut_paste.batch": 8,
    # n_keep 450: generate_data.py's own default (`--n 450`, accepted images per instance) and what training
    # keeps (run_pipeline_*.yaml `num_synthetic: 450`). The shipped launch scripts' `--n 100`
    # (configs/run/generate_data*.sh) is their one-instance example, unfiltered script included.
    "filter.model": "dreamsim", "filter.localize": "persam", "filter.threshold": 0.6, "filter.n_keep": 450,
    "filter.max_attempts": 5000, "filter.backbone": "dinov2_vitb14",
    # the reference's localization: SAM-style padded canvas at 896 px (64x64 grid), its full PerSAM
    "filter.dense_resolution": 896, "filter.dense_input": "sam_pad", "filter.persam": "reference",
    "train.lora_alpha": 0.5, "train.lr": 3e-4, "train.num_triplets": 4500, "train.num_synthetic": 450,
    # The reference trains in fp32 (Lightning's default precision); bf16 autocast is our speed option.
    "train.bf16": False,
    "evaluate.dense_grid": 64,
    # the reference's evaluation rules (prpg.evaluate.protocol), its box placement and threshold mode
    "evaluate.protocol": "reference", "evaluate.box_geometry": "reference", "evaluate.dense_mode": "threshold",
}


def reference_prompts(dataset: str) -> dict:
    """The paper's scene prompts (the reference's GPT-written gpt_prompts_<dataset>.json, keyed by instance;
    `prpg data download prompts` puts them in data/prompts) for the positives and the generated
    backgrounds, each with data/prompts as its DVC dependency."""
    from prpg.prompts import PROMPTS_DIR, reference_prompt_file

    path = reference_prompt_file(dataset)
    return {"synthesize.positives.prompt_file": path, "synthesize.positives.prompt_source": PROMPTS_DIR,
            "synthesize.cut_paste.background_prompt_file": path,
            "synthesize.cut_paste.background_prompt_source": PROMPTS_DIR}


DATASETS = {
    "pods": {"common.dataset": "pods", "common.data_root": "data/pods", "common.data_source": "data/pods",
             **reference_prompts("pods")},
    "dogs": {"common.dataset": "dogs", "common.data_root": "data/dogs", "common.data_source": "data/dogs",
             **reference_prompts("dogs"), "synthesize.cut_paste.real_source": "other_instances"},
    "df2": {"common.dataset": "df2", "common.data_root": "data/df2", "common.data_source": "data/df2",
            **reference_prompts("df2"), "synthesize.cut_paste.real_source": "other_instances"},
}
BACKBONES = ("dinov2_vitb14", "clip_vitb16", "mae_vitb16")
# Generation-method comparison (paper §4.2): which positives train the representation.
METHODS = {
    "real": {"train.sources": "[real]", "personalize.masked": False},
    "dreambooth": {"train.sources": "[dreambooth_filtered]", "personalize.masked": False},
    "masked_dreambooth": {"train.sources": "[dreambooth_filtered]", "personalize.masked": True},
    "cut_paste": {"train.sources": "[cut_paste]", "personalize.masked": False},
    "combined": {"train.sources": "[dreambooth_filtered,cut_paste]", "personalize.masked": True},
}
SWEEPS = {
    "cfg": {"synthesize.positives.guidance": "4,5,7.5"},
    "loss": {"train.loss": "info_nce,multi_pos,hinge"},
}


class UnknownExperimentError(KeyError, ValueError):
    """An experiment name with an unknown part. A KeyError (what callers caught so far) and a ValueError
    (so `prpg` prints it as one line); str() is the plain message, not KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def paper_experiment(dataset: str, backbone: str, method: str = "masked_dreambooth") -> dict:
    """Overrides of one paper run, e.g. paper_experiment("pods", "dinov2_vitb14")."""
    if dataset not in DATASETS:
        raise UnknownExperimentError(f"unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    if backbone not in BACKBONES:
        raise UnknownExperimentError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")
    if method not in METHODS:
        raise UnknownExperimentError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
    return {**PAPER, **DATASETS[dataset], "models.backbone": backbone, **METHODS[method]}


def resolve(name: str) -> dict:
    """NAME = toybox-<method> | toybox-sweep-<sweep> | <dataset>-<backbone>[-<method>] | <dataset>-<backbone>-sweep-<sweep>."""
    parts = name.split("-")
    sweep = {}
    if "sweep" in parts:
        i = parts.index("sweep")
        key = "-".join(parts[i + 1 :])
        if key not in SWEEPS:
            raise UnknownExperimentError(f"unknown sweep {key!r}; known: {', '.join(SWEEPS)}")
        sweep, parts = SWEEPS[key], parts[:i]
    if parts[0] == "toybox":
        method = parts[1] if len(parts) > 1 else "dreambooth"
        if method not in METHODS:
            raise UnknownExperimentError(f"unknown method {method!r}; known: {', '.join(METHODS)}")
        return {**METHODS[method], **sweep}
    dataset, backbone, *rest = parts + [""] * (2 - len(parts))
    return {**paper_experiment(dataset, backbone, rest[0] if rest else "masked_dreambooth"), **sweep}


def all_names() -> list[str]:
    """Every name `prpg exp` accepts: each toybox method and sweep, each dataset x backbone (its default
    method, every method, every sweep)."""
    names = [f"toybox-{m}" for m in METHODS] + [f"toybox-sweep-{s}" for s in SWEEPS]
    for dataset in DATASETS:
        for backbone in BACKBONES:
            base = f"{dataset}-{backbone}"
            names += [base, *(f"{base}-{m}" for m in METHODS), *(f"{base}-sweep-{s}" for s in SWEEPS)]
    return names


def single_runs(values: Sequence[str]) -> list[list[str]]:
    """The runs of a list of overrides: one per value of each swept key (Hydra's cartesian product)."""
    runs: list[list[str]] = [[]]
    for v in values:
        key, _, value = v.partition("=")
        choices = value.split(",") if is_sweep([v]) else [value]
        runs = [run + [f"{key}={c}" if "=" in v else v] for run in runs for c in choices]
    return runs


def launch_problems(repo_root: str | Path) -> list[str]:
    """What stops `dvc repro` from starting in repo_root, checked by DVC itself without running a stage:
    params.yaml validates, dvc.yaml resolves with it (interpolation, foreach, the DAG), and every
    dependency is either on disk or an output of another stage. [] when it would launch."""
    from dvc.repo import Repo

    from prpg.core.params import ParamsError, load_params

    root = Path(repo_root).resolve()
    try:
        load_params(root / "params.yaml")
    except ParamsError as err:
        return [str(err)]
    problems = []
    with Repo(str(root)) as repo:
        try:
            stages = list(repo.index.stages)
            repo.index.graph  # noqa: B018 - builds the DAG: raises on cycles and overlapping outputs
        except Exception as err:  # DVC's own errors (interpolation, schema, graph) say what is wrong
            return [f"dvc.yaml: {type(err).__name__}: {err}"]
        # Outputs a stage makes; a .dvc file's (data.dvc) are data that must be on disk already.
        outs = [Path(o.fs_path) for s in stages if s.cmd for o in s.outs]
        for stage in stages:
            for dep in stage.deps:
                if getattr(dep, "params", None) is not None or dep.fs_path is None:
                    continue  # a params dependency, not a path
                path = Path(dep.fs_path)
                produced = any(path == o or path.is_relative_to(o) or o.is_relative_to(path) for o in outs)
                if not produced and not path.exists():
                    problems.append(f"stage {stage.addressing}: dependency {path.relative_to(root)} does not "
                                    "exist and no stage makes it")
    return problems


def instances_of(data_root: str, split: str | None = "test", per_category: int | None = None,
                 offset: int = 0) -> dict[str, str]:
    """name -> category of a dataset's instances (its `class_to_split` split): of each category, at most
    per_category of them, from its offset-th on (in name order), e.g. offset k, per_category 1 picks the
    k-th instance of every category: one part of an experiment run in parts (prpg.runs.results)."""
    from prpg.data import load_dataset

    ds = load_dataset(data_root)
    picked: dict[str, str] = {}
    for category in ds.categories:
        names = [i.name for i in ds.instances_in(category=category, split=split)][offset:]
        picked.update({n: category for n in names[:per_category]})
    if not picked:
        raise ValueError(f"{data_root}: no instances with class_to_split {split!r}"
                         + (f" from the {offset}-th of a category on" if offset else ""))
    return picked


def data_root_of(name: str, params_file: str | Path = "params.yaml") -> str:
    """The dataset folder a named experiment runs on: its own common.data_root (paper runs: data/pods, ...),
    else params_file's (toybox: the world the data stage builds, outputs/data/toybox)."""
    settings = resolve(name)
    if "common.data_root" in settings:
        return str(settings["common.data_root"])
    from prpg.core.params import load_params

    return load_params(params_file)["common"].data_root


def overrides(name: str, extra: Sequence[str] = ()) -> list[str]:
    """The `-S` values of a named experiment (Hydra override syntax, as `dvc exp run -S` takes them);
    `extra` comes last."""
    settings = resolve(name)
    out = [f"{key}={str(value).lower() if isinstance(value, bool) else value}" for key, value in settings.items()]
    return out + list(extra)


def set_instances(params_file: str | Path, instances: dict[str, str]) -> None:
    """Replace run.instances (name -> category) and run.categories in params_file, comments kept.

    Not through `-S`: Hydra's override grammar cannot write such a mapping (a key must start with a
    letter, and cannot be quoted, so DF2's `828_1_2` would become the integer 82812). `dvc exp run`
    records the workspace's params.yaml with the experiment, so the run keeps its instance list."""
    from dvc.utils.serialize import modify_yaml

    if not instances:
        raise ValueError("no instances to run: pass at least one name -> category")
    with modify_yaml(str(params_file)) as values:
        values.setdefault("run", {})
        values["run"]["instances"] = {name: {"category": category} for name, category in instances.items()}
        values["run"]["categories"] = sorted(set(instances.values()))


def is_sweep(values: Sequence[str]) -> bool:
    """A value with a comma outside [...] / {...} is a Hydra sweep: several runs."""
    return any("," in v.split("=", 1)[1] and not v.split("=", 1)[1].startswith(("[", "{"))
               for v in values if "=" in v and not v.startswith("~"))


def command(name: str, queue: bool = False, extra: Sequence[str] = ()) -> list[str]:
    """The `dvc exp run` command line of a named experiment (run.instances: what params.yaml holds)."""
    values = overrides(name, extra)
    sweep = is_sweep(values)
    cmd = ["dvc", "exp", "run"] + ([] if sweep else ["-n", name]) + (["--queue"] if queue or sweep else [])
    for v in values:
        cmd += ["-S", v]
    return cmd


def write_params(name: str, params_file: str | Path = "params.yaml", instances: dict[str, str] | None = None,
                 extra: Sequence[str] = ()) -> list[str]:
    """Write a named experiment's overrides into params_file, parsed by DVC's own `-S` code (what
    `dvc exp run` does to the workspace before it runs), so that `prpg repro -j N` can run it with the
    instance chains side by side. Returns the overrides."""
    from dvc.utils.hydra import apply_overrides

    values = overrides(name, extra)
    if is_sweep(values):
        raise ValueError(f"{name}: a sweep is several runs; queue it (`prpg exp {name}`, then "
                         "`dvc queue start`) or write one value at a time")
    if instances:
        set_instances(params_file, instances)
    apply_overrides(str(params_file), values)
    return values


def shell(cmd: Sequence[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)
