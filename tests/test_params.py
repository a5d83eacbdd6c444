from pathlib import Path

import pytest

from prpg.core.params import ParamsError, load_params, parse_group
from tests.conftest import toybox_group

ROOT = Path(__file__).resolve().parents[1]


def test_repo_params_validate():
    params = load_params(ROOT / "params.yaml")
    assert params["common"].dataset == "toybox"
    assert params["data"].toybox.instances_per_category == 20


def test_typo_names_the_dotted_key():
    with pytest.raises(ParamsError) as err:
        parse_group("data", toybox_group("data", {"toybox": {"sise": 64}}))
    assert "data.toybox.sise" in str(err.value)


def test_wrong_type_names_the_key():
    with pytest.raises(ParamsError, match=r"common\.seed"):
        parse_group("common", toybox_group("common", {"seed": "zero"}))


def test_toybox_split_must_leave_test_instances():
    with pytest.raises(ParamsError, match="val_per_category"):
        parse_group("data",
                    toybox_group("data", {"toybox": {"instances_per_category": 4, "val_per_category": 4}}))


def test_unknown_group_in_file(tmp_path):
    (tmp_path / "params.yaml").write_text("common: {seed: 1}\nfilterr: {}\n")
    with pytest.raises(ParamsError, match="filterr"):
        load_params(tmp_path / "params.yaml")


def test_device_cuda_without_cuda_is_an_error(monkeypatch):
    import torch

    from prpg.core.params import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu"
    with pytest.raises(ParamsError, match="common.device"):
        resolve_device("cuda")


def test_threads_pin_torchs_cpu_threads_and_must_be_positive():
    import torch

    from prpg.core.params import parse_group, setup_device

    before = torch.get_num_threads()
    try:
        assert setup_device(parse_group("common", toybox_group("common", {"threads": 1}))) == "cpu"
        assert torch.get_num_threads() == 1
        common = toybox_group("common", {"threads": None})  # null: leave torch's own setting
        setup_device(parse_group("common", common))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ParamsError, match="common.threads"):
        parse_group("common", toybox_group("common", {"threads": 0}))


def test_a_local_model_folder_must_live_under_models(tmp_path, monkeypatch):
    from prpg.core.params import ParamsError, parse_group

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "my-sd").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert parse_group("models",
                       toybox_group("models", {"generator": "models/my-sd"})).generator == "models/my-sd"
    hub = toybox_group("models", {"generator": "org/hub-id@v1"})
    assert parse_group("models", hub).generator == "org/hub-id@v1"  # a hub id
    with pytest.raises(ParamsError, match="models.generator.*outside models/"):
        parse_group("models", toybox_group("models", {"generator": "elsewhere"}))


def test_fill_empty_groups_fills_only_the_declared_empty_groups_from_the_repo_params(tmp_path, monkeypatch):
    from prpg.core.params import fill_empty_groups

    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text("common: {seed: 3}\nmodels: {backbone: toybox}\nfilter: {n_keep: 7}\n")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")  # JupyterLab's kernel cwd: the repo root is found above it
    namespace = {"common": {}, "models": {"backbone": "injected"}, "filter": {}, "train": {}, "other": {},
                 "instance": "mug_06"}
    assert fill_empty_groups(namespace) == ["common", "filter"]
    assert namespace["common"] == {"seed": 3} and namespace["filter"] == {"n_keep": 7}
    assert namespace["models"] == {"backbone": "injected"}  # injected by the runner: kept
    assert namespace["train"] == {}  # not in params.yaml: the group's defaults (parse_group) apply
    assert namespace["other"] == {} and namespace["instance"] == "mug_06"  # not params groups


def test_fill_empty_groups_reads_nothing_when_every_group_was_injected(tmp_path):
    from prpg.core.params import fill_empty_groups

    namespace = {"common": {"seed": 1}}
    assert fill_empty_groups(namespace, tmp_path / "missing.yaml") == []
    with pytest.raises(ParamsError, match="missing.yaml: not found"):
        fill_empty_groups({"common": {}}, tmp_path / "missing.yaml")


def test_fill_empty_groups_gives_the_repo_params_yaml_values():
    from prpg.core.params import fill_empty_groups

    namespace = {"common": {}, "run": {}}
    fill_empty_groups(namespace, ROOT / "params.yaml")
    params = load_params(ROOT / "params.yaml")
    assert parse_group("common", namespace["common"]) == params["common"]
    assert parse_group("run", namespace["run"]) == params["run"]


def test_a_missing_key_is_named(tmp_path):
    """params.yaml is the one source of the default run's values: no config default stands in for a key."""
    text = (ROOT / "params.yaml").read_text()
    lr_line = next(line for line in text.splitlines() if line.startswith("  lr: 0.001"))
    (tmp_path / "params.yaml").write_text(text.replace(lr_line + "\n", ""))
    with pytest.raises(ParamsError,
                       match=r"params\.yaml: invalid parameters in group 'train': train\.lr: field "
                                          r"required \(add it\); fix params\.yaml"):
        load_params(tmp_path / "params.yaml", source="params.yaml", root=ROOT)
