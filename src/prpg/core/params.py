"""Typed, validated views of params.yaml.

params.yaml is grouped `common` + one group per stage (DVC tracks each stage's groups). Every group
has a pydantic model here with `extra="forbid"`, so a typo in params.yaml or in `dvc exp run -S`
fails at once with the dotted key that is wrong, instead of silently running with a default.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator
from pydantic.dataclasses import dataclass

from prpg.core.configs import (
    BackgroundsConfig,
    ClassImagesConfig,
    CutPasteConfig,
    DreamBoothConfig,
    EncoderConfig,
    EvalConfig,
    FilterConfig,
    GateDreamBoothConfig,
    GeneratorConfig,
    NegativesConfig,
    OracleConfig,
    SynthesizeConfig,
    TrainConfig,
    check_backbone,
)


class ParamsError(ValueError):
    """params.yaml (or a group injected into a notebook) does not validate."""


class _Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CommonParams(_Group):
    seed: int = Field(ge=0)
    device: Literal["cpu", "cuda", "auto"]
    # torch's CPU threads in each stage process. Pinned, because CPU results depend on it (a reduction
    # split over more threads adds in another order): 2 gives the committed toybox metrics on any
    # machine. null: torch's default (the machine's cores), which makes results machine-dependent.
    threads: int | None = Field(ge=1)
    # toybox (embedded default) or a PODS-format dataset under data/: pods, dogs, df2, or your own.
    dataset: str
    data_root: str
    # What the data comes from, as a DVC dependency of the data stage: the toybox generator's code,
    # or the downloaded dataset folder (e.g. data/pods) for real runs.
    data_source: str

    @model_validator(mode="after")
    def _toybox_root(self) -> CommonParams:
        if self.dataset == "toybox" and Path(self.data_root) != Path("outputs/data/toybox"):
            raise ValueError("with dataset: toybox, data_root must be outputs/data/toybox (the data stage builds it there)")
        return self


class ToyboxParams(_Group):
    size: int = Field(ge=32, le=1024)
    instances_per_category: int = Field(ge=2)
    val_per_category: int = Field(ge=0)
    pool_per_category: int = Field(ge=1)
    test_per_split: int = Field(ge=1)
    dense_per_split: int = Field(ge=1)
    pool_test_per_split: int = Field(ge=0)
    workers: int = Field(ge=1)

    @model_validator(mode="after")
    def _split(self) -> ToyboxParams:
        if self.val_per_category >= self.instances_per_category:
            raise ValueError("val_per_category must be smaller than instances_per_category (test instances are the rest)")
        return self


class DataParams(_Group):
    min_train_images: int = Field(ge=1)
    require_train_masks: bool
    gallery_instances_per_category: int = Field(ge=1)
    toybox: ToyboxParams


class GatesParams(_Group):
    """Quality gates of the toybox models (numbers go into the model cards)."""

    samples_per_category: int = Field(ge=1)
    sample_steps: int = Field(ge=1)
    guidance: float = Field(ge=0)
    dreambooth_instance: str  # an instance of the toybox world
    dreambooth_class_images: int = Field(ge=1)
    dreambooth_samples: int = Field(ge=1)


class PretrainParams(_Group):
    """Pretraining of the toybox model zoo (frozen stage: the models ship in models/toybox)."""

    encoder: EncoderConfig
    generator: GeneratorConfig
    # The generator learns what categories look like from the first N pool instances per category
    # (pool instances are drawn by name, so these are the same in any larger pool); the encoder uses
    # the whole pool: telling categories apart across unseen instances needs many instances.
    generator_pool_per_category: int = Field(ge=1)
    # DreamBooth smoke gate, tuned for the tiny generator on CPU (the paper's 2e-6 x 400 is for SD 1.5).
    dreambooth: GateDreamBoothConfig
    gates: GatesParams


class RunParams(_Group):
    """What the per-category and per-instance stages run over (dvc.yaml `foreach`). No stage lists
    this group as a param: adding an instance adds stages, it does not invalidate the others."""

    categories: list[str]
    # params.yaml: `<instance>: {category: <category>}`, so dvc.yaml reads `${key}` (the instance) and
    # `${item.category}`. A mapping, not a list: DVC names a list's stages by position (personalize@0).
    # Parsed here to instance -> category.
    instances: dict[str, str]

    @field_validator("instances", mode="before")
    @classmethod
    def _instance_items(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        bad = [name for name, item in value.items() if not (isinstance(item, dict) and set(item) == {"category"})]
        if bad:
            raise ValueError(f"run.instances.{bad[0]}: expected {{category: <its category>}}, got {value[bad[0]]!r} "
                             f"(e.g. `{bad[0]}: {{category: mug}}`)")
        return {name: item["category"] for name, item in value.items()}

    @model_validator(mode="after")
    def _names(self) -> RunParams:
        # Names become stage names, folders and command-line arguments: data, never code or paths.
        from prpg.data.names import case_duplicates, name_error

        bad = [f"run.instances: {m}" for k in self.instances if (m := name_error(k, "instance name"))]
        bad += [f"run.instances[{k!r}]: {m}" for k, v in self.instances.items() if (m := name_error(v, "category"))]
        bad += [f"run.categories: {m}" for c in self.categories if (m := name_error(c, "category"))]
        for key, names in (("run.instances", list(self.instances)), ("run.categories", self.categories)):
            bad += [f"{key}: {' and '.join(map(repr, g))} differ only by case (one folder on case-insensitive "
                    "file systems); rename one" for g in case_duplicates(names)]
        if bad:
            raise ValueError("; ".join(bad))
        return self

    @model_validator(mode="after")
    def _known_categories(self) -> RunParams:
        unknown = sorted(set(self.instances.values()) - set(self.categories))
        if unknown:
            raise ValueError(f"instances use categories {unknown} that are not in run.categories")
        return self


class ModelsParams(_Group):
    """Which models the stages use: a hub id, optionally pinned as `<id>@<revision>` (paper), or a local
    folder under models/ (toybox). DVC tracks a hub model by this param and local folders through the
    stages' `models` dependency, so a local folder elsewhere would change results unseen."""

    generator: str
    backbone: str  # a paper backbone name (prpg.core.models.PAPER_BACKBONES), toybox, a folder or a hub id

    _backbone = field_validator("backbone")(check_backbone)  # a supported name, a local folder or a hub id

    @model_validator(mode="after")
    def _local_models_under_models_dir(self) -> ModelsParams:
        for key in ("generator", "backbone"):
            value = getattr(self, key)
            path = Path(value)
            if path.is_dir() and not path.resolve().is_relative_to(Path("models").resolve()):
                raise ValueError(f"models.{key} = {value!r} is a local folder outside models/: DVC tracks local "
                                 "models through the models/ folder, so copy it under models/ (or give a hub id)")
        return self


