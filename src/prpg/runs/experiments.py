"""Named experiments: each is one `dvc exp run` with the parameter overrides that define it.

The overrides live in YAML files under the repository's experiments/ folder (files_of: which files a
name stands for): a file maps dotted params keys to values and may `extends` other files first.

`prpg exp NAME` runs it (`--queue` queues it, `--dry` prints the command). Paper runs need a GPU and
the real datasets/models (see README); toybox runs work offline on CPU. Sweeps use DVC's Hydra syntax
(`-S 'key=a,b,c'`) and therefore go through the queue: `dvc queue start -j N` runs them.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import yaml

class UnknownExperimentError(KeyError, ValueError):
    """An experiment name with no file behind one of its parts. A KeyError (what callers caught so far) and a
    ValueError (so `prpg` prints it as one line); str() is the plain message, not KeyError's quoted repr."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ExperimentFileError(ValueError):
    """A file under experiments/ that is not a mapping of dotted params keys to values."""


FOLDER = "experiments"
METHODS_FOLDER, SWEEPS_FOLDER = "methods", "sweeps"
SWEEP_MARK = "-sweep-"
GRAMMAR = "<base>[-<method>][-sweep-<sweep>]"


def experiments_dir() -> Path:
    """The experiments/ folder of the repository around the cwd, else of the checkout this package runs
    from (an editable install: tests and scripts that work in a temporary folder)."""
    from prpg.core.paths import repo_root

    for start in (Path.cwd(), Path(__file__).parent):
        try:
            folder = repo_root(start) / FOLDER
        except FileNotFoundError:
            continue
        if folder.is_dir():
            return folder
    raise UnknownExperimentError(f"no {FOLDER}/ folder found: named experiments are its YAML files; run from "
                                 "the repository root")


def names_in(subfolder: str = "") -> list[str]:
    """The experiment files of experiments/<subfolder> by name (file name without .yaml), sorted."""
    return sorted(p.stem for p in (experiments_dir() / subfolder).glob("*.yaml"))


def _read(rel: str) -> dict:
    """experiments/<rel>.yaml as a dict (its `extends` still in it), or one ExperimentFileError."""
    path = experiments_dir() / f"{rel}.yaml"
    where = f"{FOLDER}/{rel}.yaml"
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ExperimentFileError(f"{where}: not valid YAML: {' '.join(str(err).split())}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ExperimentFileError(f"{where}: must be a mapping of dotted params keys to values "
                                  f"(e.g. `train.lr: 0.001`), got {type(data).__name__}; fix the file")
    return data


def _check_entry(where: str, key, value) -> None:
    """One `group.key: value` line of an experiment file: a known params group, a plain value."""
    from prpg.core.params import GROUPS

    if not isinstance(key, str) or key.split(".")[0] not in GROUPS or "." not in key:
        raise ExperimentFileError(f"{where}: {key!r} is not a dotted params key of a known group "
                                  f"({', '.join(GROUPS)}), e.g. `train.lr`; fix the file")
    if isinstance(value, (dict, list)):
        raise ExperimentFileError(f"{where}: {key} must be a plain value (a list as a string, e.g. "
                                  f"\"[real]\"; a nested key as its own dotted key), got {value!r}; fix the file")


def load_file(rel: str, chain: tuple[str, ...] = ()) -> dict:
    """The overrides of experiments/<rel>.yaml: those of each file its `extends` names, in order, then its
    own keys (a later value of a key replaces an earlier one)."""
    where = f"{FOLDER}/{rel}.yaml"
    if rel in chain:
        raise ExperimentFileError(f"{where}: extends itself ({' -> '.join((*chain, rel))}); fix `extends`")
    data = _read(rel)
    bases = data.pop("extends", [])
    bases = [bases] if isinstance(bases, str) else bases
    if not isinstance(bases, list) or not all(isinstance(b, str) for b in bases):
        raise ExperimentFileError(f"{where}: extends must be a list of experiment files without .yaml, e.g. "
                                  f"[paper, datasets/pods], got {bases!r}; fix the file")
    settings: dict = {}
    for base in bases:
        if not (experiments_dir() / f"{base}.yaml").is_file():
            raise ExperimentFileError(f"{where}: extends {base!r}, but {FOLDER}/{base}.yaml does not exist; "
                                      "fix `extends`")
        settings.update(load_file(base, (*chain, rel)))
    for key, value in data.items():
        _check_entry(where, key, value)
        settings[key] = value
    return settings


def _unknown(what: str, value: str, subfolder: str) -> UnknownExperimentError:
    folder = f"{FOLDER}/{subfolder}/" if subfolder else f"{FOLDER}/"
    return UnknownExperimentError(f"unknown {what} {value!r}: no {folder}{value}.yaml (known: "
                                  f"{', '.join(names_in(subfolder))}); names are {GRAMMAR}, or add the file")


def files_of(name: str) -> list[str]:
    """The experiment files a name stands for, in the order they apply: NAME = <base>[-<method>][-sweep-<sweep>],
    base a file of experiments/, method one of experiments/methods/, sweep one of experiments/sweeps/."""
    base, marked, sweep = name.partition(SWEEP_MARK)
    bases = names_in()
    if base in bases:
        files = [base]
    else:
        head, _, method = base.rpartition("-")
        if head not in bases:
            raise _unknown("experiment", base, "")
        if method not in names_in(METHODS_FOLDER):
            raise _unknown("method", method, METHODS_FOLDER)
        files = [head, f"{METHODS_FOLDER}/{method}"]
    if marked:
        if sweep not in names_in(SWEEPS_FOLDER):
            raise _unknown("sweep", sweep, SWEEPS_FOLDER)
        files.append(f"{SWEEPS_FOLDER}/{sweep}")
    return files


def resolve(name: str) -> dict:
    """The `-S` overrides (dotted key -> value) of a named experiment: its files' (files_of), merged in order."""
    settings: dict = {}
    for rel in files_of(name):
        settings.update(load_file(rel))
    return settings


# Keys that make a run toybox-only (prpg.toybox.oracle): n > 0 renders the toybox world's own instances.
ORACLE_KEYS = ("synthesize.oracle.n", "priors.oracle_negatives.n")


def toybox_only_elsewhere(name: str) -> bool:
    """Whether a named experiment asks for oracle sources on a dataset of its own other than toybox (a paper
    run with an oracle method): it resolves, but its params fail validation, naming the keys."""
    settings = resolve(name)
    dataset = settings.get("common.dataset")  # absent: the workspace's own (toybox by default)
    return dataset is not None and dataset != "toybox" and any(settings.get(k, 0) for k in ORACLE_KEYS)


def all_names() -> list[str]:
    """Every name `prpg exp` runs: each base file of experiments/ alone, with each method, with each sweep;
    not the toybox-only methods (oracle) with a paper run's base."""
    methods, sweeps = names_in(METHODS_FOLDER), names_in(SWEEPS_FOLDER)
    names = [n for base in names_in()
             for n in (base, *(f"{base}-{m}" for m in methods), *(f"{base}{SWEEP_MARK}{s}" for s in sweeps))]
    return [n for n in names if not toybox_only_elsewhere(n)]


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
    return [f"{key}={hydra_value(value)}" for key, value in resolve(name).items()] + list(extra)


def hydra_value(value) -> str:
    """A YAML value as Hydra's override grammar writes it (true / false / null)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return str(value)


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
