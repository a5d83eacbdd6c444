"""prpg repro: which stages run together, and a failure stops the run naming the stage."""

import io
import shutil
from pathlib import Path

import pytest

from prpg.runs import repro

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["data", "zoo", "priors@mug", "priors@shoe", "personalize@mug_06", "personalize@shoe_06",
         "evaluate@mug_06", "evaluate@shoe_06", "aggregate", "report"]


def test_plan_a_category_with_one_instance_leads_its_chain_in_dvc_yaml_order():
    p = repro.plan(NAMES, ["mug", "shoe"], {"mug_06": "mug", "shoe_06": "shoe"})
    assert p.head == ("data", "zoo")
    assert p.shared == ()
    assert p.chains == (("priors@mug", "personalize@mug_06", "evaluate@mug_06"),
                        ("priors@shoe", "personalize@shoe_06", "evaluate@shoe_06"))


def test_plan_a_category_shared_by_several_instances_runs_before_their_chains():
    names = NAMES[:6] + ["personalize@shoe_07"] + NAMES[6:8] + ["evaluate@shoe_07"] + NAMES[8:]
    p = repro.plan(names, ["mug", "shoe"], {"mug_06": "mug", "shoe_06": "shoe", "shoe_07": "shoe"})
    assert p.shared == (("priors@shoe",),)
    assert p.chains == (("priors@mug", "personalize@mug_06", "evaluate@mug_06"),
                        ("personalize@shoe_06", "evaluate@shoe_06"), ("personalize@shoe_07", "evaluate@shoe_07"))


def test_plan_leaves_unlisted_keys_to_the_final_repro():
    p = repro.plan(NAMES, ["mug"], {"shoe_06": "shoe", "tote_06": "tote"})
    assert p.shared == (("priors@mug",),)  # no instance of its own: before the chains
    assert p.chains == (("priors@shoe", "personalize@shoe_06", "evaluate@shoe_06"),)  # tote_06: no stages


def test_a_failing_chain_stops_new_ones_and_names_its_stages(monkeypatch, tmp_path):
    calls = []

    def fake_run(cmd, cwd, env, progress, gpu):
        calls.append(cmd)
        return 1 if "personalize@b" in cmd else 0

    monkeypatch.setattr(repro, "_run_dvc", fake_run)
    groups = [("personalize@a", "evaluate@a"), ("personalize@b", "evaluate@b"), ("personalize@c",)]
    with pytest.raises(repro.ReproError, match=r"personalize@b evaluate@b failed.*dvc --wait-for-lock repro -s "
                                               r"personalize@b evaluate@b"):
        repro.run_groups(groups, 1, tmp_path)
    assert calls == [["dvc", "--wait-for-lock", "repro", "-s", *g] for g in groups[:2]]  # c never started


def test_jobs_must_be_positive():
    with pytest.raises(repro.ReproError, match="--jobs must be at least 1"):
        repro.repro(0)


def test_a_bad_run_group_fails_before_any_dvc_call_naming_the_key(tmp_path, monkeypatch):
    from prpg.core.params import ParamsError

    monkeypatch.setattr(repro, "_run_dvc", lambda *a, **k: pytest.fail("dvc called"))
    (tmp_path / "params.yaml").write_text("run:\n  categories: [mug]\n  instances:\n    shoe_06: shoe\n")
    with pytest.raises(ParamsError, match="run.*shoe"):
        repro.repro(2, cwd=tmp_path)


def test_the_head_runs_one_stage_at_a_time(monkeypatch, tmp_path):
    """`dvc repro data zoo` in a fresh clone checks the frozen zoo's deps before data has run."""
    from prpg.runs.experiments import set_instances

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    set_instances(tmp_path / "params.yaml", {"mug_06": "mug"})
    monkeypatch.setattr(repro, "stage_names", lambda cwd: NAMES)
    calls = []
    monkeypatch.setattr(repro, "_run_dvc", lambda cmd, cwd, env, progress, gpu: calls.append(cmd[3:]) or 0)
    repro.repro(1, cwd=tmp_path)
    assert calls[:2] == [["data"], ["zoo"]] and calls[-1] == []


# What `dvc repro -s priors@mug personalize@mug_06` prints (DVC 3), stage output included.
DVC_OUTPUT = """\
Stage 'data' didn't change, skipping
WARNING: stage: 'zoo' is frozen. Its dependencies are not going to be reproduced.
Verifying outputs in frozen stage: 'zoo'
Running stage 'priors@mug':
> python -m prpg.core.notebook notebooks/02_priors.py 'outputs/executed/02_priors/mug.ipynb' -f params.yaml
prpg: priors mug: 16 class images in 3.1 s
Updating lock file 'dvc.lock'

Running stage 'personalize@mug_06':
> python -m prpg.core.notebook notebooks/03_personalize.py x.ipynb -f params.yaml -r instance mug_06
prpg: DreamBooth loss 0.12
notebooks/03_personalize.py, cell at line 40 failed: ValueError: boom
full traceback: x.ipynb (that cell's output) and x.log
ERROR: failed to reproduce 'personalize@mug_06': failed to run: python -m prpg.core.notebook ..., exited with 1
Use `dvc push` to send your updates to remote storage.
"""


def test_progress_draws_one_line_per_stage_that_ran_and_passes_the_rest_through():
    out = io.StringIO()
    progress = repro.Progress(5, out=out)
    progress.follow(io.StringIO(DVC_OUTPUT))
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("[3/5] priors@mug  ") and lines[0].endswith(" s")  # data and zoo counted, unshown
    assert lines[1] == repro.INDENT + "priors mug: 16 class images in 3.1 s"
    assert lines[2].startswith("[4/5] personalize@mug_06  ") and lines[2].endswith(" s  failed")
    assert lines[3:] == [repro.INDENT + "DreamBooth loss 0.12",
                         repro.INDENT + "notebooks/03_personalize.py, cell at line 40 failed: ValueError: boom",
                         repro.INDENT + "full traceback: x.ipynb (that cell's output) and x.log",
                         "ERROR: failed to reproduce 'personalize@mug_06': failed to run: python -m "
                         "prpg.core.notebook ..., exited with 1"]
    assert progress.ran == ["priors@mug", "personalize@mug_06"] and progress.done == {"data", "zoo", *progress.ran}


def test_has_remote_reads_the_repository_config(tmp_path):
    (tmp_path / ".dvc").mkdir()
    (tmp_path / ".dvc/config").write_text("[core]\n    autostage = true\n")
    assert not repro.has_remote(tmp_path)
    (tmp_path / ".dvc/config.local").write_text("['remote \"store\"']\n    url = /mnt/store\n")
    assert repro.has_remote(tmp_path)
