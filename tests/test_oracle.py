"""Oracle sources (prpg.toybox.oracle): the instance itself / pool instances rendered in new scenes,
disjoint from every image of the evaluation world, deterministic, toybox only."""

from __future__ import annotations

import hashlib
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from prpg.data.dataset import list_images
from prpg.toybox import ANNOS_FILE, EVAL_NAME, build_toybox
from prpg.toybox.oracle import SCENES_FILE, OracleError, World, oracle_negatives, oracle_positives, require_toybox

ROOT = Path(__file__).resolve().parents[1]
MICRO = {"size": 48, "instances_per_category": 2, "val_per_category": 1, "pool_per_category": 2,
         "test_per_split": 2, "dense_per_split": 1, "pool_test_per_split": 1}
N = 8  # two rounds of the four test splits


@pytest.fixture(scope="module")
def micro(tmp_path_factory) -> tuple[Path, World]:
    out = build_toybox(tmp_path_factory.mktemp("oracle") / "world", seed=5, workers=1, **MICRO)
    return out / EVAL_NAME, World(5, MICRO["size"], MICRO["instances_per_category"], MICRO["pool_per_category"])


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _hash(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()


def _scene_key(scene: dict) -> str:
    return json.dumps(scene, sort_keys=True)


def test_oracle_renders_are_disjoint_from_every_dataset_image(micro, tmp_path):
    root, world = micro
    annos = json.loads((root / ANNOS_FILE).read_text())
    dataset = {rel: _pixels(root / rel) for rel in annos}
    hashes = {_hash(a) for a in dataset.values()}
    scenes = {_scene_key(a["scene"]) for a in annos.values()}
    instances = json.loads((root / f"{EVAL_NAME}_info.json").read_text())["classes"]
    assert len(instances) == 10 and len(dataset) == 10 * (3 + 4 * 2 + 4 * 1)
    for name in instances:
        out = oracle_positives(world, name, N, tmp_path / name / "oracle")
        records = json.loads((out / SCENES_FILE).read_text())
        pngs = sorted(out.glob("*.png"))
        assert [p.name for p in pngs] == sorted(records) and len(pngs) == N and list_images(out) == pngs
        assert [r["split"] for r in records.values()] == ["in_distribution", "pose", "distractors",
                                                          "pose_and_distractors"] * 2
        own = [a for rel, a in dataset.items() if annos[rel]["class"] == name]
        for png in pngs:
            image = _pixels(png)
            mask = np.asarray(Image.open(out / "masks" / png.name))
            assert image.shape == (48, 48, 3) and mask.shape == (48, 48) and mask.any()
            assert records[png.name]["instance"] == name and records[png.name]["seed_tag"][1] == "oracle"
            assert _hash(image) not in hashes
            assert _scene_key(records[png.name]["scene"]) not in scenes
            # not even a near copy (the dataset's JPEG q95 moves pixels by ~1-2 levels): a new scene
            assert min(np.abs(image.astype(int) - a.astype(int)).mean() for a in own) > 8


def test_oracle_negatives_are_pool_instances_of_the_category(micro, tmp_path):
    root, world = micro
    evaluation, pool = world.instances()
    annos = json.loads((root / ANNOS_FILE).read_text())
    hashes = {_hash(_pixels(root / rel)) for rel in annos}
    scenes = {_scene_key(a["scene"]) for a in annos.values()}
    out = oracle_negatives(world, "tote", 5, tmp_path / "tote")
    records = json.loads((out / SCENES_FILE).read_text())
    names = [r["instance"] for r in records.values()]
    assert names == ["pool_tote_000", "pool_tote_001"] * 2 + ["pool_tote_000"]  # the pool, in turn
    assert all(pool[n] not in evaluation.values() and pool[n].category == "tote" for n in names)
    for png in sorted(out.glob("*.png")):
        assert _hash(_pixels(png)) not in hashes and _scene_key(records[png.name]["scene"]) not in scenes
    assert (out / "masks" / "0004.png").is_file()


def test_oracle_renders_are_deterministic_for_a_seed(micro, tmp_path):
    _, world = micro
    a = oracle_positives(world, "mug_01", 4, tmp_path / "a")
    b = oracle_positives(world, "mug_01", 4, tmp_path / "b")
    c = oracle_positives(World(6, 48, 2, 2), "mug_01", 4, tmp_path / "c")

    def files(d: Path) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.is_file()}

    assert files(a) == files(b) and files(a / "masks") == files(b / "masks")
    assert files(a)["0000.png"] != files(c)["0000.png"]  # another world, another instance
    neg = [oracle_negatives(world, "mug", 3, tmp_path / f"n{k}") for k in range(2)]
    assert files(neg[0]) == files(neg[1])


