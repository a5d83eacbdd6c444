"""Run one jupytext notebook as a DVC stage, in one process.

    python -m prpg.core.notebook notebooks/03_personalize.py outputs/executed/03_personalize/mug_06.ipynb \
        -f params.yaml -r instance mug_06

does what the two-command convention does (`jupytext --to ipynb --set-kernel python3` into build/,
then `papermill <nb> <out> -k python3 --cwd . -f params.yaml -r instance mug_06 --log-output
--no-progress-bar`), with the same papermill engine and the same injected parameters: every
top-level group of the params file as a dict, then each `-r NAME VALUE` as a string. One process
instead of two: a trivial notebook takes 2.9 s end to end instead of 5.7 s (jupytext 3.1 s + papermill
2.5 s, measured on 2 cores). Stopping the kernel at once instead of gracefully saved a further 43 s
over the demo's 33 stage runs.

Faults. The runner and its kernel die with whoever started them: `kill -9` of `dvc` takes the stage
along (Linux parent-death signal on the runner and on the kernel, and a watch on a shell in between),
so no orphan rewrites an output after DVC is gone. A failing cell ends the run with one short message
on stderr (the cell, the exception, where the full traceback is) and exit code 1; the full traceback
stays in the executed notebook and in `<output stem>.log` next to it, with every cell's stdout/stderr.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import yaml

KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
# With this environment variable set to a folder, each stage also writes <folder>/<output stem>.json:
# its wall time, the kernel's peak RSS and peak CUDA memory (what `prpg rehearse` reports).
STATS_ENV = "PRPG_STAGE_STATS"
# Appended as the last cell when STATS_ENV is set: the kernel measures itself (it is stopped at once after
# the last cell, so nothing can run at its exit).
_STATS_CELL = """\
import json as _json, os as _os, resource as _resource, sys as _sys
_usage = _resource.getrusage(_resource.RUSAGE_SELF)
_stats = {"peak_rss_bytes": _usage.ru_maxrss * 1024, "peak_cuda_bytes": None,
          "cpu_seconds": round(_usage.ru_utime + _usage.ru_stime, 2)}
if "torch" in _sys.modules and _sys.modules["torch"].cuda.is_initialized():
    _stats["peak_cuda_bytes"] = int(_sys.modules["torch"].cuda.max_memory_allocated())
with open(_os.environ["PRPG_KERNEL_STATS_FILE"], "w") as _f:
    _json.dump(_stats, _f)
"""


PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
SHELLS = {"sh", "bash", "dash", "zsh", "fish", "ksh"}
# The kernel's command line: ipykernel_launcher, but the kernel first asks to be killed when the runner
# dies (a kernel runs in its own session, so a signal to the runner's group never reaches it).
_KERNEL_BOOT = (
    "import ctypes, os, runpy, signal, sys\n"
    "if sys.platform.startswith('linux'):\n"
    f"    ctypes.CDLL(None).prctl({PR_SET_PDEATHSIG}, int(signal.SIGKILL), 0, 0, 0)\n"
    "    if str(os.getppid()) != os.environ.get('JPY_PARENT_PID', str(os.getppid())):\n"
    "        os._exit(1)  # the runner died before the prctl\n"
    "runpy.run_module('ipykernel_launcher', run_name='__main__', alter_sys=True)\n"
)


class StageError(SystemExit):
    """A stage failed: the one short message for stderr (the full traceback is in the log)."""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(command name, parent pid) of a live process, from /proc; None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name, rest = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2 :].split()
    return name, int(rest[1])


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (the kernel then follows: its own parent-death
    signal). When the parent is a shell that stays (`cmd & wait` in a stage), watch the shells up to
    the first other process instead: any of them re-parented means that process (dvc) is gone."""
    if not sys.platform.startswith("linux"):
        return
    ppid = os.getppid()
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        return  # not permitted here (a sandbox): run on, unguarded
    if os.getppid() != ppid or ppid == 1:
        os._exit(1)  # the parent died before the prctl took effect
    shells, pid = [], ppid
    while (stat := _proc_stat(pid)) is not None and stat[0] in SHELLS and stat[1] > 1:
        shells.append((pid, stat[1]))
        pid = stat[1]
    if shells:
        def watch() -> None:
            while all((_proc_stat(p) or ("", -1))[1] == parent for p, parent in shells):
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)

        threading.Thread(target=watch, name="prpg-parent-watch", daemon=True).start()


def _kernel_manager_class():
    from jupyter_client.manager import AsyncKernelManager

    class StageKernelManager(AsyncKernelManager):
        def format_kernel_cmd(self, extra_arguments=None):
            cmd = super().format_kernel_cmd(extra_arguments)
            if cmd[1:3] == ["-m", "ipykernel_launcher"]:
                return [cmd[0], "-c", _KERNEL_BOOT, *cmd[3:]]
            return cmd

    return StageKernelManager


def log_path(output: Path) -> Path:
    """The stage's log: every cell's stdout/stderr and, on failure, the full traceback."""
    return Path(output).with_suffix(".log")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def _cell_line(source: Path, cell_source: str) -> int | None:
    """Line of the jupytext file where the cell's code starts (None if it cannot be found)."""
    first = next((line for line in cell_source.splitlines() if line.strip()), None)
    if first is None:
        return None
    lines = source.read_text().splitlines()
    return next((i + 1 for i, line in enumerate(lines) if line == first), None)


