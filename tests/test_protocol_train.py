"""Parity with the reference protocol for the inputs of generation and training (docs/protocol.md §1.2-1.7):
the paper's own scene prompts (downloaded, checksum verified, keyed by instance), fp32 LoRA training, the
number of filtered positives kept, and the paper experiment resolving to those values."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import http.server
import json
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from prpg import prompts as prompt_files
from prpg.cli import main as cli_main
from prpg.data.download import DownloadError
from prpg.runs.experiments import resolve
from prpg.prompts.download import download_prompts, reference_urls
from prpg.synthesize import synthesis_prompts
from tests.conftest import experiment_params, make_pods_tree, toybox_params, toybox_config

REPO = Path(__file__).resolve().parents[1]
SCENES = ("on a wooden desk", "in a sunny kitchen", "next to a laptop", "on a picnic blanket")


@pytest.fixture(autouse=True)
def _online_by_default(monkeypatch):
    for var in ("PRPG_OFFLINE", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)


def reference_table(instances: dict[str, str], n: int = 100) -> dict[str, list[str]]:
    """A file shaped like the reference's: {instance: [n sentences with '<new1> <word>']}, each instance's
    sentences its own (the instance name is in them, so a lookup by the wrong key shows)."""
    return {name: [f"A <new1> {word} {SCENES[k % len(SCENES)]}, view {k} of {name}" for k in range(n)]
            for name, word in instances.items()}


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ----------------------------------------------------------------------------- 1. download


@pytest.fixture
def served(tmp_path):
    """The three prompt files (reference format) served over HTTP on 127.0.0.1; yields (base URL, bytes)."""
    folder = tmp_path / "served"
    folder.mkdir()
    files = {}
    for dataset, (name, _) in prompt_files.REFERENCE_PROMPT_FILES.items():
        data = json.dumps(reference_table({f"{dataset}_a": "mug", f"{dataset}_b": "mug"})).encode()
        (folder / name).write_bytes(data)
        files[name] = data
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", files
    finally:
        server.shutdown()
        server.server_close()


def test_pinned_urls_and_checksums_are_the_reference_commit():
    commit = "2679a9234a0a264ab2cf1dcae1edb8d0c5990d1e"
    assert prompt_files.REFERENCE_COMMIT == commit
    urls = reference_urls()
    assert urls == {name: f"https://raw.githubusercontent.com/ssundaram21/personalized-rep/{commit}/configs/prompts/{name}"
                    for name in ("gpt_prompts_pods.json", "gpt_prompts_dogs.json", "gpt_prompts_df2.json")}
    assert dict(prompt_files.REFERENCE_PROMPT_FILES.values()) == {
        "gpt_prompts_pods.json": "01dcd7f727d12fb37e859e241b9cc79a87f57df8873c3bd865bacff78d79b3c2",
        "gpt_prompts_dogs.json": "d262a9bc29ba29b7f0713a788746a9032c81ba1e75d45208757964113d0bb9e2",
        "gpt_prompts_df2.json": "46d50f764a1b4837ff218d5c92e9d22627dbf98892cef509aeb936893c49e656",
    }


def test_download_verifies_and_writes_then_keeps_offline(served, tmp_path, monkeypatch):
    base, files = served
    good = {name: sha(data) for name, data in files.items()}
    dest = tmp_path / "data" / "prompts"
    assert download_prompts(dest, base_url=base, checksums=good) == {name: "downloaded" for name in files}
    for name, data in files.items():
        assert (dest / name).read_bytes() == data
    assert not [p for p in dest.iterdir() if p.name.startswith(".")]  # no temp file left
    # Verified copies are kept without the network (what a by-hand copy on an offline machine gets).
    monkeypatch.setenv("PRPG_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    assert download_prompts(dest, base_url=base, checksums=good) == {name: "kept" for name in files}


def test_wrong_checksum_is_one_clear_error_and_writes_nothing(served, tmp_path):
    base, files = served
    checksums = {name: sha(data) for name, data in files.items()}
    checksums["gpt_prompts_dogs.json"] = "0" * 64
    dest = tmp_path / "prompts"
    with pytest.raises(DownloadError) as err:
        download_prompts(dest, base_url=base, checksums=checksums)
    msg = str(err.value)
    assert "checksum mismatch for gpt_prompts_dogs.json" in msg and base + "gpt_prompts_dogs.json" in msg
    assert "0" * 64 in msg and "machine with internet" in msg and "nothing was written" in msg
    assert not dest.exists() or not any(dest.iterdir())  # not even the files that verified


def test_a_file_with_a_wrong_checksum_in_place_is_replaced(served, tmp_path):
    base, files = served
    good = {name: sha(data) for name, data in files.items()}
    dest = tmp_path / "prompts"
    dest.mkdir()
    (dest / "gpt_prompts_pods.json").write_text('{"edited": ["A <new1> mug"]}')
    status = download_prompts(dest, base_url=base, checksums=good)
    assert status["gpt_prompts_pods.json"] == "downloaded"
    assert (dest / "gpt_prompts_pods.json").read_bytes() == files["gpt_prompts_pods.json"]


def test_network_failure_names_the_url_and_the_manual_route(tmp_path):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}/"
    with pytest.raises(DownloadError) as err:
        download_prompts(tmp_path / "p", base_url=base, timeout=2)
    msg = str(err.value)
    assert "cannot download gpt_prompts_" in msg and base in msg and "curl -fLo" in msg
    assert "prpg data download prompts --dest" in msg


def test_cli_offline_without_files_fails_cleanly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PRPG_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: pytest.fail("network used"))
    assert cli_main(["data", "download", "prompts", "--dest", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert "PRPG_OFFLINE=1" in err and "raw.githubusercontent.com/ssundaram21/personalized-rep/2679a92" in err


@pytest.mark.skipif(not (REPO / prompt_files.PROMPTS_DIR).is_dir(), reason="reference prompts not downloaded")
def test_downloaded_reference_files_have_the_reference_shape():
    for dataset, (name, checksum) in prompt_files.REFERENCE_PROMPT_FILES.items():
        path = REPO / prompt_files.PROMPTS_DIR / name
        assert sha(path.read_bytes()) == checksum
        table = prompt_files.load_prompts(path)
        assert len(table) == {"pods": 100, "dogs": 80, "df2": 206}[dataset]
        assert all(len(v) == 100 and all("<new1>" in s for s in v) for v in table.values())


# ----------------------------------------------------------------------------- 2. instance-keyed prompt files


def test_positives_read_the_instances_own_list_from_an_instance_keyed_file(tmp_path):
    """Reference generate_data.py: prompts = prompt_dict[class_name]; ceil(n / 100) images per prompt."""
    path = tmp_path / "gpt_prompts_pods.json"
    table = reference_table({"mugs_cornell_dots": "mug", "mugs_blue_greek": "mug", "totes_blank": "bag"})
    path.write_text(json.dumps(table))
    cfg = toybox_config("synthesize.positives", n=450, prompt_file=str(path), prompt_source=None,
                        identifier="<new1>")
    prompts = synthesis_prompts(cfg, "mugs_blue_greek", "mug")
    assert len(prompts) == 500 and len(set(prompts)) == 100
    assert list(dict.fromkeys(prompts)) == table["mugs_blue_greek"]  # its own list, in file order
    # Our identifier replaces the literal <new1>; the reference's own category word stays ("bag" for totes).
    sks = synthesis_prompts(toybox_config("synthesize.positives", n=100, prompt_file=str(path),
                                          prompt_source=None, identifier="sks"), "totes_blank", "tote")
    assert sks[0] == "A sks bag on a wooden desk, view 0 of totes_blank"
    with pytest.raises(prompt_files.PromptFileError, match="mugs_unknown"):
        synthesis_prompts(cfg, "mugs_unknown", "mug_other")


def test_backgrounds_read_an_instance_keyed_file_by_the_categorys_instances(tmp_path):
    table = reference_table({"dog1": "dog", "dog2": "dog"}, n=3)
    sentences = prompt_files.category_prompts(table, category="dog", instances=["dog1", "dog2", "absent"])
    assert sentences[:2] == [table["dog1"][0], table["dog2"][0]] and len(sentences) == 6
    # a category-keyed (shipped) file works for both too
    shipped = prompt_files.load_prompts("dogs")
    assert prompt_files.prompts_for(shipped, instance="barry", category="dog") == shipped["dog"]


def test_prompt_source_must_hold_the_prompt_file():
    toybox_config("synthesize.positives", prompt_file="toybox", prompt_source="src/prpg/prompts")
    toybox_config("priors.backgrounds", prompt_file="pods", prompt_source="src/prpg/prompts/pods.json")
    with pytest.raises(ValueError, match="not inside prompt_source 'data/prompts'.*set prompt_source to src/prpg/prompts"):
        toybox_config("synthesize.positives", prompt_file="toybox", prompt_source="data/prompts")
    with pytest.raises(ValueError, match="not inside priors.backgrounds.prompt_source"):
        toybox_config("priors.backgrounds", prompt_file="pods", prompt_source="data/prompts")


def test_dvc_stages_depend_on_the_prompt_files_folder():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert "${synthesize.positives.prompt_source}" in stages["synthesize"]["do"]["deps"]
    assert "${synthesize.positives.prompt_source}" in stages["filter"]["do"]["deps"]  # sample_more
    assert "${priors.backgrounds.prompt_source}" in stages["priors"]["do"]["deps"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    positives, backgrounds = params["synthesize"]["positives"], params["priors"]["backgrounds"]
    # toybox default unchanged: the shipped set, its folder as the dependency
    assert positives["prompt_file"] == "toybox" and positives["prompt_source"] == "src/prpg/prompts"
    assert backgrounds["prompt_file"] == "toybox" and backgrounds["prompt_source"] == "src/prpg/prompts"


def test_rehearsal_writes_reference_format_stand_ins_for_the_worlds_instances(tmp_path):
    from prpg.rehearsal.rehearse import write_stand_in_prompts

    root = make_pods_tree(tmp_path / "repo" / "data" / "dogs", name="dogs",
                          instances=(("barry", "dog", "test"), ("dog10", "dog", "test")))
    settings = resolve("dogs-dinov2_vitb14")
    written = write_stand_in_prompts(tmp_path / "repo", settings, root)
    assert written == [tmp_path / "repo" / "data" / "prompts" / "gpt_prompts_dogs.json"]
    table = prompt_files.load_prompts(written[0])
    assert set(table) == {"barry", "dog10"} and all("<new1> dog" in s for s in table["barry"])
    cfg = toybox_config("synthesize.positives", n=8, prompt_file=str(written[0]), prompt_source=None)
    assert len(synthesis_prompts(cfg, "dog10", "dog")) == 8
    assert write_stand_in_prompts(tmp_path / "repo", settings, root) == []  # an existing file is kept


# ----------------------------------------------------------------------------- 3. precision, 4. n_keep, 5. resolve


def test_training_is_fp32_by_default_and_in_paper_runs():
    assert experiment_params("pods-dinov2_vitb14", "train")["train"].bf16 is False
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert params["train"]["bf16"] is False  # present, so `-S train.bf16=...` can set it
    assert dataclasses.replace(toybox_params()["train"], bf16=True).bf16 is True  # still an option


@pytest.mark.parametrize("dataset", ["df2", "dogs", "pods"])
def test_paper_experiment_resolves_to_the_reference(dataset):
    settings = resolve(f"{dataset}-dinov2_vitb14")
    path = f"data/prompts/gpt_prompts_{dataset}.json"
    expected = {
        # generation: the reference's GPT prompts (--prompts_path configs/prompts/gpt_prompts_<ds>.json)
        "synthesize.positives.prompt_file": path, "synthesize.positives.prompt_source": "data/prompts",
        "priors.backgrounds.prompt_file": path,
        "priors.backgrounds.prompt_source": "data/prompts",
        "synthesize.positives.n": 450, "synthesize.positives.guidance": 5.0, "synthesize.positives.steps": 50,
        # filtering: --filter_thresh 0.6, --n 450 (generate_data.py default), --max_image_count 5000
        "filter.threshold": 0.6, "filter.n_keep": 450, "filter.max_attempts": 5000,
        # training: fp32, LoRA alpha 0.5 (r 16 default), lr 3e-4, 4500 triplets, 450 synthetic
        "train.bf16": False, "train.lora_alpha": 0.5, "train.lr": 3e-4, "train.num_triplets": 4500,
        "train.num_synthetic": 450,
    }
    assert {k: settings[k] for k in expected} == expected
    train = experiment_params(f"{dataset}-dinov2_vitb14", "train")["train"]  # what params.yaml keeps
    assert (train.lora_r, train.lora_dropout, train.betas, train.batch,
            train.epochs) == (16, 0.3, (0.5, 0.999), 16, 2)


def test_a_paper_run_without_the_downloaded_prompts_says_how_to_get_them(tmp_path, monkeypatch, capsys):
    import shutil

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    make_pods_tree(tmp_path / "data" / "pods")
    monkeypatch.chdir(tmp_path)
    assert cli_main(["exp", "pods-dinov2_vitb14", "--instances", "test", "--dry"]) == 2
    err = capsys.readouterr().err
    assert "data/prompts/gpt_prompts_pods.json' not found" in err
    assert "prpg data download prompts --dest data/prompts" in err
