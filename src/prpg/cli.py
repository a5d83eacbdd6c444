"""`prpg` command line: dataset tools and params validation. Pipelines run through `dvc repro` (or
`prpg repro -j N`, the same with independent stages side by side)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from prpg.runs.cluster import add_cluster_parser, add_gpu_arguments
from prpg.data.download import DownloadError
from prpg.rehearsal.rehearse import RehearsalError
from prpg.runs.repro import ReproError


def _build_toybox(args: argparse.Namespace) -> int:
    from prpg.toybox import build_toybox

    t0 = time.perf_counter()
    build_toybox(
        args.out,
        seed=args.seed,
        size=args.size,
        instances_per_category=args.instances_per_category,
        pool_per_category=args.pool_per_category,
        workers=args.workers,
    )
    print(f"toybox written to {args.out}/toybox and {args.out}/toybox_pool in {time.perf_counter() - t0:.1f} s")
    return 0


def _build_pool(args: argparse.Namespace) -> int:
    from prpg.data.prepare import prepare_pool
    from prpg.core.params import load_params

    params = load_params(args.params)
    if params["common"].dataset != "toybox":
        raise ValueError(f"{args.params}: common.dataset is {params['common'].dataset!r}; the pool is toybox-only")
    print(f"toybox pool written to {prepare_pool(params['common'], params['data'])}")
    return 0


def _check(args: argparse.Namespace) -> int:
    from prpg.data import check_dataset, format_report

    problems = check_dataset(args.path, min_train=args.min_train, require_train_masks=not args.no_train_masks)
    if problems:
        print(format_report(problems), file=sys.stderr)
        print(f"{args.path}: {len(problems)} problem(s)", file=sys.stderr)
        return 1
    print(f"{args.path}: ok")
    return 0


def _download(args: argparse.Namespace) -> int:
    from prpg.data import download_dataset

    if args.name == "prompts":
        return _download_prompts(args.dest)
    dest = args.dest or Path("data") / args.name
    download_dataset(args.name, dest)
    print(f"{args.name} downloaded to {dest} and checked. Track it with: dvc add data")
    return 0


def _download_prompts(dest: Path | None) -> int:
    from prpg.prompts import PROMPTS_DIR, REFERENCE_COMMIT
    from prpg.prompts.download import download_prompts

    dest = dest or Path(PROMPTS_DIR)
    for name, what in download_prompts(dest).items():
        print(f"{dest / name}: {what} (sha256 verified, reference commit {REFERENCE_COMMIT[:7]})")
    print("Track them with: dvc add data")
    return 0


def _params(args: argparse.Namespace) -> int:
    from pydantic import TypeAdapter

    from prpg.core.params import GROUPS, load_params

    for name, group in load_params(args.file).items():
        print(f"{name}: {TypeAdapter(GROUPS[name]).dump_python(group)}")
    return 0


def _save_result(args: argparse.Namespace) -> int:
    from prpg.runs.results import save_result

    print(f"saved {save_result(args.name, args.description, args.headline, part=args.part)}")
    return 0


def _check_instances(instances: dict[str, str], data_root: str, source: str) -> None:
    """run.instances against the dataset at data_root, when it is on disk (else the data stage builds or
    checks it first): each instance must be in it, under the category it has there."""
    from prpg.data import DatasetError, load_dataset
    from prpg.core.params import ParamsError

    if not instances or not Path(data_root).is_dir():
        return
    try:
        ds = load_dataset(data_root)
    except DatasetError:
        return  # a broken dataset: the data stage lists its problems, naming the files
    info = ds.root / f"{ds.name}_info.json"  # what names the instances and their categories
    where = info if info.is_file() else ds.root / "train"
    known = {i.name: i.category for i in ds.instances}
    for name, category in instances.items():
        if name not in known:
            raise ParamsError(f"{source}: run.instances.{name}: no instance {name!r} in {where} (the dataset "
                              f"common.data_root holds now); use one of its names, or `prpg exp NAME --instances test`")
        if known[name] != category:
            raise ParamsError(f"{source}: run.instances.{name} is {category!r}, but {where} has {name} in category "
                              f"{known[name]!r}; set run.instances.{name}: {known[name]}")


def _check_params(params_file: Path, source: str, root: Path = Path(".")) -> None:
    """What `dvc repro` will read, before DVC starts: every params group, and run.instances against the
    dataset on disk."""
    from prpg.core.params import load_params

    params = load_params(params_file, source=source, root=root)
    _check_instances(params["run"].instances, params["common"].data_root, source)


def _apply_overrides(params_file: Path, values: list[str]) -> None:
    """DVC's own `-S` code (as `dvc exp run`); a bad override fails naming itself."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    try:
        apply_overrides(str(params_file), values)
        return
    except InvalidArgumentError:
        pass
    for v in values:  # find the one DVC refused (its error does not say)
        try:
            apply_overrides(str(params_file), [v])
        except InvalidArgumentError as err:
            why = " ".join(line for line in str(err.__cause__ or err).splitlines() if not line.startswith("See "))
            raise ValueError(f"-S {v!r}: not a valid override ({why}); write KEY=VALUE in Hydra's syntax, "
                             "e.g. -S train.lr=0.001") from None


