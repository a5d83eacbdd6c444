"""prpg.runs.cluster: a GPU per chain on one machine, and an experiment's parts as a submitit job array."""

import argparse
import functools
import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import pytest

from prpg.runs import cluster, repro

NAMES = ["data", "priors@mug", "priors@shoe", "personalize@mug_06", "personalize@shoe_06",
         "personalize@shoe_07", "evaluate@mug_06", "evaluate@shoe_06", "evaluate@shoe_07", "aggregate"]


# ---- --gpus ------------------------------------------------------------------------------------------

def test_parse_gpus_lists_ids_and_names_the_flag_on_a_bad_spec(monkeypatch):
    assert cluster.parse_gpus("0,1,2,3") == ("0", "1", "2", "3")
    assert cluster.parse_gpus(" 2, 5") == ("2", "5")
    assert cluster.parse_gpus("GPU-8f2a-11c0") == ("GPU-8f2a-11c0",)
    assert cluster.parse_gpus("0,0,1,1") == ("0", "0", "1", "1")  # two chains per GPU, on purpose
    for bad in ("0,,1", "a", "-1", "", "0;1"):
        with pytest.raises(ValueError, match=r"--gpus .*is not a GPU id.*--gpus 0,1,2,3"):
            cluster.parse_gpus(bad)


def test_gpus_auto_takes_cuda_visible_devices_else_counts_the_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    monkeypatch.setattr(cluster, "_cuda_device_count", lambda: pytest.fail("torch asked"))
    assert cluster.parse_gpus("auto") == ("2", "5")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ValueError, match="--gpus auto: CUDA_VISIBLE_DEVICES is empty"):
        cluster.parse_gpus("auto")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setattr(cluster, "_cuda_device_count", lambda: 3)
    assert cluster.parse_gpus("auto") == ("0", "1", "2")
    monkeypatch.setattr(cluster, "_cuda_device_count", lambda: 0)
    with pytest.raises(ValueError, match="--gpus auto: torch sees no CUDA device"):
        cluster.parse_gpus("auto")


def test_jobs_default_to_one_chain_per_gpu():
    assert cluster.gpu_options(None, "0,1,2", default_jobs=3) == (3, ("0", "1", "2"))
    assert cluster.gpu_options(None, "4,5", default_jobs=None) == (2, ("4", "5"))
    assert cluster.gpu_options(1, "4,5", default_jobs=3) == (1, ("4", "5"))
    assert cluster.gpu_options(None, None, default_jobs=3) == (3, ())
    assert cluster.gpu_options(None, None, default_jobs=None) == (None, ())  # prpg exp: dvc exp run
    p = argparse.ArgumentParser()
    cluster.add_gpu_arguments(p)
    assert p.parse_args(["--gpus", "0,1"]).gpus == "0,1"


def test_concurrent_chains_never_share_a_gpu_and_each_gets_exactly_one(monkeypatch, tmp_path):
    lock = threading.Lock()
    busy: set[str] = set()
    seen: list[tuple[tuple[str, ...], str]] = []
    overlap, peak = [], []

    def fake_run(cmd, cwd, env, progress, gpu_arg):
        gpu = env["CUDA_VISIBLE_DEVICES"]
        with lock:
            overlap.extend([gpu] if gpu in busy else [])
            busy.add(gpu)
            peak.append(len(busy))
            seen.append((tuple(cmd[4:]), gpu))
        time.sleep(0.02)  # long enough for the other workers to start beside it
        with lock:
            busy.discard(gpu)
        return 0

    monkeypatch.setattr(repro, "_run_dvc", fake_run)
    groups = [(f"personalize@i{i}", f"evaluate@i{i}") for i in range(12)]
    repro.run_groups(groups, 3, tmp_path, gpus=("0", "1", "2"))
    assert overlap == [] and max(peak) > 1  # chains did run side by side, never two on one GPU
    assert sorted(g for g, _ in seen) == sorted(groups)  # every chain ran once, with one GPU id
    assert {gpu for _, gpu in seen} <= {"0", "1", "2"}