def failure_message(source: Path, output: Path, error: BaseException) -> str:
    """The one short message of a failed stage: cause, where, and where the full traceback is."""
    from papermill.exceptions import PapermillExecutionError

    log = log_path(output)
    if isinstance(error, PapermillExecutionError):
        line = _cell_line(source, error.source)
        where = f"{source}" + (f", cell at line {line}" if line else f", cell {error.cell_index}")
        cause = f"{error.ename}: {error.evalue}"
        return f"{where} failed: {cause}\nfull traceback: {output} (that cell's output) and {log}"
    cause = f"{type(error).__name__}: {error}".strip()
    if type(error).__name__ == "DeadKernelError":
        cause += " (the kernel was killed: out of memory? see `dmesg`)"
    return f"{source} failed: {cause}\nfull traceback: {log}"


def load_parameters(params_file: Path | None, raw: list[tuple[str, str]]) -> dict:
    """papermill's -f then -r: the YAML's top-level groups, then raw string values on top."""
    params: dict = {}
    if params_file is not None:
        try:
            loaded = yaml.safe_load(Path(params_file).read_text())
        except FileNotFoundError:
            raise SystemExit(f"{params_file}: parameters file not found (run from the repository root)") from None
        except yaml.YAMLError as e:
            raise SystemExit(f"{params_file}: not valid YAML ({e}); fix the file") from None
        if not isinstance(loaded, dict):
            raise SystemExit(f"{params_file}: expected a mapping of parameter groups at the top level")
        params.update(loaded)
    params.update(dict(raw))
    return params


def raw_parameters(parameters: dict) -> dict:
    """The string parameters (the foreach item: instance or category), not the params groups."""
    return {k: v for k, v in parameters.items() if isinstance(v, str)}


def run(source: Path, output: Path, parameters: dict, cwd: str = ".") -> None:
    """Execute the jupytext notebook `source` with papermill, writing the executed notebook to `output`."""
    import jupytext  # here, not at module level: `--help` stays instant
    import nbformat
    import papermill

    if not source.is_file():
        raise SystemExit(f"{source}: notebook not found")
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = dict(KERNEL)  # what `jupytext --set-kernel python3` writes
    nb.metadata.setdefault("language_info", {"name": "python"})
    output.parent.mkdir(parents=True, exist_ok=True)
    # The kernel inherits this. OpenMP threads sleep instead of spinning when idle: a spinning torch
    # thread takes a core from the stage running beside it (prpg repro --jobs) and from DVC itself.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # shutdown_kernel="immediate": once the last cell has returned, every output is written (stages
    # write atomically, inside cells); a graceful shutdown of a torch kernel costs 2.7 s more per stage.
    stats_dir = os.environ.get(STATS_ENV)
    if stats_dir:
        nb.cells.append(nbformat.v4.new_code_cell(_STATS_CELL, metadata={"tags": ["prpg-stats"]}))
        stats_file = Path(stats_dir).resolve() / (output.with_suffix("").as_posix().replace("/", "__") + ".json")
        os.environ["PRPG_KERNEL_STATS_FILE"] = str(stats_file.with_suffix(".kernel.json"))
        stats_file.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log = log_path(output)
    with open(log, "w") as log_file:
        try:
            # Cell streams go to the log too (stdout_file / stderr_file), each as it arrives.
            papermill.execute_notebook(nb, str(output), parameters=parameters, kernel_name=KERNEL["name"], cwd=cwd,
                                       log_output=True, progress_bar=False, shutdown_kernel="immediate",
                                       stdout_file=log_file, stderr_file=log_file,
                                       kernel_manager_class=_kernel_manager_class())
        except Exception as e:
            from papermill.exceptions import PapermillExecutionError

            log_file.write("\n")
            if isinstance(e, PapermillExecutionError):
                log_file.write(_ANSI.sub("", "\n".join(e.traceback)) + "\n")
            else:
                log_file.write("".join(traceback.format_exception(e)))
            raise StageError(failure_message(source, output, e)) from None
    log.unlink()  # a log is kept only for a failed run: a later success leaves none behind
    if stats_dir:
        kernel = json.loads(Path(os.environ["PRPG_KERNEL_STATS_FILE"]).read_text())
        stats = {"notebook": source.as_posix(), "output": output.as_posix(), "parameters_raw": raw_parameters(parameters),
                 "wall_seconds": round(time.perf_counter() - t0, 3), **kernel}
        stats_file.write_text(json.dumps(stats, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prpg.core.notebook", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="jupytext percent notebook (notebooks/NN_stage.py)")
    ap.add_argument("output", type=Path, help="executed .ipynb to write")
    ap.add_argument("-f", "--parameters-file", type=Path, help="YAML whose top-level groups are injected")
    ap.add_argument("-r", "--parameters-raw", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                    help="a string parameter (the foreach item)")
    ap.add_argument("--cwd", default=".", help="working directory of the kernel (default: .)")
    args = ap.parse_args(argv)
    params = load_parameters(args.parameters_file, [tuple(r) for r in args.parameters_raw])
    run(args.source, args.output, params, cwd=args.cwd)
    return 0


if __name__ == "__main__":
    die_with_parent()  # as a program only: never arm it in a process that calls main() (a test)
    sys.exit(main())
