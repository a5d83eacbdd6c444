"""Names are data, never code: one naming rule for instance, category and dataset names, enforced alike
by `prpg data check` (check_dataset), the reader (load_dataset) and params validation; paths built
from names and JSON fields stay inside their root; and dvc.yaml quotes what it interpolates anyway."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from prpg.data import DatasetError, check_dataset, check_dataset_name, format_report, load_dataset
from prpg.data.dataset import MASK_FOLDERS, SPLITS
from prpg.data.names import RULE_TEXT, BadNameError, check_name, check_unique, contained
from prpg.core.params import ParamsError, load_params, parse_group
from tests.conftest import REPO, make_pods_tree, toybox_group, write_image
from tests.pipeline_repo import copy_repo, run

# name -> what the message says is wrong with it
BAD_NAMES = {
    "mug|tee PWNED3": "contains ' ' '|'",
    "mug;touch PWNED": "contains ' ' ';'",
    "mug$(id)": "contains '$' '(' ')'",
    "mug`id`": "contains '`'",
    "mug 01": "contains ' '",
    "mug'01": "contains \"'\"",
    'mug"01': "contains '\"'",
    "../mug": "contains '..'",
    "mug..01": "contains '..'",
    "/etc/passwd": "contains '/'",
    ".hidden": "starts with '.'",
    "-rf": "starts with '-'",
    "m" * 101: "is 101 characters long",
    "": "is empty",
    "müg": "contains 'ü'",
    "mug\n": "contains '\\n'",
}
GOOD_NAMES = ["mug_06", "pool_mug_000", "mugs_cornell_dots", "828_1_2", "dog10", "barry", "toybox", "m" * 100]


def _rule_named(message: str) -> None:
    assert RULE_TEXT in message and "rename it" in message, message


# ---------------------------------------------------------------- the rule itself


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_existing_names_are_valid(name):
    assert check_name(name, "instance name", "here") == name


@pytest.mark.parametrize(("name", "why"), BAD_NAMES.items(), ids=range(len(BAD_NAMES)))
def test_check_name_says_what_where_and_the_rule(name, why):
    with pytest.raises(BadNameError) as err:
        check_name(name, "instance name", "params.yaml run.instances")
    msg = str(err.value)
    assert msg.startswith(f"params.yaml run.instances: instance name {name!r} {why};"), msg
    _rule_named(msg)


def test_case_only_duplicates_and_containment(tmp_path):
    with pytest.raises(BadNameError, match="'Mug_00' and 'mug_00' differ only by case"):
        check_unique(["mug_00", "Mug_00", "shoe"], "instance", "train/")
    check_unique(["mug_00", "mug_01"], "instance", "train/")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "ok").mkdir()
    assert contained(tmp_path / "root", "ok") == (tmp_path / "root" / "ok").resolve()
    for escape in ("../x", "/etc/passwd", "ok/../../x"):
        with pytest.raises(BadNameError, match="outside .*must stay inside their root"):
            contained(tmp_path / "root", escape, "class_to_sc")
    (tmp_path / "root" / "link").symlink_to(tmp_path)
    with pytest.raises(BadNameError, match="'link/x' leads to .*outside"):
        contained(tmp_path / "root", "link/x")


# ---------------------------------------------------------------- datasets: check and reader agree


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _rename_instance(root: Path, old: str, new: str) -> None:
    """Rename an instance everywhere (folders, info json, annos), as a user's own dataset would name it."""
    for folder in SPLITS + MASK_FOLDERS:
        if (root / folder / old).is_dir():
            (root / folder / old).rename(root / folder / new)

    def info(d):
        d["classes"] = [new if c == old else c for c in d["classes"]]
        for key in ("class_to_idx", "class_to_sc", "class_to_split"):
            d[key][new] = d[key].pop(old)

    _edit_json(root / "pods_info.json", info)
    annos = json.loads((root / "pods_image_annos.json").read_text())
    moved = {k.replace(f"/{old}/", f"/{new}/"): {**v, "class": new if v.get("class") == old else v["class"]}
             for k, v in annos.items()}
    (root / "pods_image_annos.json").write_text(json.dumps(moved))