def test_repro_with_gpus_pins_every_dvc_call_and_checks_jobs(monkeypatch, tmp_path):
    from prpg.runs.experiments import set_instances

    shutil.copy(Path(__file__).resolve().parents[1] / "params.yaml", tmp_path / "params.yaml")
    set_instances(tmp_path / "params.yaml", {"mug_06": "mug", "shoe_06": "shoe", "shoe_07": "shoe"})
    monkeypatch.setattr(repro, "stage_names", lambda cwd: NAMES)
    calls = []
    monkeypatch.setattr(repro, "_run_dvc", lambda cmd, cwd, env, progress, gpu: calls.append((cmd, env)) or 0)
    repro.repro(2, cwd=tmp_path, gpus=("3", "7"))
    assert calls[0][0][3:] == ["data"] and calls[0][1]["CUDA_VISIBLE_DEVICES"] == "3"  # head: the first GPU
    assert calls[-1][0][3:] == [] and calls[-1][1]["CUDA_VISIBLE_DEVICES"] == "3"  # final dvc repro
    middle = {tuple(c[4:]): env["CUDA_VISIBLE_DEVICES"] for c, env in calls[1:-1]}
    assert set(middle) == {("priors@shoe",), ("priors@mug", "personalize@mug_06", "evaluate@mug_06"),
                           ("personalize@shoe_06", "evaluate@shoe_06"),
                           ("personalize@shoe_07", "evaluate@shoe_07")}
    assert set(middle.values()) <= {"3", "7"}
    with pytest.raises(repro.ReproError, match=r"--jobs 3 with 2 GPU\(s\).*use --jobs 2 or fewer"):
        repro.repro(3, cwd=tmp_path, gpus=("3", "7"))


def test_without_gpus_dvc_gets_no_env(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(repro, "_run_dvc", lambda cmd, cwd, env, progress, gpu:
                        calls.append(cmd) or (env is None and gpu is None and 0))  # no env: inherited, unchanged
    repro.run_groups([("a",), ("b",)], 2, tmp_path)
    assert sorted(calls) == [[*repro.DVC, "-s", "a"], [*repro.DVC, "-s", "b"]]


def test_a_failing_chain_on_a_gpu_says_how_to_rerun_it_there(monkeypatch, tmp_path):
    monkeypatch.setattr(repro, "_run_dvc", lambda cmd, cwd, env, progress, gpu: 1)
    with pytest.raises(repro.ReproError, match=r"re-run them alone with: CUDA_VISIBLE_DEVICES=5 dvc"):
        repro.run_groups([("personalize@a",)], 1, tmp_path, gpus=("5",))


# ---- --parts, part steps -------------------------------------------------------------------------

def test_parse_parts_and_its_errors():
    assert cluster.parse_parts("0-3") == [0, 1, 2, 3]
    assert cluster.parse_parts("0-2,7, 1") == [0, 1, 2, 7]
    with pytest.raises(ValueError, match=r"--parts '5-2': the range 5-2 is empty.*--parts 0-13"):
        cluster.parse_parts("5-2")
    for bad in ("", "a", "1-", "-3", "0..3"):
        with pytest.raises(ValueError, match="--parts .*is not a part number or range"):
            cluster.parse_parts(bad)


def _job(tmp_path, **kw):
    base = dict(name="pods-dinov2_vitb14", offset=3, repo=str(tmp_path / "repo"), commit="c" * 40,
                copy=str(tmp_path / "w" / "part-03"), cache_dir="/shared/cache", python="/venv/bin/python")
    return cluster.PartJob(**{**base, **kw})


def test_part_steps_are_what_a_user_runs_for_a_part(tmp_path):
    prpg = ["/venv/bin/python", "-m", "prpg.cli"]
    job = _job(tmp_path, overrides=("synthesize.positives.guidance=4",), description="a b")
    steps = cluster.part_steps(job)
    assert steps == [
        ["dvc", "cache", "dir", "--local", "/shared/cache"],
        ["dvc", "config", "--local", "cache.type", "reflink,hardlink,copy"],
        ["dvc", "checkout", "--allow-missing"],
        [*prpg, "exp", "pods-dinov2_vitb14", "--instances", "test", "--per-category", "1", "--offset", "3",
         "--jobs", "1", "-S", "synthesize.positives.guidance=4"],
        [*prpg, "results", "save", "pods-dinov2_vitb14", "--part", "03", "--description", "a b"],
    ]
    toy = cluster.part_steps(_job(tmp_path, name="toybox-real", cache_dir=None, data_stage=True,
                                  gpus_per_task=2, jobs=2, headline=True))
    assert toy[0] == ["dvc", "repro", "data"]  # toybox: the instances come from the data stage's world
    assert toy[1][-4:] == ["--jobs", "2", "--gpus", "auto"] and toy[2][-1] == "--headline"
    env = cluster.part_env(_job(tmp_path))
    assert env["PATH"].startswith("/venv/bin")
    assert env["PYTHONPATH"].startswith(str(tmp_path / "w" / "part-03" / "src"))  # the copy's code runs


# ---- submission ----------------------------------------------------------------------------------

def _git(*args, cwd):
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True,
                   capture_output=True)