def _check_exp_params(name: str, instances: dict[str, str] | None, extra: list[str]) -> None:
    """params.yaml with the experiment's overrides (each run of a sweep), on a temp copy, validated."""
    import shutil
    import tempfile

    from prpg.runs.experiments import overrides, set_instances, single_runs
    from prpg.core.params import ParamsError

    if not Path("params.yaml").is_file():
        raise ParamsError("params.yaml: not found; run prpg exp from the repository root")
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "params.yaml"
        for run in single_runs(overrides(name, extra)):
            shutil.copy("params.yaml", copy)
            if instances:
                set_instances(copy, instances)
            _apply_overrides(copy, run)
            _check_params(copy, f"params.yaml with the overrides of `prpg exp {name}`")


def _check_jobs(jobs: int | None, gpus: tuple[str, ...]) -> None:
    if jobs is not None and jobs < 1:
        raise ValueError(f"--jobs {jobs}: use 1 or more stage groups at once")
    if gpus and jobs is not None and jobs > len(gpus):
        raise ValueError(f"--jobs {jobs} with {len(gpus)} GPU(s) (--gpus {','.join(gpus)}): each chain runs on a "
                         f"GPU of its own; use --jobs {len(gpus)} or fewer, or leave --jobs out")


def _exp(args: argparse.Namespace) -> int:
    import subprocess

    from prpg.runs.cluster import gpu_options
    from prpg.runs.experiments import command, data_root_of, instances_of, resolve, set_instances, shell, write_params

    resolve(args.name)  # an unknown name fails first, listing the known parts
    args.jobs, gpus = gpu_options(args.jobs, args.gpus, default_jobs=None)
    _check_jobs(args.jobs, gpus)
    if args.jobs is not None and (args.queue or args.dry):
        raise SystemExit("prpg exp: --jobs runs the experiment here and now; it takes no --queue or --dry")
    if not args.instances and (args.per_category is not None or args.offset):
        raise ValueError("--per-category and --offset pick instances of --instances test|val; add --instances")
    if args.per_category is not None and args.per_category < 1:
        raise ValueError(f"--per-category {args.per_category}: use 1 or more (or leave it out: every instance)")
    if args.offset < 0:
        raise ValueError(f"--offset {args.offset}: use 0 or more (the offset-th instance of each category)")

    instances = None
    if args.instances:
        root = args.data_root or data_root_of(args.name)
        try:
            instances = instances_of(root, split=args.instances, per_category=args.per_category, offset=args.offset)
        except ValueError as err:
            offset = f" --offset {args.offset}" if args.offset else ""
            raise ValueError(f"--instances {args.instances}{offset}: {err}") from None
    _check_exp_params(args.name, instances, args.set)  # before anything is written or DVC starts
    if args.jobs is None:
        cmd = command(args.name, queue=args.queue, extra=args.set)
        if instances:
            print(f"params.yaml: run.instances <- {len(instances)} instances of {root} "
                  f"({', '.join(list(instances)[:4])}{', ...' if len(instances) > 4 else ''})")
            if not args.dry:
                set_instances("params.yaml", instances)
        print(shell(cmd))
        return 0 if args.dry else subprocess.call(cmd)
    from prpg.runs.repro import repro

    values = write_params(args.name, "params.yaml", instances, args.set)
    print(f"params.yaml: {shell(values)}")
    repro(args.jobs, gpus=gpus)
    print(f"done: params.yaml holds {args.name}; `dvc exp save -n {args.name} dvc.yaml` records it as an "
          "experiment, `prpg results save NAME` snapshots its metrics, `git checkout params.yaml` restores "
          "the defaults")
    return 0


def _repro(args: argparse.Namespace) -> int:
    from prpg.runs.cluster import gpu_options
    from prpg.runs.repro import repro

    jobs, gpus = gpu_options(args.jobs, args.gpus, default_jobs=3)
    _check_jobs(jobs, gpus)
    _check_params(Path("params.yaml"), "params.yaml")  # before DVC starts
    repro(jobs, gpus=gpus)
    return 0


def _summary(args: argparse.Namespace) -> int:
    from prpg.runs.summary import summary_text

    print(summary_text(args.metrics, args.report))
    return 0