def _both_refuse(root: Path, where: Path, *says: str) -> str:
    """check_dataset reports a problem at `where` saying `says`, and load_dataset refuses with it."""
    problems = check_dataset(root)
    hits = [p for p in problems if p.path == where and all(s in p.message for s in says)]
    assert hits, format_report(problems)
    with pytest.raises(DatasetError) as err:
        load_dataset(root)
    assert str(hits[0]) in str(err.value), (str(hits[0]), str(err.value))
    return str(hits[0])


@pytest.mark.parametrize("name", ["mug|tee PWNED3", "mug;touch PWNED", "mug$(id)", "mug`id`", "mug 01",
                                  "mug'01", 'mug"01', "-rf", "m" * 101, "müg"])
def test_bad_instance_folder_name(pods_tree, name):
    _rename_instance(pods_tree, "mug_00", name)
    msg = _both_refuse(pods_tree, pods_tree / "train" / name, f"instance folder name {name!r}", RULE_TEXT)
    _rule_named(msg)
    # the info json that lists it is reported too, with the key it came from
    _both_refuse(pods_tree, pods_tree / "pods_info.json", f"'classes': instance name {name!r}")
    assert not (Path.cwd() / "PWNED").exists() and not (Path.cwd() / "PWNED3").exists()


@pytest.mark.parametrize(("name", "why"), [("../mug_00", "contains '..'"), (".hidden", "starts with '.'"),
                                         ("/abs/mug", "contains '/'"), ("", "is empty")])
def test_bad_instance_name_in_info_json(pods_tree, name, why):
    # A name no folder can carry ('..', '/', empty) or a hidden one: the info json is where it is wrong.
    _edit_json(pods_tree / "pods_info.json", lambda d: (d["classes"].append(name),
                                                         d["class_to_idx"].update({name: 9}),
                                                         d["class_to_sc"].update({name: "mug"}),
                                                         d["class_to_split"].update({name: "test"})))
    says = f"'classes': instance name {name!r} {why}"
    msg = _both_refuse(pods_tree, pods_tree / "pods_info.json", says)
    _rule_named(msg)


def test_case_insensitive_duplicate_instance_folders(pods_tree):
    (pods_tree / "train" / "MUG_00").mkdir()
    if (pods_tree / "train" / "mug_00").samefile(pods_tree / "train" / "MUG_00"):
        pytest.skip("case-insensitive file system: the two folders cannot both exist")
    for k in range(3):
        write_image(pods_tree / "train" / "MUG_00" / f"{k:04d}.jpg")
    _both_refuse(pods_tree, pods_tree / "train", "instance folders 'MUG_00' and 'mug_00' differ only by case")


def test_case_insensitive_duplicate_classes(pods_tree):
    _edit_json(pods_tree / "pods_info.json", lambda d: d["classes"].append("MUG_00"))
    _both_refuse(pods_tree, pods_tree / "pods_info.json",
                 "'classes' lists 'MUG_00' and 'mug_00', which differ only by case")


@pytest.mark.parametrize("category", ["../mug", "mug;touch PWNED", "/tmp/x", "my mugs"])
def test_bad_category_in_class_to_sc(pods_tree, category):
    _edit_json(pods_tree / "pods_info.json", lambda d: d["class_to_sc"].update(mug_00=category))
    says = f"class_to_sc['mug_00']: category {category!r}"
    msg = _both_refuse(pods_tree, pods_tree / "pods_info.json", says)
    _rule_named(msg)


def test_bad_category_passed_to_the_reader(tmp_path):
    root = make_pods_tree(tmp_path / "mine", instances=(("keys", "", ""),), n_test=1, n_dense=0, info=False,
                          annos=False)
    says = r"load_dataset\(categories= / category=\) for 'keys': category '\.\./x' contains '\.\.'"
    with pytest.raises(DatasetError, match=says):
        load_dataset(root, category="../x")


@pytest.mark.parametrize("key", ["../../etc/passwd", "/etc/passwd", "test/../../outside.jpg"])
def test_annos_entry_pointing_outside_the_root(pods_tree, key):
    entry = {"class": "mug_00", "split": "test"}
    _edit_json(pods_tree / "pods_image_annos.json", lambda d: d.update({key: entry}))
    _both_refuse(pods_tree, pods_tree / "pods_image_annos.json", f"entry {key!r} points outside the dataset",
                 "never '..' or an absolute path")


