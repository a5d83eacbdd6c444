"""prpg.core.notebook: the one-process jupytext + papermill stage runner."""

import json
import subprocess
import sys

import pytest

from prpg.core.notebook import SHOWN_LINES, SHOWN_PREFIX, SHOWN_WIDTH, load_parameters, main

NOTEBOOK = '''# %% tags=["parameters"]
common = {}
instance = "none"

# %%
import json
from pathlib import Path
Path("seen.json").write_text(json.dumps({"seed": common["seed"], "flag": common["flag"], "instance": instance}))
'''


def test_runs_the_notebook_with_the_params_groups_and_raw_values(tmp_path):
    (tmp_path / "nb.py").write_text(NOTEBOOK)
    (tmp_path / "params.yaml").write_text("common:\n  seed: 3\n  flag: false\nother:\n  x: [1, 2]\n")
    subprocess.run([sys.executable, "-m", "prpg.core.notebook", "nb.py", "out/executed.ipynb", "-f", "params.yaml",
                    "-r", "instance", "007"], cwd=tmp_path, check=True, capture_output=True)
    # YAML types survive (false stays a bool), the -r value stays a string ("007", not 7).
    assert json.loads((tmp_path / "seen.json").read_text()) == {"seed": 3, "flag": False, "instance": "007"}
    executed = json.loads((tmp_path / "out/executed.ipynb").read_text())
    assert executed["metadata"]["kernelspec"]["name"] == "python3"
    injected = [c for c in executed["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert len(injected) == 1 and 'instance = "007"' in "".join(injected[0]["source"])


def test_a_failing_cell_fails_the_run_with_one_short_message(tmp_path):
    (tmp_path / "nb.py").write_text('# %% tags=["parameters"]\nx = 1\n\n# %%\nprint("step one")\n\n# %%\n'
                                    'def load():\n    raise ValueError("boom: fix the input")\nload()\n')
    proc = subprocess.run([sys.executable, "-m", "prpg.core.notebook", "nb.py", "out/done.ipynb"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1
    # One message: the notebook and cell, the exception, where the full traceback is; no stacked tracebacks.
    assert proc.stderr.strip().splitlines()[-2:] == [
        "nb.py, cell at line 8 failed: ValueError: boom: fix the input",
        "full traceback: out/done.ipynb (that cell's output) and out/done.log"]
    assert "Traceback" not in proc.stderr and "PapermillExecutionError" not in proc.stderr
    assert "boom" in (tmp_path / "out/done.ipynb").read_text()  # papermill keeps the failed notebook to inspect
    log = (tmp_path / "out/done.log").read_text()
    assert "step one" in log and "----> 3 load()" in log and "\x1b[" not in log  # streams + plain traceback
    (tmp_path / "nb.py").write_text('# %% tags=["parameters"]\nx = 1\n')
    subprocess.run([sys.executable, "-m", "prpg.core.notebook", "nb.py", "out/done.ipynb"], cwd=tmp_path, check=True,
                   capture_output=True)
    assert "boom" not in (tmp_path / "out/done.log").read_text()  # a later success rewrites the log


def test_a_dead_kernel_is_one_message_too(tmp_path):
    (tmp_path / "nb.py").write_text('# %% tags=["parameters"]\nx = 1\n\n# %%\nimport os, signal\n'
                                    'os.kill(os.getpid(), signal.SIGKILL)\n')
    proc = subprocess.run([sys.executable, "-m", "prpg.core.notebook", "nb.py", "done.ipynb"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-2:] == [
        "nb.py failed: DeadKernelError: Kernel died (the kernel was killed: out of memory? see `dmesg`)",
        "full traceback: done.log"]
    assert "DeadKernelError" in (tmp_path / "done.log").read_text()


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(SystemExit, match="missing.yaml: parameters file not found"):
        load_parameters(tmp_path / "missing.yaml", [])
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(SystemExit, match="list.yaml: expected a mapping"):
        load_parameters(tmp_path / "list.yaml", [])
    with pytest.raises(SystemExit, match="nope.py: notebook not found"):
        main([str(tmp_path / "nope.py"), str(tmp_path / "out.ipynb")])


def test_stage_stats_measure_wall_time_and_peak_memory(tmp_path):
    import os

    (tmp_path / "nb.py").write_text('# %% tags=["parameters"]\ninstance = "x"\n\n# %%\n'
                                    'big = bytearray(300 * 2**20)\n')
    env = {**os.environ, "PRPG_STAGE_STATS": str(tmp_path / "stats")}
    subprocess.run([sys.executable, "-m", "prpg.core.notebook", "nb.py", "out/07_evaluate/mug_06.ipynb", "-r", "instance",
                    "mug_06"], cwd=tmp_path, check=True, capture_output=True, env=env)
    stats = json.loads((tmp_path / "stats" / "out__07_evaluate__mug_06.json").read_text())
    assert stats["parameters_raw"] == {"instance": "mug_06"} and stats["notebook"] == "nb.py"
    assert stats["peak_rss_bytes"] > 300 * 2**20 and stats["wall_seconds"] > 0
    assert stats["peak_cuda_bytes"] is None  # torch never ran on CUDA
    assert 0 <= stats["cpu_seconds"] <= stats["wall_seconds"] * 4
    executed = json.loads((tmp_path / "out/07_evaluate/mug_06.ipynb").read_text())
    assert "prpg-stats" in executed["cells"][-1]["metadata"]["tags"]


CHATTY = """# %% tags=["parameters"]
common = {"seed": 0,
          "device": "cpu"}  # a default over two lines
filter = {}  # noqa: A001
instance = "x"
unused: int = 3

# %%
import warnings
from tqdm.auto import tqdm
for _ in tqdm(range(3)):
    pass
warnings.warn("careful")
print("step one")
print("kept", len(filter), "of", common["seed"], "for", instance)
print("x" * 300)
"""


def test_only_the_declared_params_groups_are_injected_and_the_terminal_gets_the_last_prints(tmp_path):
    (tmp_path / "nb.py").write_text(CHATTY)
    (tmp_path / "params.yaml").write_text("common:\n  seed: 3\nfilter:\n  a: 1\n  b: 2\ntrain:\n  lr: 0.1\n"
                                          "evaluate:\n  k: 1\n")
    proc = subprocess.run([sys.executable, "-m", "prpg.core.notebook", "nb.py", "out/x.ipynb", "-f", "params.yaml",
                           "-r", "instance", "mug_06"], cwd=tmp_path, check=True, capture_output=True, text=True)
    executed = json.loads((tmp_path / "out/x.ipynb").read_text())
    injected = "".join(next(c for c in executed["cells"]
                            if "injected-parameters" in c["metadata"].get("tags", []))["source"])
    assert "common = " in injected and "filter = " in injected and 'instance = "mug_06"' in injected
    assert "train" not in injected and "evaluate" not in injected  # params groups the notebook does not declare
    # Nothing but the cells' last stdout line(s), cut to the width; no warnings, no progress bar.
    assert proc.stderr == ""
    assert proc.stdout.splitlines() == [f"{SHOWN_PREFIX}kept 2 of 3 for mug_06",
                                        f"{SHOWN_PREFIX}{'x' * (SHOWN_WIDTH - 1)}…"][-SHOWN_LINES:]
    log = (tmp_path / "out/x.log").read_text()  # the full output stays in the log
    assert "step one" in log and "careful" in log and "3/3" in log and "x" * 300 in log
    assert "TqdmWarning" not in log and "IProgress" not in log  # tqdm.auto takes the text bar in the kernel


def test_a_raw_parameter_the_notebook_does_not_declare_is_one_clear_error(tmp_path):
    (tmp_path / "nb.py").write_text('# %% tags=["parameters"]\ncommon = {}\n\n# %%\nprint(1)\n')
    with pytest.raises(SystemExit, match=r"nb.py: -r instance is given but its parameters cell declares no "
                                         r"`instance`; add `instance = ...`"):
        main([str(tmp_path / "nb.py"), str(tmp_path / "out.ipynb"), "-r", "instance", "mug_06"])
    (tmp_path / "bad.py").write_text('# %% tags=["parameters"]\ncommon = {\n')
    with pytest.raises(SystemExit, match=r"bad.py: its parameters cell is not valid Python"):
        main([str(tmp_path / "bad.py"), str(tmp_path / "out.ipynb")])
