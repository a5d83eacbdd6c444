"""Runs on GPUs: one machine with N GPUs (`--gpus`), or a SLURM cluster (`prpg cluster`), via submitit.

One machine: `prpg repro --gpus 0,1,2,3` (or `prpg exp NAME --instances test --gpus auto`) runs the
instance chains side by side, one GPU each: every chain's `dvc repro -s` gets CUDA_VISIBLE_DEVICES=<its
id> from a pool (prpg.runs.repro.run_groups). `--jobs` defaults to the number of GPUs.

A cluster: `prpg cluster NAME --parts 0-13` submits the experiment's parts as a SLURM job array, one
array task per part K (the K-th test instance of every category, as prpg.runs.results describes). Each task:
  1. clones the submitting repository's HEAD commit into <workdir>/<NAME>/part-<KK> (its own copy, so
     DVC's locks and workspaces never collide; a resubmitted part reuses it and DVC skips what is done),
     sharing the submitting repository's DVC cache (datasets and unchanged stages come from it);
  2. runs what a user runs by hand for a part, in that copy:
       prpg exp NAME --instances test --per-category 1 --offset K --jobs J
       prpg results save NAME --part KK
  3. copies reports/results/NAME/parts/KK back into the submitting repository (the report merges parts).
The work dir must be on a filesystem that the compute nodes share with the submitting machine.
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prpg.core.atomic import atomic_dir
from prpg.runs.results import FILES, RESULTS_DIR

Runner = Callable[[Sequence[str], Path, dict], None]
GPU_ID = re.compile(r"\d+|(GPU|MIG)-[0-9A-Za-z/.-]+")  # an index, or a UUID as nvidia-smi -L prints it


# ---- one machine, N GPUs -------------------------------------------------------------------------

def _cuda_device_count() -> int:
    import torch  # only for --gpus auto without CUDA_VISIBLE_DEVICES: torch takes seconds to import

    return torch.cuda.device_count()


def parse_gpus(spec: str) -> tuple[str, ...]:
    """`--gpus` as GPU ids: 'auto' (the ids in CUDA_VISIBLE_DEVICES if set, e.g. by SLURM, else every
    device torch sees) or a comma-separated list such as '0,1,2,3'. An id listed twice runs two chains
    on that GPU."""
    if spec.strip() == "auto":
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None:
            ids = tuple(v.strip() for v in visible.split(",") if v.strip())
            if not ids:
                raise ValueError("--gpus auto: CUDA_VISIBLE_DEVICES is empty (no GPU visible); unset it or "
                                 "list GPU ids, e.g. --gpus 0,1")
            return ids
        count = _cuda_device_count()
        if count == 0:
            raise ValueError("--gpus auto: torch sees no CUDA device; run on a GPU machine, or leave --gpus "
                             "out to run on the CPU")
        return tuple(str(i) for i in range(count))
    ids = tuple(v.strip() for v in spec.split(","))
    bad = [v for v in ids if not GPU_ID.fullmatch(v)]
    if bad:
        raise ValueError(f"--gpus {spec!r}: {', '.join(repr(b) for b in bad)} is not a GPU id; write 'auto' "
                         "or comma-separated ids such as --gpus 0,1,2,3")
    return ids


def gpu_options(jobs: int | None, spec: str | None,
                default_jobs: int | None) -> tuple[int | None, tuple[str, ...]]:
    """(jobs, gpu ids) from `--jobs` and `--gpus`: with GPUs, jobs defaults to one chain per GPU."""
    gpus = parse_gpus(spec) if spec else ()
    if jobs is None:
        jobs = len(gpus) if gpus else default_jobs
    return jobs, gpus


def add_gpu_arguments(parser: argparse.ArgumentParser) -> None:
    """`--gpus` for `prpg repro` and `prpg exp` (resolve it with gpu_options)."""
    parser.add_argument("--gpus", default=None, metavar="auto|ID,ID,...",
                        help="run each instance chain on a GPU of its own (CUDA_VISIBLE_DEVICES=<id>): "
                             "'auto' (the ids in CUDA_VISIBLE_DEVICES, else every CUDA device) or ids "
                             "such as 0,1,2,3; --jobs defaults to the number of GPUs")


# ---- a cluster: one array task per part ----------------------------------------------------------

def parse_parts(spec: str) -> list[int]:
    """`--parts` as offsets: '0-13', '0,3,5' or '0-3,7' (sorted, each once)."""
    parts: set[int] = set()
    for item in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", item)
        if not m:
            raise ValueError(f"--parts {spec!r}: {item!r} is not a part number or range; write e.g. "
                             "--parts 0-13 or --parts 0,2,5")
        low, high = int(m[1]), int(m[2] if m[2] is not None else m[1])
        if high < low:
            raise ValueError(f"--parts {spec!r}: the range {item.strip()} is empty; write LOW-HIGH with "
                             "LOW <= HIGH, e.g. --parts 0-13")
        parts.update(range(low, high + 1))
    return sorted(parts)


@dataclass(frozen=True)
class PartJob:
    """What one array task needs (pickled by submitit): which part, where, and how to run it."""
    name: str  # the named experiment (prpg.runs.experiments)
    offset: int  # K: the K-th test instance of every category
    repo: str  # the submitting repository (absolute): where the part lands
    commit: str  # the commit every part runs
    copy: str  # this part's own repository copy
    cache_dir: str | None  # the submitting repository's DVC cache, shared by the copies (None: no DVC)
    jobs: int = 1  # instance chains at once in the task
    gpus_per_task: int = 1
    data_stage: bool = False  # the experiment picks its instances from the data stage's output (toybox)
    overrides: tuple[str, ...] = ()  # more -S KEY=VALUE for prpg exp
    description: str = ""
    headline: bool = False
    python: str = sys.executable  # the submitting environment's interpreter (its bin/ has dvc and prpg)

    @property
    def part(self) -> str:
        return f"{self.offset:02d}"


@dataclass(frozen=True)
class PartResult:
    offset: int
    part: str
    copy: str
    result: str  # reports/results/NAME/parts/KK in the submitting repository


def part_steps(job: PartJob) -> list[list[str]]:
    """The commands a part runs in its copy, in order (argv lists: names never go through a shell)."""
    prpg = [job.python, "-m", "prpg.cli"]
    steps: list[list[str]] = []
    if job.cache_dir:
        # Share the submitting repository's cache: datasets and unchanged stages are links, not copies.
        steps += [["dvc", "cache", "dir", "--local", job.cache_dir],
                  ["dvc", "config", "--local", "cache.type", "reflink,hardlink,copy"],
                  ["dvc", "checkout", "--allow-missing"]]
    if job.data_stage:  # toybox: the instances are picked from the world the data stage builds
        steps.append(["dvc", "repro", "data"])
    exp = [*prpg, "exp", job.name, "--instances", "test", "--per-category", "1", "--offset", str(job.offset),
           "--jobs", str(job.jobs)]
    if job.gpus_per_task > 1:  # several GPUs in the task: one chain on each
        exp += ["--gpus", "auto"]
    for value in job.overrides:
        exp += ["-S", value]
    save = [*prpg, "results", "save", job.name, "--part", job.part, "--description", job.description]
    return steps + [exp, save + (["--headline"] if job.headline else [])]


def part_env(job: PartJob) -> dict[str, str]:
    """The task's environment, plus: the submitting venv's bin/ first on PATH (dvc, and `python` in the
    stage commands), and the copy's src/ first on PYTHONPATH (the copy's code runs, not the editable
    install's)."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(job.python).parent), env.get("PATH", "")])
    paths = [str(Path(job.copy) / "src"), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def run_command(argv: Sequence[str], cwd: Path, env: dict) -> None:
    """The default runner: one step, its output in the task's log; a failure names the step."""
    print(f"prpg cluster: {cwd}: {' '.join(argv)}", flush=True)
    if subprocess.run(list(argv), cwd=cwd, env=env).returncode != 0:
        raise RuntimeError(f"{cwd}: {' '.join(argv)} failed (see above in this log)")


def _git(*args: str, cwd: str | Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def _copy_commit(copy: Path) -> str | None:
    """The commit a part's copy holds, or None where there is no copy yet."""
    if not (copy / ".git").exists():
        return None
    return _git("rev-parse", "HEAD", cwd=copy)


def make_copy(job: PartJob) -> Path:
    """This part's repository copy at job.commit: cloned once, reused by a resubmitted part."""
    copy = Path(job.copy)
    held = _copy_commit(copy)
    if held is None:
        if copy.exists() and any(copy.iterdir()):
            raise RuntimeError(f"{copy} exists but is not a git clone; remove it and resubmit the part")
        copy.parent.mkdir(parents=True, exist_ok=True)
        _git("clone", "--quiet", "--no-checkout", job.repo, str(copy), cwd=copy.parent)
        _git("checkout", "--quiet", "--detach", job.commit, cwd=copy)
    elif held != job.commit:
        raise RuntimeError(f"{copy} holds commit {held[:12]}, not {job.commit[:12]}; remove it (or pass "
                           "another --workdir) and resubmit the part")
    return copy


def run_part(job: PartJob, runner: Runner = run_command) -> PartResult:
    """One array task (module-level: submitit pickles it): copy, run the part, bring its result home."""
    copy = make_copy(job)
    env = part_env(job)
    for argv in part_steps(job):
        runner(argv, copy, env)
    src = copy / RESULTS_DIR / job.name / "parts" / job.part
    if not src.is_dir():
        raise RuntimeError(f"{src}: `prpg results save` left no part folder")
    target = Path(job.repo) / RESULTS_DIR / job.name / "parts" / job.part
    with atomic_dir(target) as tmp:  # a part lands whole or not at all
        shutil.copytree(src, tmp, dirs_exist_ok=True)
    print(f"prpg cluster: part {job.part} of {job.name} saved to {target}", flush=True)
    return PartResult(job.offset, job.part, str(copy), str(target))


@dataclass(frozen=True)
class Submission:
    jobs: list  # submitit jobs, one per part
    parts: list[int]
    workdir: Path  # <workdir>/<NAME>: part-KK copies, logs/
    commit: str


def _repo_root(path: Path) -> Path:
    try:
        return Path(_git("rev-parse", "--show-toplevel", cwd=path))
    except (subprocess.CalledProcessError, FileNotFoundError) as err:
        raise ValueError(f"{path}: not in a git repository; run prpg cluster in the project's clone") from err


def _dvc_cache_dir(repo: Path) -> str | None:
    if not (repo / ".dvc").is_dir():
        return None
    # This interpreter's DVC: the venv need not be activated (on PATH) where prpg cluster runs.
    out = subprocess.run([sys.executable, "-m", "dvc", "cache", "dir"], cwd=repo, capture_output=True,
                         text=True)
    if out.returncode != 0:
        raise ValueError(f"{repo}: `dvc cache dir` failed: {out.stderr.strip()}")
    return str(Path(repo, out.stdout.strip()).resolve())


def make_executor(folder: Path, local: bool, parts: int, partition: str | None, timeout_min: int,
                  gpus_per_task: int, array_parallelism: int | None, cpus_per_task: int | None,
                  slurm: Sequence[str] = ()):
    """A submitit executor: SLURM, or (local) this machine's processes."""
    import submitit

    if not local and shutil.which("sbatch") is None:
        raise ValueError("no SLURM here (sbatch is not on PATH); run prpg cluster on the cluster's login "
                         "node, or pass --local to run the parts as processes on this machine")
    executor = submitit.AutoExecutor(folder=folder, cluster="local" if local else "slurm")
    extra = {}
    for item in slurm:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--slurm {item!r}: write KEY=VALUE, e.g. --slurm account=myproj "
                             "--slurm mem=64G")
        extra[f"slurm_{key}"] = value
    try:
        executor.update_parameters(name=f"prpg-{Path(folder).parent.name}", timeout_min=timeout_min,
                                   gpus_per_node=gpus_per_task, cpus_per_task=cpus_per_task,
                                   slurm_partition=partition,
                                   slurm_array_parallelism=array_parallelism or parts, **extra)
    except NameError as err:  # submitit names the valid keys
        raise ValueError(f"--slurm: {err}") from err
    return executor


def submit(name: str, parts: Sequence[int], repo: Path = Path("."), workdir: Path | None = None,
           partition: str | None = None, timeout_min: int = 720, gpus_per_task: int = 1,
           jobs: int | None = None, array_parallelism: int | None = None, cpus_per_task: int | None = None,
           slurm: Sequence[str] = (), overrides: Sequence[str] = (), description: str = "",
           headline: bool = False, local: bool = False, runner: Runner | None = None) -> Submission:
    """Submit one array task per part (offset) of experiment `name`; see the module docstring."""
    from prpg.runs.experiments import resolve

    if not parts:
        raise ValueError("--parts: no parts to run; write e.g. --parts 0-13")
    if gpus_per_task < 0:
        raise ValueError(f"--gpus-per-task {gpus_per_task}: use 0 (CPU) or more")
    jobs = jobs if jobs is not None else max(gpus_per_task, 1)
    if jobs < 1:
        raise ValueError(f"--jobs {jobs}: use 1 or more instance chains at once per task")
    try:
        settings = resolve(name)  # a bad name fails here, not in every task
    except KeyError as err:
        raise ValueError(f"experiment {name!r}: {err.args[0]}") from err
    repo = _repo_root(Path(repo).resolve())
    whole = [f for f in FILES if (repo / RESULTS_DIR / name / f).is_file()]
    if whole:
        raise ValueError(f"{repo / RESULTS_DIR / name} holds a whole result ({', '.join(whole)}), not parts; "
                         "submit under another name, or move that result to parts/<P>/ first")
    commit = _git("rev-parse", "HEAD", cwd=repo)
    if _git("status", "--porcelain", "--untracked-files=no", cwd=repo):
        print(f"prpg cluster: warning: uncommitted changes in {repo} are not in the parts: they run commit "
              f"{commit[:12]}", file=sys.stderr)
    workdir = (Path(workdir) if workdir else repo.parent / f"{repo.name}-cluster").resolve() / name
    cache_dir = _dvc_cache_dir(repo)
    job_specs = [PartJob(name=name, offset=k, repo=str(repo), commit=commit,
                         copy=str(workdir / f"part-{k:02d}"), cache_dir=cache_dir, jobs=jobs,
                         gpus_per_task=gpus_per_task,
                         data_stage="common.data_root" not in settings, overrides=tuple(overrides),
                         description=description, headline=headline)
                 for k in parts]
    stale = [f"{j.copy} ({held[:12]})" for j in job_specs
             if (held := _copy_commit(Path(j.copy))) is not None and held != commit]
    if stale:
        raise ValueError(f"part copies at another commit than HEAD {commit[:12]}: {', '.join(stale)}; remove "
                         "them, or pass another --workdir")
    executor = make_executor(workdir / "logs", local, len(parts), partition, timeout_min, gpus_per_task,
                             array_parallelism, cpus_per_task, slurm)
    fn = run_part if runner is None else functools.partial(run_part, runner=runner)
    return Submission(executor.map_array(fn, job_specs), list(parts), workdir, commit)


def wait(submission: Submission) -> list[str]:
    """Block until every task ends; the failures, one line each ([] when every part landed)."""
    failures = []
    for k, job in zip(submission.parts, submission.jobs, strict=True):
        try:
            job.result()
        except Exception as err:  # submitit re-raises the task's error with its traceback
            last = (str(err).strip().splitlines() or [type(err).__name__])[-1]
            failures.append(f"part {k:02d} (job {job.job_id}): {last}; log: {job.paths.stderr}")
    return failures


def _cluster(args: argparse.Namespace) -> int:
    s = submit(args.name, parse_parts(args.parts), workdir=args.workdir, partition=args.partition,
               timeout_min=args.timeout_min, gpus_per_task=args.gpus_per_task, jobs=args.jobs,
               array_parallelism=args.array_parallelism, cpus_per_task=args.cpus_per_task, slurm=args.slurm,
               overrides=args.set, description=args.description, headline=args.headline, local=args.local)
    where = Path(s.jobs[0].paths.stdout).parent if s.jobs else s.workdir / "logs"
    parts = ", ".join(f"{k:02d}" for k in s.parts)
    print(f"prpg cluster: {args.name}: {len(s.jobs)} part(s) {parts} submitted (job "
          f"{s.jobs[0].job_id.split('_')[0]}, commit {s.commit[:12]}); copies in {s.workdir}, "
          f"logs in {where}")
    print(f"prpg cluster: each part lands in reports/results/{args.name}/parts/<KK>/ of this repository")
    if not (args.wait or args.local):  # local tasks are this machine's processes: stay until they end
        return 0
    failures = wait(s)
    for line in failures:
        print(f"prpg cluster: failed: {line}", file=sys.stderr)
    print(f"prpg cluster: {len(s.jobs) - len(failures)} of {len(s.jobs)} part(s) done")
    return 1 if failures else 0


def add_cluster_parser(subparsers) -> argparse.ArgumentParser:
    """`prpg cluster NAME --parts 0-13 ...` (subparsers: build_parser's add_subparsers())."""
    c = subparsers.add_parser("cluster",
                              help="run an experiment's parts as a SLURM job array (see prpg.runs.cluster)")
    c.add_argument("name", help="a named experiment, as prpg exp takes it (e.g. pods-dinov2_vitb14)")
    c.add_argument("--parts", required=True,
                   help="part numbers K (the K-th test instance of every category): 0-13, 0,2,5 or 0-3,7")
    c.add_argument("--partition", default=None, help="SLURM partition (default: the cluster's)")
    c.add_argument("--timeout-min", type=int, default=720,
                   help="time limit of each part in minutes (default 720); a resubmitted part resumes where "
                        "it stopped")
    c.add_argument("--gpus-per-task", type=int, default=1, help="GPUs of each part (default 1; 0: CPU only)")
    c.add_argument("-j", "--jobs", type=int, default=None, help="instance chains at once in a part "
                   "(default: one per GPU of the task)")
    c.add_argument("--array-parallelism", type=int, default=None, help="parts running at once (default: all)")
    c.add_argument("--cpus-per-task", type=int, default=None,
                   help="CPU cores of each part (default: the cluster's)")
    c.add_argument("--slurm", action="append", default=[], metavar="KEY=VALUE",
                   help="one more submitit SLURM parameter, e.g. --slurm account=myproj --slurm mem=64G")
    c.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more override for prpg exp (after the experiment's own)")
    c.add_argument("--description", default="", help="the result's description (prpg results save)")
    c.add_argument("--headline", action="store_true", help="the result's row goes into the main table")
    c.add_argument("--workdir", type=Path, default=None,
                   help="folder for the part copies and logs, shared with the compute nodes (default: "
                        "<repo>-cluster next to the repository)")
    c.add_argument("--wait", action="store_true",
                   help="stay until every part has ended, then list the failures")
    c.add_argument("--local", action="store_true",
                   help="run the parts as processes on this machine (no SLURM; for testing), and wait "
                        "for them")
    c.set_defaults(func=_cluster)
    return c