class PriorsParams(_Group):
    """Stage priors: per category, from the frozen generator, shared by the category's instances."""

    class_images: ClassImagesConfig
    negatives: NegativesConfig
    backgrounds: BackgroundsConfig
    oracle_negatives: OracleConfig  # toybox only: the category's pool instances rendered (train.negatives: oracle)


class SynthesisParams(_Group):
    positives: SynthesizeConfig
    cut_paste: CutPasteConfig
    oracle: OracleConfig  # toybox only: the instance itself rendered in new scenes (train.sources: [oracle])


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class FilterStageConfig(FilterConfig):
    n_keep: int = Field(ge=1)  # positives to keep per instance (reference --n)
    sample_more: bool  # when the synthesized set runs out, sample more (up to max_attempts)


# Where the train stage finds each kind of positive (per instance); "real" = the real train images
# themselves (the "real only" baseline: augmentation is then the only source of new views).
POSITIVE_SOURCES = {
    "dreambooth_filtered": "outputs/filtered/{instance}/kept",
    "dreambooth": "outputs/synthetic/{instance}/dreambooth",
    "cut_paste": "outputs/synthetic/{instance}/cut_paste",
    "oracle": "outputs/synthetic/{instance}/oracle",  # toybox only (synthesize.oracle.n > 0)
    "real": None,
}
# Where the train stage finds the negatives of a category (train.negatives): the frozen generator's images
# of the category, or (toybox only, priors.oracle_negatives.n > 0) renders of its pool instances.
NEGATIVE_SOURCES = {
    "generated": "outputs/negatives/{category}",
    "oracle": "outputs/negatives_oracle/{category}",
}