def test_symlinked_image_pointing_outside(pods_tree, tmp_path):
    outside = write_image(tmp_path / "elsewhere" / "secret.jpg")
    link = pods_tree / "train" / "mug_00" / "0003.jpg"
    link.symlink_to(outside)
    _both_refuse(pods_tree, link, f"is a symlink to {outside.resolve()}, outside the dataset",
                 "copy the file")


def test_symlinked_folder_pointing_outside_is_never_read(pods_tree):
    link = pods_tree / "test" / "mug_00" / "dev"
    link.symlink_to("/dev")  # reading /dev/zero as an image would never end
    _both_refuse(pods_tree, link, "is a symlink to /dev, outside the dataset")


def test_symlink_inside_the_dataset_and_a_symlinked_root_are_fine(pods_tree, tmp_path):
    (tmp_path / "alias").symlink_to(pods_tree)
    assert check_dataset(tmp_path / "alias") == []
    (pods_tree / "notes").mkdir()
    (pods_tree / "notes" / "readme.txt").symlink_to(pods_tree / "pods_info.json")
    assert check_dataset(pods_tree) == []


def test_dataset_without_info_json(pods_tree):
    (pods_tree / "pods_info.json").unlink()
    msg = _both_refuse(pods_tree, pods_tree, "no *_info.json", "add one")
    assert "common.dataset" in msg


def test_bad_dataset_name_in_info_file_name(pods_tree):
    (pods_tree / "pods_info.json").rename(pods_tree / "my pods_info.json")
    _both_refuse(pods_tree, pods_tree / "my pods_info.json",
                 "dataset name (this file's name before _info.json) 'my pods' contains ' '")


# ---------------------------------------------------------------- common.dataset <-> <name>_info.json


def test_dataset_name_must_match_info_json_prefix(pods_tree):
    check_dataset_name(pods_tree, "pods")
    with pytest.raises(DatasetError) as err:
        check_dataset_name(pods_tree, "dogs")
    msg = str(err.value)
    assert msg.startswith("common.dataset is 'dogs' but the dataset at") and "is named 'pods'" in msg, msg
    assert "set common.dataset: pods, or rename the file to dogs_info.json" in msg
    check_dataset_name(pods_tree.parent / "not_built_yet", "pods", missing_ok=True)


def _params_file(tmp_path: Path, **groups) -> Path:
    """The repository's params.yaml with `groups` merged in (toybox_group), written to tmp_path."""
    names = yaml.safe_load((REPO / "params.yaml").read_text())
    values = {g: toybox_group(g, groups.get(g, {})) for g in names}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(values))
    return tmp_path / "params.yaml"


def test_params_dataset_must_match_the_info_json(tmp_path):
    make_pods_tree(tmp_path / "data" / "pods", n_test=1, n_dense=0)
    common = {"dataset": "dogs", "data_root": "data/pods", "data_source": "data/pods"}
    with pytest.raises(ParamsError) as err:
        load_params(_params_file(tmp_path, common=common))
    msg = str(err.value)
    assert "common.dataset is 'dogs'" in msg and "is named 'pods'" in msg and "pods_info.json" in msg, msg
    load_params(_params_file(tmp_path, common={**common, "dataset": "pods"}))
    # not downloaded yet: nothing to disagree with
    load_params(_params_file(tmp_path, common={**common, "dataset": "dogs", "data_root": "data/dogs"}))
    with pytest.raises(ParamsError, match=r"common.dataset: dataset name '\.\./pods' contains '\.\.'"):
        load_params(_params_file(tmp_path, common={**common, "dataset": "../pods"}))


# ---------------------------------------------------------------- params: run.instances / run.categories


@pytest.mark.parametrize(("name", "why"), BAD_NAMES.items(), ids=range(len(BAD_NAMES)))
def test_bad_instance_key_in_params(name, why):
    with pytest.raises(ParamsError) as err:
        parse_group("run", toybox_group("run", {"categories": ["mug"], "instances": {name: {"category": "mug"}}}))
    msg = str(err.value)
    assert f"run.instances: instance name {name!r} {why}" in msg, msg
    _rule_named(msg)