@pytest.fixture
def repo(tmp_path):
    """A tiny committed repository with a DVC folder and a tracked dataset pointer."""
    r = tmp_path / "repo"
    (r / ".dvc").mkdir(parents=True)
    (r / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    (r / "data.dvc").write_text("outs:\n- path: data\n")
    (r / "params.yaml").write_text("run: {}\n")
    _git("init", "-q", cwd=r)
    _git("add", ".", cwd=r)
    _git("commit", "-q", "-m", "init", cwd=r)
    return r


def _head(repo):
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True)
    return out.stdout.strip()


def fake_runner(argv, cwd, env, log):
    """Stands in for the pipeline: records each step; `results save` writes the part folder."""
    with open(log, "a") as f:
        f.write(json.dumps({"argv": list(argv), "cwd": str(cwd), "pythonpath": env["PYTHONPATH"]}) + "\n")
    if argv[3:5] == ["results", "save"]:
        part = Path(cwd, "reports/results", argv[5], "parts", argv[argv.index("--part") + 1])
        part.mkdir(parents=True)
        (part / "evaluate.json").write_text(json.dumps({"cwd": str(cwd)}))


cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the tasks cannot import this test module


def test_local_array_runs_each_part_in_its_own_copy_and_brings_it_home(repo, tmp_path):
    log = tmp_path / "calls.jsonl"
    s = cluster.submit("toybox-real", [0, 1], repo=repo, workdir=tmp_path / "work", local=True, timeout_min=5,
                       runner=functools.partial(fake_runner, log=str(log)))
    assert cluster.wait(s) == []
    results = [j.result() for j in s.jobs]
    assert [r.offset for r in results] == [0, 1] and len(s.jobs) == 2
    head = _head(repo)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    for r in results:
        copy = Path(r.copy)
        assert copy == tmp_path / "work" / "toybox-real" / f"part-{r.part}"
        assert _head(copy) == head and copy != repo
        mine = [c for c in calls if c["cwd"] == str(copy)]
        assert [c["argv"][:3] for c in mine[:4]] == [
            ["dvc", "cache", "dir"], ["dvc", "config", "--local"], ["dvc", "checkout", "--allow-missing"],
            ["dvc", "repro", "data"]]
        assert mine[0]["argv"][-1] == str((repo / ".dvc" / "cache").resolve())  # the shared cache
        exp = mine[4]["argv"]
        assert exp[3:5] == ["exp", "toybox-real"] and exp[exp.index("--offset") + 1] == str(r.offset)
        assert mine[4]["pythonpath"].startswith(str(copy / "src"))
        landed = repo / "reports/results/toybox-real/parts" / r.part / "evaluate.json"
        assert Path(r.result) == landed.parent and json.loads(landed.read_text())["cwd"] == str(copy)
    assert len(calls) == 12  # 6 steps per part, nothing else