@dataclass(frozen=True, kw_only=True, config=ConfigDict(extra="forbid"))
class TrainStageConfig(TrainConfig):
    # Generation-method comparison: dreambooth_filtered (the paper's best set), dreambooth (unfiltered),
    # cut_paste, real (real only), or a mix, e.g. [dreambooth_filtered, cut_paste] ("combined").
    sources: tuple[Literal["dreambooth_filtered", "dreambooth", "cut_paste", "oracle", "real"], ...]
    negatives: Literal["generated", "oracle"]  # NEGATIVE_SOURCES

    def __post_init__(self):
        if not self.sources:
            raise ValueError("train.sources is empty: name at least one of " + ", ".join(POSITIVE_SOURCES))


# A group's schema is a pydantic model or a pydantic dataclass (the stage's own config class).
GROUPS: dict[str, Any] = {
    "common": CommonParams,
    "data": DataParams,
    "pretrain": PretrainParams,
    "run": RunParams,
    "models": ModelsParams,
    "priors": PriorsParams,
    "personalize": DreamBoothConfig,
    "synthesize": SynthesisParams,
    "filter": FilterStageConfig,
    "train": TrainStageConfig,
    "evaluate": EvalConfig,
}


def _format(group: str, err: ValidationError, source: str) -> str:
    """One line: every wrong dotted key with its value and what is wrong, then what to do."""
    problems = []
    for e in err.errors():
        key = ".".join([group, *(str(p) for p in e["loc"])])
        value = "" if isinstance(e.get("input"), dict) else f" = {e.get('input')!r}"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):  # models / dataclasses say it apart
            msg = "unknown key (no such parameter: check the spelling)"
        if e["type"] in ("missing", "missing_keyword_argument"):
            value, msg = "", "field required (add it)"
        # A whole-group check whose message already names its keys ("run.instances: ...") is not prefixed again.
        problems.append(msg if not e["loc"] and msg.startswith(f"{group}.") else f"{key}{value}: {msg}")
    return (f"{source}: invalid parameters in group '{group}': {'; '.join(problems)}; "
            "fix params.yaml (or the -S override) and run again")


def _did_you_mean(name: str) -> str:
    close = difflib.get_close_matches(name, GROUPS, n=1)
    return f"did you mean '{close[0]}'? " if close else ""


def parse_group(group: str, values: dict[str, Any] | None, source: str = "params.yaml",
                root: str | Path | None = None) -> Any:
    """Validate one group's dict (as papermill injects it) into its typed model. Local model folders are
    looked up under `root` (default: the folder of `source`)."""
    if group not in GROUPS:
        raise ParamsError(f"{source}: unknown params group '{group}' ({_did_you_mean(group)}known: {', '.join(GROUPS)})")
    if values is not None and not isinstance(values, dict):
        raise ParamsError(f"{source}: group '{group}' must be a mapping of keys to values, got "
                          f"{type(values).__name__} {repr(values)[:80]}; fix params.yaml (or the -S override)")
    root = Path(source).parent if root is None else Path(root)
    try:
        return TypeAdapter(GROUPS[group]).validate_python(values or {}, context={"root": root})
    except ValidationError as err:
        raise ParamsError(_format(group, err, source)) from None


def load_params(path: str | Path = "params.yaml", source: str | None = None,
                root: str | Path | None = None) -> dict[str, Any]:
    """Read and validate every known group of params.yaml; unknown top-level groups are an error.
    Messages name `source` (default: the path); local model folders are looked up under `root`
    (default: the file's folder)."""
    path = Path(path)
    name = source or str(path)
    root = path.parent if root is None else root
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{name}: not found; run from the repository root") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{name}: not valid YAML: {' '.join(str(err).split())}") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{name}: must be a mapping of params groups (common, data, ...), got {type(raw).__name__}")
    unknown = sorted(set(raw) - set(GROUPS))
    if unknown:
        raise ParamsError(f"{name}: unknown params group(s) {unknown} ({_did_you_mean(unknown[0])}"
                          f"known: {', '.join(GROUPS)})")
    # the file's own groups first, so that a wrong group is named before the groups it lacks
    parsed = {group: parse_group(group, raw.get(group), name, root) for group in sorted(GROUPS, key=lambda g: g not in raw)}
    groups = {group: parsed[group] for group in GROUPS}
    check_dataset_pairing(groups["common"], root, name)
    check_oracle(groups, name)
    return groups


