"""Faults: a killed `dvc` takes its stage along, a killed stage's temp folders never reach a DVC hash,
and a failing stage ends with one short message."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from prpg.core.atomic import atomic_dir, remove_stale, write_text_atomic
from tests.pipeline_repo import MICRO_RUN, ROOT, copy_repo, env, run

SLEEPER = '''# %% tags=["parameters"]
instance = "x"

# %%
import ctypes, os, time
from pathlib import Path
sig = ctypes.c_int(0)
ctypes.CDLL(None).prctl(2, ctypes.byref(sig), 0, 0, 0)  # PR_GET_PDEATHSIG
Path("kernel.pdeathsig").write_text(str(sig.value))
Path("kernel.pid").write_text(str(os.getpid()))
time.sleep(120)
Path("orphan-wrote-this").write_text("too late")
'''


def gone(pid: int) -> bool:
    """Dead, or a zombie nobody reaped yet (it runs no code)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rindex(")") + 2] in "ZX"


def wait_for(predicate, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def child_pids(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def descendants(pid: int) -> list[int]:
    return [q for p in child_pids(pid) for q in (p, *descendants(p))]


# The runner started the way dvc starts it (a direct child), and behind a shell that stays (`cmd & wait`
# in a stage's command): the parent that is killed is the shell's.
SPAWN = [sys.executable, "-c", "import subprocess, sys; subprocess.Popen(sys.argv[1:]).wait()"]
PARENTS = {"direct": SPAWN, "shell": [*SPAWN, "bash", "-c", '"$@" & wait', "bash"]}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux's")
@pytest.mark.parametrize("parent", sorted(PARENTS))
def test_runner_and_kernel_die_with_their_parent(tmp_path, parent):
    (tmp_path / "nb.py").write_text(SLEEPER)
    cmd = [*PARENTS[parent], sys.executable, "-m", "prpg.core.notebook", "nb.py", "out.ipynb"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: (tmp_path / "kernel.pid").is_file(), 60), "the kernel never started"
        kernel = int((tmp_path / "kernel.pid").read_text())
        assert (tmp_path / "kernel.pdeathsig").read_text() == str(int(signal.SIGKILL))
        stage = descendants(proc.pid)  # the runner (and its shell) and the kernel
        assert kernel in stage and len(stage) >= 2, stage
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert wait_for(lambda: all(gone(p) for p in stage), 5), "an orphan outlived its parent"
    finally:
        proc.kill()
    assert not (tmp_path / "orphan-wrote-this").exists()


def test_stale_temp_dirs_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    target = tmp_path / "mug_06"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    leftovers = [tmp_path / f".mug_06.tmp-{dead}-abc", tmp_path / f".mug_06.old-{dead}-def",
                 tmp_path / ".mug_06.tmp-k2j3h4x1"]  # the last: a name from before pids were in it
    for d in leftovers:
        (d / "model").mkdir(parents=True)
    (tmp_path / f".metrics.json.tmp-{dead}-q1").write_text("half")
    live = tmp_path / f".mug_06.tmp-{os.getpid()}-ghi"  # a concurrent writer's: not ours to remove
    live.mkdir()
    other = tmp_path / ".mug_060.tmp-1-x"  # another target's
    other.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".metrics.json.tmp-" + dead + "-q1", live.name, other.name, "mug_06"])
    write_text_atomic(tmp_path / "metrics.json", "{}")
    assert not (tmp_path / f".metrics.json.tmp-{dead}-q1").exists()
    assert remove_stale(target) == []


DVC_YAML = """stages:
  make:
    cmd: python -c "import pathlib; p = pathlib.Path('out/a'); p.mkdir(parents=True, exist_ok=True); (p / 'x.txt').write_text('x')"
    outs:
    - out/a
  use:
    cmd: python -c "import pathlib; pathlib.Path('res.txt').write_text(str(sorted(pathlib.Path('out').rglob('*'))))"
    deps:
    - out
    outs:
    - res.txt
"""


def test_a_leftover_temp_dir_is_not_part_of_any_dvc_hash(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvcignore", repo / ".dvcignore")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    run(["dvc", "repro", "-q"], repo)
    lock = (repo / "dvc.lock").read_text()
    # What kill -9 of a stage mid-write leaves: a temp dir beside its out (inside the dep `out`) and
    # inside the out, and a temp file.
    for d in (repo / "out/.a.tmp-123-abc", repo / "out/a/.x.txt.tmp-123-def", repo / "out/.a.old-9-x"):
        d.mkdir(parents=True)
        (d / "junk").write_text("junk")
    (repo / "out/a/.y.txt.tmp-123-q").write_text("half")
    status = run(["dvc", "status"], repo)
    assert "up to date" in status.stdout, status.stdout
    assert "Running stage" not in run(["dvc", "repro"], repo).stdout
    assert (repo / "dvc.lock").read_text() == lock


# --- kill -9 of `dvc repro` mid-stage, on the micro pipeline -------------------------------------------

TRACKED = ("reports/metrics/evaluate.json", "reports/metrics/headline.json", "reports/metrics/instances.csv", "reports/metrics/positives.csv",
           "reports/metrics/train_log.csv", "reports/metrics/data.json")


def tracked(repo: Path) -> dict[str, bytes]:
    return {p: (repo / p).read_bytes() for p in TRACKED}


def pipeline_status(repo: Path) -> dict:
    """`dvc status` of the pipeline's stages (data.dvc, the real-data placeholder, is not in a copy's cache)."""
    out = run(["dvc", "status", "--json"], repo).stdout
    return {k: v for k, v in json.loads(out[out.index("{"):]).items() if k != "data.dvc"}


@pytest.mark.slow
@pytest.mark.skipif(not (ROOT / "models/toybox/generator").is_dir(), reason="models/toybox not built yet")
def test_kill_9_of_dvc_mid_stage_then_rerun_gives_the_uninterrupted_results(tmp_path):
    repo = copy_repo(tmp_path / "repo", params=MICRO_RUN)
    run(["dvc", "repro"], repo)  # uninterrupted
    metrics = repo / "outputs/evaluate/mug_01/metrics.json"
    expected, expected_eval, lock = tracked(repo), metrics.read_bytes(), (repo / "dvc.lock").read_text()

    dvc = subprocess.Popen(["dvc", "repro", "-f", "-s", "evaluate@mug_01"], cwd=repo, env=env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Mid-stage: the runner and its kernel are up (dvc removed the stage's outs before starting it).
    assert wait_for(lambda: len(descendants(dvc.pid)) >= 2, 60), "evaluate never started"
    time.sleep(1.0)
    stage = descendants(dvc.pid)
    os.kill(dvc.pid, signal.SIGKILL)
    dvc.wait()
    assert wait_for(lambda: all(gone(p) for p in stage), 5), "an orphan outlived dvc"
    time.sleep(2)
    assert not metrics.exists()  # nothing wrote the output after dvc died

    # What a train stage killed mid-write leaves inside the dep outputs/train of aggregate.
    (repo / f"outputs/train/.mug_01.tmp-{2**22 + 1}-x/model").mkdir(parents=True)
    # dvc.lock still describes the last complete run of the killed stage, so DVC restores its outputs
    # from the cache (after removing the dead run's read/write lock) instead of running it again.
    rerun = run(["dvc", "repro"], repo)
    assert "had been killed. Auto removed it from the lock file" in rerun.stdout + rerun.stderr
    assert metrics.read_bytes() == expected_eval and tracked(repo) == expected
    assert (repo / "dvc.lock").read_text() == lock
    assert pipeline_status(repo) == {}