def test_submit_refuses_what_would_fail_in_every_task(repo, tmp_path):
    with pytest.raises(ValueError, match="--parts: no parts"):
        cluster.submit("toybox-real", [], repo=repo, local=True)
    with pytest.raises(ValueError, match="experiment 'toybox-nope'"):
        cluster.submit("toybox-nope", [0], repo=repo, local=True)
    stale = tmp_path / "work" / "toybox-real" / "part-00"
    stale.mkdir(parents=True)
    _git("init", "-q", cwd=stale)
    _git("commit", "-q", "--allow-empty", "-m", "other", cwd=stale)
    with pytest.raises(ValueError, match=r"part copies at another commit.*part-00.*another --workdir"):
        cluster.submit("toybox-real", [0], repo=repo, workdir=tmp_path / "work", local=True)
    whole = repo / "reports/results/toybox-cut_paste"
    whole.mkdir(parents=True)
    (whole / "evaluate.json").write_text("{}")
    with pytest.raises(ValueError, match="holds a whole result"):
        cluster.submit("toybox-cut_paste", [0], repo=repo, local=True)


def test_without_slurm_the_error_points_to_local(monkeypatch, tmp_path):
    monkeypatch.setattr(cluster.shutil, "which", lambda name: None)
    with pytest.raises(ValueError, match="sbatch is not on PATH.*--local"):
        cluster.make_executor(tmp_path, False, 2, None, 10, 1, None, None)
    with pytest.raises(ValueError, match="--slurm 'account': write KEY=VALUE"):
        cluster.make_executor(tmp_path, True, 2, None, 10, 1, None, None, ["account"])


def test_the_slurm_executor_takes_our_parameters(monkeypatch, tmp_path):
    import submitit.slurm.slurm as slurm

    monkeypatch.setattr(cluster.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm.SlurmExecutor, "affinity", classmethod(lambda cls: 2))  # pretend srun exists
    ex = cluster.make_executor(tmp_path, False, 14, "gpu", 600, 1, 4, 8, ["account=proj", "mem=64G"])
    params = ex._executor.parameters
    assert (params["partition"], params["time"], params["gpus_per_node"], params["array_parallelism"]) == \
        ("gpu", 600, 1, 4)
    assert (params["cpus_per_task"], params["account"], params["mem"]) == (8, "proj", "64G")
    with pytest.raises(ValueError, match="--slurm: .*Unknown argument 'nope'"):
        cluster.make_executor(tmp_path, False, 14, None, 600, 1, None, None, ["nope=1"])


def test_cluster_cli_passes_the_flags(monkeypatch):
    seen = {}

    def fake_submit(name, parts, **kw):
        seen.update(kw, name=name, parts=parts)
        raise SystemExit(0)

    monkeypatch.setattr(cluster, "submit", fake_submit)
    parser = argparse.ArgumentParser()
    cluster.add_cluster_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["cluster", "pods-clip_vitb16", "--parts", "0-13", "--partition", "gpu",
                              "--timeout-min", "600", "--slurm", "account=x", "-S", "train.lr=1e-4"])
    with pytest.raises(SystemExit):
        args.func(args)
    assert seen["name"] == "pods-clip_vitb16" and seen["parts"] == list(range(14))
    flags = (seen["partition"], seen["timeout_min"], seen["gpus_per_task"], seen["jobs"])
    assert flags == ("gpu", 600, 1, None)
    assert seen["slurm"] == ["account=x"] and seen["overrides"] == ["train.lr=1e-4"] and not seen["local"]
