"""Run one jupytext notebook as a DVC stage, in one process.

    python -m prpg.core.notebook notebooks/03_personalize.py outputs/executed/03_personalize/mug_06.ipynb \
        -f params.yaml -r instance mug_06

does what the two-command convention does (`jupytext --to ipynb --set-kernel python3` into build/,
then `papermill <nb> <out> -k python3 --cwd . -f params.yaml -r instance mug_06 --log-output
--no-progress-bar`), with the same papermill engine. Injected: the names the notebook's `parameters`
cell assigns at top level (`common = {}`, `instance = "mug_06"`), each set to the params file's group of
that name (a dict) or to a `-r NAME VALUE` string; the file's other groups are left out (papermill would
warn of each as an unknown parameter). One process
instead of two: a trivial notebook takes 2.9 s end to end instead of 5.7 s (jupytext 3.1 s + papermill
2.5 s, measured on 2 cores). Stopping the kernel at once instead of gracefully saved a further 43 s
over the demo's 33 stage runs.

Faults. The runner and its kernel die with whoever started them: `kill -9` of `dvc` takes the stage
along (Linux parent-death signal on the runner and on the kernel, and a watch on a shell in between),
so no orphan rewrites an output after DVC is gone. A failing cell ends the run with one short message
on stderr (the cell, the exception, where the full traceback is) and exit code 1; the full traceback
stays in the executed notebook and in `<output stem>.log` next to it, with every cell's stdout/stderr.

What it prints. The log (`<output stem>.log`, rewritten by every run) holds everything the cells wrote:
their prints, warnings, progress bars. The terminal gets the last line the cells printed to stdout (SHOWN_LINES,
cut to SHOWN_WIDTH characters), after `prpg: ` so that `prpg repro` can show them
under the stage's progress line; warnings and progress bars (stderr) stay in the log.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from pathlib import Path

import yaml

KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}
# The cells' last stdout lines printed on the terminal (all of them are in the log). One: `make demo` runs
# 33 stages, and its whole output (a line per stage, this line under it, the summary) fits 80 lines.
SHOWN_LINES = 1
SHOWN_WIDTH = 100
SHOWN_PREFIX = "prpg: "  # marks those lines in DVC's output (prpg.runs.repro indents them under the stage)
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
    # tqdm.auto picks its widget bar inside a kernel and, without ipywidgets, warns (TqdmWarning) and falls
    # back to the text bar. This kernel has no frontend to draw widgets: import tqdm.auto before IPython
    # is loaded, so it settles on the text bar at once, silently (its output goes to the stage's log).
    "try:\n"
    "    import tqdm.auto\n"
    "except ImportError:\n"
    "    pass\n"
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


def _kernel_manager_class(ipc_prefix: str):
    """The kernel talks to the runner over Unix sockets `<ipc_prefix>-<port>` (in a private temporary
    folder), not over TCP on localhost: no open ports, and no "running over TCP without encryption" warning
    from every kernel."""
    from jupyter_client.manager import AsyncKernelManager

    class StageKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.transport, self.ip = "ipc", ipc_prefix

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


def declared_parameters(source: Path, nb) -> set[str]:
    """The names the notebook's `parameters` cell assigns at top level (`common = {}`, `instance = "x"`),
    whatever their default values; none without such a cell."""
    import ast

    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type != "code" or "parameters" not in cell.metadata.get("tags", []):
            continue
        try:
            tree = ast.parse(cell.source)
        except SyntaxError as e:
            raise SystemExit(f"{source}: its parameters cell is not valid Python ({e.msg}, line {e.lineno} of the "
                             "cell); fix that cell") from None
        for node in tree.body:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target] \
                if isinstance(node, ast.AnnAssign) else []
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def injected_parameters(source: Path, nb, parameters: dict, raw: Sequence[str] = ()) -> dict:
    """The parameters the notebook declares, from `parameters` (the params file's groups and the -r
    values). A -r name (`raw`) the parameters cell does not declare is an error: the stage passes a value
    the notebook would never read."""
    declared = declared_parameters(source, nb)
    missing = [name for name in raw if name not in declared]
    if missing:
        raise SystemExit(f"{source}: -r {missing[0]} is given but its parameters cell declares no `{missing[0]}`; "
                         f"add `{missing[0]} = ...` to that cell (or drop -r {missing[0]} from the stage's cmd)")
    return {k: v for k, v in parameters.items() if k in declared}


def raw_parameters(parameters: dict) -> dict:
    """The string parameters (the foreach item: instance or category), not the params groups."""
    return {k: v for k, v in parameters.items() if isinstance(v, str)}


class _StdoutTee:
    """papermill's stdout_file: the cells' stdout into the log, as it arrives, and kept for the terminal."""

    KEEP = 1 << 16  # characters of the latest stdout kept for the terminal (a stage may print a lot)

    def __init__(self, log_file) -> None:
        self.log_file, self.tail = log_file, ""

    def write(self, content: str) -> None:
        self.log_file.write(content)
        self.tail = (self.tail + content)[-self.KEEP:]

    def flush(self) -> None:
        self.log_file.flush()

    def last_lines(self, n: int = SHOWN_LINES, width: int = SHOWN_WIDTH) -> list[str]:
        """The last n non-blank lines printed (a progress bar's carriage returns: its last state), cut to width."""
        lines = [_ANSI.sub("", line.rsplit("\r", 1)[-1]).rstrip() for line in self.tail.split("\n")]
        lines = [line for line in lines if line.strip()][-n:] if n > 0 else []
        return [line if len(line) <= width else line[: width - 1] + "…" for line in lines]


def run(source: Path, output: Path, parameters: dict, cwd: str = ".", raw: Sequence[str] = ()) -> None:
    """Execute the jupytext notebook `source` with papermill, writing the executed notebook to `output`;
    injected: the `parameters` its parameters cell declares (`raw`: the -r names, which it must declare)."""
    import jupytext  # here, not at module level: `--help` stays instant
    import nbformat
    import papermill

    if not source.is_file():
        raise SystemExit(f"{source}: notebook not found")
    nb = jupytext.read(source)
    nb.metadata["kernelspec"] = dict(KERNEL)  # what `jupytext --set-kernel python3` writes
    nb.metadata.setdefault("language_info", {"name": "python"})
    parameters = injected_parameters(source, nb, parameters, raw)
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
    sockets = tempfile.mkdtemp(prefix="prpg-kernel-")
    with open(log, "w") as log_file:
        stdout = _StdoutTee(log_file)
        try:
            # Cell streams go to the log only (stdout_file / stderr_file), each as it arrives. No log_output:
            # papermill would log every stderr chunk (warnings, progress bars) as a warning on the terminal.
            papermill.execute_notebook(nb, str(output), parameters=parameters, kernel_name=KERNEL["name"], cwd=cwd,
                                       log_output=False, progress_bar=False, shutdown_kernel="immediate",
                                       stdout_file=stdout, stderr_file=log_file,
                                       kernel_manager_class=_kernel_manager_class(f"{sockets}/kernel"))
        except Exception as e:
            from papermill.exceptions import PapermillExecutionError

            log_file.write("\n")
            if isinstance(e, PapermillExecutionError):
                log_file.write(_ANSI.sub("", "\n".join(e.traceback)) + "\n")
            else:
                log_file.write("".join(traceback.format_exception(e)))
            _show(stdout.last_lines())
            raise StageError(failure_message(source, output, e)) from None
        finally:
            shutil.rmtree(sockets, ignore_errors=True)
    _show(stdout.last_lines())
    if stats_dir:
        kernel = json.loads(Path(os.environ["PRPG_KERNEL_STATS_FILE"]).read_text())
        stats = {"notebook": source.as_posix(), "output": output.as_posix(), "parameters_raw": raw_parameters(parameters),
                 "wall_seconds": round(time.perf_counter() - t0, 3), **kernel}
        stats_file.write_text(json.dumps(stats, indent=1))


def _show(lines: list[str]) -> None:
    for line in lines:
        print(f"{SHOWN_PREFIX}{line}", flush=True)


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
    run(args.source, args.output, params, cwd=args.cwd, raw=[name for name, _ in args.parameters_raw])
    return 0


if __name__ == "__main__":
    die_with_parent()  # as a program only: never arm it in a process that calls main() (a test)
    sys.exit(main())