def oracle_dataset_problem(key: str, n: int, dataset: str) -> str | None:
    """What is wrong with n > 0 oracle images (`key`) on `dataset`: they need the toybox world."""
    if n > 0 and dataset != "toybox":
        return (f"{key} = {n}: the oracle needs the toybox world (it renders the instance itself), but "
                f"common.dataset is {dataset!r}; set {key} to 0")
    return None


def check_oracle(groups: dict[str, Any], source: str = "params.yaml") -> None:
    """The oracle sources (prpg.toybox.oracle) exist in the toybox world only, and train reads them only when
    they are made: else a ParamsError naming the key."""
    common, synthesize, priors, train = (groups[g] for g in ("common", "synthesize", "priors", "train"))
    problems = [m for key, n in (("synthesize.oracle.n", synthesize.oracle.n),
                                 ("priors.oracle_negatives.n", priors.oracle_negatives.n))
                if (m := oracle_dataset_problem(key, n, common.dataset))]
    if "oracle" in train.sources and synthesize.oracle.n == 0:
        problems.append("train.sources has oracle but synthesize.oracle.n is 0 (no oracle positives): set it > 0")
    if train.negatives == "oracle" and priors.oracle_negatives.n == 0:
        problems.append("train.negatives is oracle but priors.oracle_negatives.n is 0 (no oracle negatives): "
                        "set it > 0")
    if problems:
        raise ParamsError(f"{source}: {'; '.join(problems)}; fix params.yaml (or the -S override)")


def check_dataset_pairing(common: CommonParams, root: str | Path = ".", source: str = "params.yaml") -> None:
    """common.dataset IS the name of the dataset under common.data_root (the prefix of its
    `<name>_info.json`, which the priors stage depends on): a mismatch is a ParamsError naming both.
    A dataset not downloaded or built yet has nothing to disagree with."""
    from prpg.data.dataset import DatasetError, check_dataset_name
    from prpg.data.names import BadNameError, check_name

    try:
        check_name(common.dataset, "dataset name", "common.dataset")
        check_dataset_name(Path(root) / common.data_root, common.dataset, missing_ok=True)
    except (BadNameError, DatasetError) as err:
        raise ParamsError(f"{source}: {err}; fix params.yaml (or the -S override)") from None


def setup_device(common: CommonParams) -> str:
    """What every torch stage does first: pin torch's CPU threads to common.threads, then resolve
    common.device (resolve_device)."""
    import torch

    if common.threads is not None:
        torch.set_num_threads(common.threads)
    return resolve_device(common.device)


def resolve_device(device: str) -> str:
    """'auto' picks CUDA when present; asking for CUDA without one is an error, not a silent CPU run."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ParamsError("common.device is 'cuda' but no CUDA device is available; set common.device: cpu or auto")
    return device


def fill_empty_groups(namespace: dict[str, Any], params_file: str | Path | None = None) -> list[str]:
    """A notebook's parameters cell declares each params group it reads as an empty dict; `dvc repro`
    injects the groups from params.yaml. Run interactively (nothing injected), fill every still-empty
    group of `namespace` (a notebook's `globals()`) from the repository's params.yaml, so that values
    come from params.yaml alone. Injected groups are left as they are. Returns the names filled."""
    from prpg.core.paths import repo_root

    empty = [name for name in GROUPS if namespace.get(name) == {}]
    if not empty:
        return []
    path = Path(params_file) if params_file is not None else repo_root() / "params.yaml"
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found; run from inside the repository") from None
    filled = [name for name in empty if raw.get(name)]
    for name in filled:
        namespace[name] = raw[name]
    return filled