@pytest.mark.parametrize("category", ["mug;touch PWNED", "../mug", "-mug"])
def test_bad_category_in_params(category):
    with pytest.raises(ParamsError) as err:
        parse_group("run", toybox_group("run", {"categories": [category], "instances": {"mug_06": {"category": category}}}))
    msg = str(err.value)
    assert f"run.instances['mug_06']: category {category!r}" in msg, msg
    assert f"run.categories: category {category!r}" in msg, msg
    _rule_named(msg)


def test_case_only_duplicates_in_params():
    with pytest.raises(ParamsError, match="run.instances: 'MUG_06' and 'mug_06' differ only by case"):
        run = {"categories": ["mug"], "instances": {"mug_06": {"category": "mug"}, "MUG_06": {"category": "mug"}}}
        parse_group("run", toybox_group("run", run))
    with pytest.raises(ParamsError, match="run.categories: 'Mug' and 'mug' differ only by case"):
        parse_group("run", toybox_group("run", {"categories": ["mug", "Mug"]}))


def test_bad_name_in_a_params_file(tmp_path):
    path = _params_file(tmp_path, run={"categories": ["mug"], "instances": {"mug;touch PWNED": {"category": "mug"}}})
    with pytest.raises(ParamsError, match=rf"^{path}: .*run.instances: instance name 'mug;touch PWNED'"):
        load_params(path)


# ---------------------------------------------------------------- end to end: no injection


HOSTILE = "mug;touch PWNED"
# Everything a shell would act on but a single quote: what the rule refuses, DVC renders, quoting holds.
WORST = "mug;touch PWNED1 $(touch PWNED2) `touch PWNED3` \"q\" | tee PWNED4 & x>PWNED5"


@pytest.fixture(scope="module")
def hostile_repo(tmp_path_factory) -> Path:
    return copy_repo(tmp_path_factory.mktemp("hostile") / "repo",
                     params={"run": {"categories": ["mug"], "instances": {HOSTILE: {"category": "mug"}}}})


def test_hostile_instance_is_refused_and_quoting_holds_anyway(hostile_repo):
    from dvc.repo import Repo

    # 1. Validation refuses it before anything runs.
    proc = run(["prpg", "params"], hostile_repo, check=False)
    assert proc.returncode != 0
    assert f"run.instances: instance name {HOSTILE!r} contains ' ' ';'" in proc.stderr, proc.stderr
    with pytest.raises(ParamsError, match="run.instances: instance name 'mug;touch PWNED'"):
        load_params(hostile_repo / "params.yaml")
    assert not (hostile_repo / "PWNED").exists()

    # 2. Validation bypassed (DVC reads params.yaml itself): every rendered command keeps the name as
    # one argument, and running it through a shell creates nothing.
    values = yaml.safe_load((hostile_repo / "params.yaml").read_text())
    values["run"]["instances"] = {WORST: {"category": "mug"}}
    values["run"]["categories"] = ["mug", WORST]
    (hostile_repo / "params.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    with Repo(str(hostile_repo)) as repo:
        cmds = {s.name: s.cmd for s in repo.index.stages if WORST in getattr(s, "name", "")}
    stages = ("priors", "personalize", "synthesize", "filter", "train", "evaluate")
    assert sorted(cmds) == sorted(f"{s}@{WORST}" for s in stages), sorted(cmds)
    for addressing, cmd in cmds.items():
        [cmd] = cmd if isinstance(cmd, list) else [cmd]
        argv = shlex.split(cmd)
        assert argv[:3] == ["python", "-m", "prpg.core.notebook"], argv
        assert argv[-1] == WORST and argv[-2] in ("instance", "category"), argv
        assert argv[4].endswith(f"/{WORST}.ipynb"), argv
        # the real shell: the runner swapped for printf, which prints its arguments one per line
        out = subprocess.run(["sh", "-c", cmd.replace("python -m prpg.core.notebook", "printf '%s\\n'", 1)],
                             cwd=hostile_repo, capture_output=True, text=True, check=True).stdout
        assert out.splitlines()[-1] == WORST, (addressing, out)
    assert not [p.name for p in hostile_repo.iterdir() if p.name.startswith("PWNED")]
    assert not (Path(os.getcwd()) / "PWNED1").exists()