def _rehearse(args: argparse.Namespace) -> int:
    from prpg.rehearsal.rehearse import rehearse

    rehearse(args.name, shape=args.shape, device=args.device, instances=args.instances, data_root=args.data_root,
             workdir=args.workdir, keep=args.keep, hub_dir=args.hub_dir, report_dir=args.report_dir, extra=args.set)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prpg", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    b = data.add_parser("build-toybox", help="build the procedural toybox world (PODS layout)")
    b.add_argument("--out", type=Path, required=True, help="folder to hold toybox/ and toybox_pool/")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--size", type=int, default=128, help="image side in pixels")
    b.add_argument("--instances-per-category", type=int, default=20)
    b.add_argument("--pool-per-category", type=int, default=50)
    b.add_argument("--workers", type=int, default=2)
    b.set_defaults(func=_build_toybox)

    bp = data.add_parser("build-pool", help="build the toybox pretraining pool (outputs/pool) from params.yaml")
    bp.add_argument("params", type=Path, nargs="?", default=Path("params.yaml"))
    bp.set_defaults(func=_build_pool)

    c = data.add_parser("check", help="validate a PODS-format dataset, listing every problem")
    c.add_argument("path", type=Path)
    c.add_argument("--min-train", type=int, default=3, help="train images required per instance")
    c.add_argument("--no-train-masks", action="store_true", help="do not require train masks")
    c.set_defaults(func=_check)

    d = data.add_parser("download", help="download a real dataset, or the paper's scene prompts (needs internet)")
    d.add_argument("name", choices=["pods", "dogs", "prompts"],
                   help="prompts: the reference's gpt_prompts_{pods,dogs,df2}.json, checksum verified")
    d.add_argument("--dest", type=Path, default=None, help="default: data/<name>")
    d.set_defaults(func=_download)

    r = sub.add_parser("results", help="committed experiment results").add_subparsers(dest="results_command",
                                                                                       required=True)
    rs = r.add_parser("save", help="snapshot reports/metrics of the finished run as reports/results/NAME")
    rs.add_argument("name")
    rs.add_argument("--description", default="")
    rs.add_argument("--headline", action="store_true", help="the run's row goes into the main table")
    rs.add_argument("--part", help="save as reports/results/NAME/parts/PART: one instance set of a result "
                                   "run in parts (the report merges them)")
    rs.set_defaults(func=_save_result)

    e = sub.add_parser("exp", help="run a named experiment (one `dvc exp run`; see prpg.runs.experiments)")
    e.add_argument("name", help="toybox-<method> | toybox-sweep-cfg | <dataset>-<backbone>[-<method>] | ...-sweep-<name>")
    e.add_argument("--queue", action="store_true", help="queue it (dvc queue start -j N runs the queue)")
    e.add_argument("--dry", action="store_true", help="print the command only")
    e.add_argument("--instances", choices=["test", "val"], help="run every instance of this class_to_split split")
    e.add_argument("--per-category", type=int, default=None, help="at most this many instances per category")
    e.add_argument("--offset", type=int, default=0, help="with --instances: of each category, start at the "
                   "offset-th instance (with --per-category 1: one part of an experiment run in parts)")
    e.add_argument("--data-root", default=None, help="dataset folder for --instances (default: the experiment's "
                   "common.data_root, else params.yaml's)")
    e.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                   help="one more override, as dvc exp run -S (after the experiment's own)")
    e.add_argument("-j", "--jobs", type=int, default=None,
                   help="instead of `dvc exp run` (one stage at a time): write the overrides into params.yaml "
                        "and run `prpg repro -j JOBS`, the instance chains side by side")
    add_gpu_arguments(e)
    e.set_defaults(func=_exp)

    rp = sub.add_parser("repro", help="dvc repro with independent stages side by side (see prpg.runs.repro)")
    rp.add_argument("-j", "--jobs", type=int, default=None,
                    help="stage groups (instance chains) at once: default 3 (measured on 2 cores, Makefile), "
                         "or one per GPU with --gpus")
    add_gpu_arguments(rp)
    rp.set_defaults(func=_repro)
    add_cluster_parser(sub)

    sm = sub.add_parser("summary", help="pretrained vs personalized per task (mean ± 95 %% CI) of the finished "
                                        "run, from its tracked metrics (see prpg.runs.summary)")
    sm.add_argument("--metrics", type=Path, default=Path("reports/metrics/evaluate.json"))
    sm.add_argument("--report", type=Path, default=Path("reports/report.html"), help="the report path to print")
    sm.set_defaults(func=_summary)

    rh = sub.add_parser("rehearse", help="run a paper experiment offline on random-weight models of its "
                                         "architectures (prpg.rehearsal)")
    rh.add_argument("name", help="a paper experiment, e.g. pods-dinov2_vitb14")
    rh.add_argument("--shape", choices=["mini", "paper"], default="mini",
                    help="mini: tiny models of the same families (minutes, CI); paper: the real sizes")
    rh.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    rh.add_argument("--instances", type=int, default=1, help="test instances to run (categories in turn)")
    rh.add_argument("--data-root", default=None, help="a PODS-format folder to use instead of the rendered world")
    rh.add_argument("--workdir", default=None, help="where the throwaway copy goes (default: a temp dir)")
    rh.add_argument("--hub-dir", default=None, help="reuse (or build) the random-weight models here")
    rh.add_argument("--report-dir", default=None, help="default: reports/rehearsal")
    rh.add_argument("--keep", action="store_true", help="keep the copy (it is always kept after a failure)")
    rh.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE",
                    help="one more override after the rehearsal's own")
    rh.set_defaults(func=_rehearse)

    p = sub.add_parser("params", help="validate params.yaml and print the resolved groups")
    p.add_argument("--file", type=Path, default=Path("params.yaml"))
    p.set_defaults(func=_params)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, OSError, DownloadError, ReproError, RehearsalError) as err:  # SummaryError: a ValueError  # our errors say what to do: no traceback
        print(f"prpg: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
