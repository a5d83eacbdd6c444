"""prpg repro: which stages run together, and a failure stops the run naming the stage."""

import subprocess

import pytest

from prpg.runs import repro

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

    def fake_run(cmd, cwd):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1 if "personalize@b" in cmd else 0)

    monkeypatch.setattr(repro.subprocess, "run", fake_run)
    groups = [("personalize@a", "evaluate@a"), ("personalize@b", "evaluate@b"), ("personalize@c",)]
    with pytest.raises(repro.ReproError, match=r"personalize@b evaluate@b failed.*dvc --wait-for-lock repro -s "
                                               r"personalize@b evaluate@b"):
        repro.run_groups(groups, 1, tmp_path, "instance")
    assert calls == [["dvc", "--wait-for-lock", "repro", "-s", *g] for g in groups[:2]]  # c never started


def test_jobs_must_be_positive():
    with pytest.raises(repro.ReproError, match="--jobs must be at least 1"):
        repro.repro(0)


def test_a_bad_run_group_fails_before_any_dvc_call_naming_the_key(tmp_path, monkeypatch):
    from prpg.core.params import ParamsError

    monkeypatch.setattr(repro.subprocess, "run", lambda *a, **k: pytest.fail("dvc called"))
    (tmp_path / "params.yaml").write_text("run:\n  categories: [mug]\n  instances:\n    shoe_06: shoe\n")
    with pytest.raises(ParamsError, match="run.*shoe"):
        repro.repro(2, cwd=tmp_path)