def test_zero_is_an_empty_folder_and_bad_names_are_one_error(micro, tmp_path):
    _, world = micro
    out = oracle_positives(world, "anything", 0, tmp_path / "off")
    assert sorted(p.name for p in out.iterdir()) == ["masks", SCENES_FILE] and not any((out / "masks").iterdir())
    assert json.loads((out / SCENES_FILE).read_text()) == {}  # never an empty folder (DVC would not restore it)
    neg = oracle_negatives(world, "mug", 0, tmp_path / "neg")
    assert list_images(neg) == [] and json.loads((neg / SCENES_FILE).read_text()) == {}
    with pytest.raises(OracleError, match="'pool_mug_000' is not an evaluation instance"):
        oracle_positives(world, "pool_mug_000", 1, tmp_path / "x")
    with pytest.raises(OracleError, match="unknown toybox category 'cat'"):
        oracle_negatives(world, "cat", 1, tmp_path / "x")
    with pytest.raises(OracleError, match=r"synthesize\.oracle\.n = 3: the oracle needs the toybox world"):
        require_toybox("pods", "synthesize.oracle.n", 3)
    require_toybox("pods", "synthesize.oracle.n", 0)  # off: fine anywhere


def test_oracle_experiments_are_toybox_only(tmp_path, monkeypatch, capsys):
    from prpg.cli import main
    from prpg.prompts import stand_in_reference_prompts
    from tests.conftest import experiment_params

    p = experiment_params("toybox-oracle", "synthesize", "priors", "train")
    assert p["synthesize"].oracle.n == 100 and p["priors"].oracle_negatives.n == 200
    assert p["train"].sources == ("oracle",) and p["train"].negatives == "oracle"
    q = experiment_params("toybox-oracle_positives", "train")
    assert q["train"].sources == ("oracle",) and q["train"].negatives == "generated"

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    shutil.copytree(ROOT / "models", tmp_path / "models")
    (tmp_path / "data" / "prompts").mkdir(parents=True)
    (tmp_path / "data" / "prompts" / "gpt_prompts_pods.json").write_text(
        json.dumps(stand_in_reference_prompts({"mug_06": "mug"})))
    monkeypatch.chdir(tmp_path)
    assert main(["exp", "pods-dinov2_vitb14-oracle", "--dry"]) != 0  # before anything is written or DVC starts
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "dvc exp run" not in err
    assert re.search(r"synthesize\.oracle\.n = 100: the oracle needs the toybox world.*"
                     r"priors\.oracle_negatives\.n = 200: the oracle needs the toybox world", err)


def test_training_on_oracle_sources_that_were_not_made_is_one_error(tmp_path, monkeypatch):
    from prpg.core.params import ParamsError, check_oracle, load_params
    from prpg.train.triplets import negative_set, positive_sets

    groups = load_params(ROOT / "params.yaml")
    groups["train"] = dataclasses.replace(groups["train"], sources=("oracle",), negatives="oracle")
    with pytest.raises(ParamsError, match="train.sources has oracle but synthesize.oracle.n is 0.*"
                                          "train.negatives is oracle but priors.oracle_negatives.n is 0"):
        check_oracle(groups)
    monkeypatch.chdir(tmp_path)  # the sources are relative to the repository root
    with pytest.raises(ValueError, match="outputs/synthetic/mug_06/oracle holds no images: set synthesize.oracle.n"):
        positive_sets(["oracle"], "mug_06", [])
    with pytest.raises(ValueError, match="negatives_oracle/mug holds no images; set priors.oracle_negatives.n"):
        negative_set("oracle", "mug")
    (tmp_path / "outputs/negatives_oracle/mug").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "outputs/negatives_oracle/mug/0000.png")
    assert negative_set("oracle", "mug") == [Path("outputs/negatives_oracle/mug/0000.png")]
