"""Run one jupytext notebook as a DVC stage, in one process.

    python -m prpg.notebook notebooks/03_personalize.py outputs/executed/03_personalize/mug_06.ipynb \
        -f params.yaml -r instance mug_06

does what the two-command convention does (`jupytext --to ipynb --set-kernel python3` into build/,
then `papermill <nb> <out> -k python3 --cwd . -f params.yaml -r instance mug_06 --log-output
--no-progress-bar`), with the same papermill engine and the same injected parameters: every
top-level group of the params file as a dict, then each `-r NAME VALUE` as a string. One process
instead of two: a trivial notebook takes 2.9 s end to end instead of 5.7 s (jupytext 3.1 s + papermill
2.5 s, measured on 2 cores). Stopping the kernel at once instead of gracefully saved a further 43 s
over the demo's 33 stage runs.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
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
_stats = {"peak_rss_bytes": _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss * 1024, "peak_cuda_bytes": None}
if "torch" in _sys.modules and _sys.modules["torch"].cuda.is_initialized():
    _stats["peak_cuda_bytes"] = int(_sys.modules["torch"].cuda.max_memory_allocated())
with open(_os.environ["PRPG_KERNEL_STATS_FILE"], "w") as _f:
    _json.dump(_stats, _f)
"""


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
    papermill.execute_notebook(nb, str(output), parameters=parameters, kernel_name=KERNEL["name"], cwd=cwd,
                               log_output=True, progress_bar=False, shutdown_kernel="immediate")
    if stats_dir:
        kernel = json.loads(Path(os.environ["PRPG_KERNEL_STATS_FILE"]).read_text())
        stats = {"notebook": source.as_posix(), "output": output.as_posix(), "parameters_raw": raw_parameters(parameters),
                 "wall_seconds": round(time.perf_counter() - t0, 3), **kernel}
        stats_file.write_text(json.dumps(stats, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m prpg.notebook", description=__doc__.split("\n\n")[0])
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
    sys.exit(main())
