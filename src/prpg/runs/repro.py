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
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

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


def _dvc(targets: Sequence[str], cwd: Path, single: bool, gpu: str | None = None) -> None:
    cmd = [*DVC, *(["-s"] if single else []), *targets]
    # Only with a GPU: the stage processes see that one card (as cuda:0); otherwise the env is inherited.
    env = {} if gpu is None else {"env": {**os.environ, "CUDA_VISIBLE_DEVICES": gpu}}
    if subprocess.run(cmd, cwd=cwd, **env).returncode != 0:
        rerun = ' '.join(cmd) if gpu is None else f"CUDA_VISIBLE_DEVICES={gpu} {' '.join(cmd)}"
        raise ReproError(f"stage(s) {' '.join(targets)} failed (see above); re-run them alone with: "
                         f"{rerun}")


def run_groups(groups: Sequence[Sequence[str]], jobs: int, cwd: Path, label: str,
               gpus: Sequence[str] = ()) -> None:
    """Each group through one `dvc repro -s`, `jobs` groups at a time (with `gpus`: jobs <= len(gpus),
    each group on a free GPU of its own). After a failure no new group starts; the running ones
    finish, then the first error is raised."""
    failed = threading.Event()
    free: queue.SimpleQueue[str] = queue.SimpleQueue()
    for gpu in gpus:
        free.put(gpu)

    def task(i: int, group: Sequence[str]) -> None:
        if failed.is_set():
            return
        gpu = free.get() if gpus else None  # at most len(gpus) tasks run: one is always free
        on = "" if gpu is None else f" on GPU {gpu}"
        print(f"prpg repro: {label} {i}/{len(groups)} starts{on}: {' '.join(group)}", flush=True)
        try:
            _dvc(group, cwd, single=True, gpu=gpu)
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
    p = plan(stage_names(cwd), run.categories, run.instances)
    if p.head:
        _dvc(p.head, cwd, single=False, gpu=first)
    run_groups(p.shared, jobs, cwd, "category", gpus)
    run_groups(p.chains, jobs, cwd, "instance", gpus)
    _dvc([], cwd, single=False, gpu=first)
    print(f"prpg repro: done in {time.perf_counter() - t0:.0f} s ({jobs} at a time)", flush=True)

