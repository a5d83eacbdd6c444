"""`prpg repro --jobs N`: `dvc repro` with independent stages side by side (what `make demo` runs).

DVC runs one stage at a time. But while a stage's command runs it releases its repository lock, and
it guards every stage's deps (read) and outs (write) with its read/write lock, so several `dvc repro`
processes can share one workspace; `dvc --wait-for-lock` makes them queue for the short phases that
hold the repository lock (checking hashes, writing dvc.lock). On 2 cores, two stage processes at once
use both cores: one tiny-model stage keeps about 1.3 of them busy.

The order follows the pipeline's shape in params.yaml `run`:
  1. `dvc repro` of the stages listed before the first per-category one (data, and the frozen zoo);
  2. the stages of each category that several instances share (`priors@<category>`), N at a time;
  3. each instance's chain (`personalize@<instance>` ... `evaluate@<instance>`, in dvc.yaml order, led
     by `priors@<category>` when the category has only this instance, as in the demo), N at a time;
  4. `dvc repro`: checks the whole DAG (nothing left from 1-3) and runs the rest (aggregate, report).
Steps 2 and 3 use `dvc repro -s`: a chain must not re-check the shared upstream stages (a check takes
a write lock on their outs, which the other chains are reading). Each stage still runs only when it
changed, and gives the same outputs as under a plain `dvc repro`: it is seeded, and common.threads
pins torch's threads, so running beside another stage changes its speed, not its numbers.

With `gpus` (ids, as `prpg repro --gpus` gives them: prpg.runs.cluster), each group's `dvc repro -s` gets
CUDA_VISIBLE_DEVICES=<one id> from a pool: a group takes a free id and returns it when it ends, so no
two running groups share a GPU; steps 1 and 4 get the first id.

What it prints: one line per stage that ran, `[k/N] filter@mug_06  12.3 s` (N: the pipeline's stages; a
stage that did not change counts, silently), with the line the stage's notebook printed last (the
notebook runner's `prpg: ` line, prpg.core.notebook) indented under it, and a closing line. DVC's output
is read line by line (`Running stage`, `didn't change`, lock-file updates) to draw those lines; anything
else it or a stage prints (warnings, errors) passes through as it is. Every stage's full output is in its
log, `<executed notebook>.log` (outputs/executed/...).
"""

from __future__ import annotations

import os
import queue
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from prpg.core.notebook import SHOWN_PREFIX
from prpg.core.params import load_params

DVC = ("dvc", "--wait-for-lock", "repro")


class ReproError(RuntimeError):
    """A stage of the parallel run failed (the message names it and how to re-run it alone)."""


@dataclass(frozen=True)
class Plan:
    head: tuple[str, ...]  # run first, with their upstream (plain dvc repro)
    shared: tuple[tuple[str, ...], ...]  # then the stages of each category that several instances share
    chains: tuple[tuple[str, ...], ...]  # then one chain per instance (led by its category's, if its own)


def plan(stage_names: Sequence[str], categories: Sequence[str], instances: dict[str, str]) -> Plan:
    """Split `dvc stage list` names (dvc.yaml order) into the head, the shared per-category groups and
    the per-instance chains. A category with a single instance leads that instance's chain (no wait
    for the other categories). Keyed stages of other keys are left to the final `dvc repro`."""
    def keyed(key: str) -> tuple[str, ...]:
        return tuple(n for n in stage_names if n.partition("@")[2] == key)

    first_keyed = next((i for i, n in enumerate(stage_names) if "@" in n), len(stage_names))
    count = Counter(instances.values())
    shared = tuple(keyed(c) for c in dict.fromkeys([*categories, *instances.values()]) if count[c] != 1 and keyed(c))
    chains = tuple(chain for i, c in instances.items()
                   if (chain := (keyed(c) if count[c] == 1 else ()) + keyed(i)))
    return Plan(tuple(stage_names[:first_keyed]), shared, chains)


def stage_names(cwd: Path) -> list[str]:
    out = subprocess.run(["dvc", "stage", "list", "--name-only"], cwd=cwd, check=True, capture_output=True,
                         text=True).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


# DVC's lines that prpg repro reads: a stage starts, did not change, or was restored from the run cache.
_RUNNING = re.compile(r"^Running stage '(?P<stage>[^']+)':$")
_UNCHANGED = re.compile(r"^(?:Stage )?'(?P<stage>[^']+)' didn't change, skipping$"
                        r"|^Verifying outputs in frozen stage: '(?P<frozen>[^']+)'$")
_CACHED = re.compile(r"^Stage '(?P<stage>[^']+)' is cached - skipping run, checking out outputs$")
# DVC's bookkeeping, said once by the progress lines instead: the command echo, lock-file updates, the
# frozen zoo stage's notice (it is frozen on purpose), "up to date", and the `dvc push` hint (given once at
# the end, and only when a remote is configured).
_BOOKKEEPING = re.compile(r"^(> |Updating lock file |Generating lock file |Use `dvc push` |"
                          r"Data and pipelines are up to date\.|WARNING: stage: '[^']+' is frozen\. |"
                          r"Verifying data sources in stage: )")
_STAGE_END = re.compile(r"^(Updating|Generating) lock file ")
INDENT = "      "


class Progress:
    """The terminal of one `prpg repro`: a line per stage that ran (`[k/N] name  seconds`), the stage's
    own lines indented under it; stages that did not change count toward k without a line."""

    def __init__(self, total: int, out=None) -> None:
        self.total, self.out = total, out or sys.stdout
        self.done: set[str] = set()
        self.ran: list[str] = []
        self.lock = threading.Lock()

    def _print(self, *lines: str) -> None:
        with self.lock:
            for line in lines:
                print(line, file=self.out, flush=True)

    def finished(self, stage: str, seconds: float | None, lines: Sequence[str], note: str = "") -> None:
        with self.lock:
            self.done.add(stage)
            self.ran.append(stage)
            k = len(self.done)
        took = "" if seconds is None else f"  {seconds:.1f} s"
        self._print(f"[{k}/{self.total}] {stage}{took}{note}", *(INDENT + line for line in lines))

    def unchanged(self, stage: str) -> None:
        with self.lock:
            self.done.add(stage)

    def other(self, line: str) -> None:
        self._print(line)

    def follow(self, lines, gpu: str | None = None) -> None:
        """Read one `dvc repro`'s merged output to its end."""
        on = "" if gpu is None else f"  (GPU {gpu})"
        stage, t0, shown = None, 0.0, []

        def close(note: str = "") -> None:
            nonlocal stage
            if stage is not None:
                self.finished(stage, time.perf_counter() - t0, shown, note or on)
            stage = None

        for raw in lines:
            line = raw.rstrip("\n")
            if m := _RUNNING.match(line):
                close()
                stage, t0, shown = m["stage"], time.perf_counter(), []
            elif m := _UNCHANGED.match(line):
                close()
                self.unchanged(m["stage"] or m["frozen"])
            elif m := _CACHED.match(line):
                close()
                self.finished(m["stage"], None, [], "  (restored from the run cache)")
            elif _STAGE_END.match(line):
                close()
            elif _BOOKKEEPING.match(line):
                continue
            elif stage is not None and line.startswith("ERROR: "):
                close("  failed")
                self.other(line)
            elif stage is not None:
                if line.strip():
                    shown.append(line.removeprefix(SHOWN_PREFIX))
            elif line.strip():
                self.other(line)
        close("  failed")  # the output ended inside a stage: dvc was stopped


def has_remote(cwd: Path) -> bool:
    """A DVC remote is configured in the repository (.dvc/config or .dvc/config.local)."""
    pattern = re.compile(r"""^\s*\[\s*['"]?remote\s""", re.MULTILINE)
    return any(pattern.search(f.read_text()) for f in (cwd / ".dvc/config", cwd / ".dvc/config.local") if f.is_file())


def _run_dvc(cmd: Sequence[str], cwd: Path, env: dict | None, progress: Progress, gpu: str | None) -> int:
    """Run one dvc command, its output (stdout and stderr, merged) read by `progress`; its exit code."""
    with subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          bufsize=1, errors="replace") as proc:
        progress.follow(proc.stdout, gpu)
    return proc.returncode


def _dvc(targets: Sequence[str], cwd: Path, single: bool, progress: Progress, gpu: str | None = None) -> None:
    cmd = [*DVC, *(["-s"] if single else []), *targets]
    # Only with a GPU: the stage processes see that one card (as cuda:0); otherwise the env is inherited.
    env = None if gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}
    if _run_dvc(cmd, cwd, env, progress, gpu) != 0:
        rerun = ' '.join(cmd) if gpu is None else f"CUDA_VISIBLE_DEVICES={gpu} {' '.join(cmd)}"
        raise ReproError(f"stage(s) {' '.join(targets)} failed (see above); re-run them alone with: "
                         f"{rerun}")


def run_groups(groups: Sequence[Sequence[str]], jobs: int, cwd: Path, progress: Progress | None = None,
               gpus: Sequence[str] = ()) -> None:
    """Each group through one `dvc repro -s`, `jobs` groups at a time (with `gpus`: jobs <= len(gpus),
    each group on a free GPU of its own). After a failure no new group starts; the running ones
    finish, then the first error is raised."""
    progress = progress or Progress(sum(map(len, groups)))
    failed = threading.Event()
    free: queue.SimpleQueue[str] = queue.SimpleQueue()
    for gpu in gpus:
        free.put(gpu)

    def task(i: int, group: Sequence[str]) -> None:
        if failed.is_set():
            return
        gpu = free.get() if gpus else None  # at most len(gpus) tasks run: one is always free
        try:
            _dvc(group, cwd, single=True, progress=progress, gpu=gpu)
        except ReproError:
            failed.set()
            raise
        finally:
            if gpu is not None:
                free.put(gpu)

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(task, i, g) for i, g in enumerate(groups, 1)]
    errors = [e for f in futures if (e := f.exception())]
    if errors:
        raise errors[0]


def repro(jobs: int = 3, cwd: Path = Path("."), params_file: Path = Path("params.yaml"),
          gpus: Sequence[str] = ()) -> None:
    if jobs < 1:
        raise ReproError(f"--jobs must be at least 1, got {jobs}")
    if gpus and jobs > len(gpus):
        raise ReproError(f"--jobs {jobs} with {len(gpus)} GPU(s) (--gpus {','.join(gpus)}): each chain runs "
                         f"on a GPU of its own; use --jobs {len(gpus)} or fewer, or leave --jobs out")
    first = gpus[0] if gpus else None
    cwd = Path(cwd)
    t0 = time.perf_counter()
    run = load_params(cwd / params_file)["run"]  # validated: a bad run group fails here, naming the key
    names = stage_names(cwd)
    p = plan(names, run.categories, run.instances)
    progress = Progress(len(names))
    # One head stage at a time: `dvc repro data zoo` in a fresh clone checks the frozen zoo's deps
    # (outputs/data) before it has run data.
    for stage in p.head:
        _dvc([stage], cwd, single=False, progress=progress, gpu=first)
    run_groups(p.shared, jobs, cwd, progress, gpus)
    run_groups(p.chains, jobs, cwd, progress, gpus)
    _dvc([], cwd, single=False, progress=progress, gpu=first)
    ran = len(progress.ran)
    print(f"prpg repro: {ran} stage(s) ran, {len(names) - ran} up to date, in {time.perf_counter() - t0:.0f} s "
          f"({jobs} at a time); full logs: outputs/executed/**/*.log", flush=True)
    if has_remote(cwd):
        print("prpg repro: `dvc push` sends the new outputs to the remote", flush=True)

