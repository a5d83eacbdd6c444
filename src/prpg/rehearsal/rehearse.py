"""`prpg rehearse NAME`: run a paper experiment end to end, offline, on random weights of its real models.

A paper run needs the hub's models and a GPU. A rehearsal runs the experiment's own `dvc exp run` in a
throwaway copy of the repository, with every model id resolved from a throwaway Hugging Face cache of
random-weight models of the paper's architectures (prpg.rehearsal.hub), on a PODS-format world named
like the experiment's dataset (prpg.rehearsal.world). Only counts (steps, images, triplets, attempts)
are reduced, with `-S`, and the report lists them. It measures each stage (wall time, peak RSS, peak
CUDA memory, bytes written), and projects time and disk to the experiment's full counts.

Shapes: `mini` (tiny models of the same families under the same ids: the plumbing, in a minute, for CI)
and `paper` (the real sizes: memory, disk and time per count that mean something).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from prpg.runs.experiments import command, resolve, set_instances, shell

SHAPES = ("mini", "paper")
DEVICES = ("cpu", "cuda", "auto")
WORLD_SIZE = 512  # a real photo size: SD 1.5's resolution, the paper's dense inputs are larger still
# Images per instance in each of the 4 PODS test splits: counts too (every instance's evaluation embeds
# the whole test set, the dense images at 896-1024 px), so the world is smaller than PODS (6 and 3).
WORLD_TEST_PER_SPLIT, WORLD_DENSE_PER_SPLIT = 2, 1
# The counts a rehearsal runs with (the rest of the experiment is unchanged). Batch sizes stay: they set
# peak memory, and a batch larger than its count is clipped to the count.
REDUCED = {
    "personalize.steps": 2,
    "priors.class_images.n": 2,
    "priors.class_images.steps": 2,
    "synthesize.positives.n": 2,
    "synthesize.positives.num_prompts": 2,
    "synthesize.positives.steps": 2,
    "priors.negatives.n": 4,
    "priors.negatives.steps": 2,
    "synthesize.cut_paste.n": 4,
    "priors.backgrounds.n": 2,
    "priors.backgrounds.steps": 2,
    "filter.n_keep": 2,
    "filter.max_attempts": 4,
    "train.num_triplets": 8,
    "train.num_synthetic": 2,
    "train.epochs": 1,
}
# Not counts, and said so in the report: random weights judge every image alike, so the filter keeps
# whatever it sees (later stages then get data to work on).
NOT_COUNTS = {"filter.threshold": -1.0}
# Full DreamBooth of SD 1.5 in fp32 on a CPU (AdamW: weights, gradients and two moments of the UNet and text
# encoder, the frozen base pipeline beside the trained copy, checkpointed 512-px activations): the
# personalize stage's peak RSS measured in a paper-shape rehearsal was 21.5 GB.
FULL_DREAMBOOTH_BYTES = int(21.6e9)
# Images of the whole dataset that each instance's evaluation embeds (PODS, docs/protocol.md §2.1-2.3: ~10.9 k
# test images for classification and retrieval, 1200 test_dense images for detection and segmentation).
DATASET_EVAL_IMAGES = {"pods": {"test": 10900, "test_dense": 1200}}


class RehearsalError(RuntimeError):
    """A rehearsal could not run, or its pipeline failed (the message says where the log is)."""


@dataclass
class StageRecord:
    stage: str
    wall_seconds: float
    setup_seconds: float  # loading: the cells before the work, which do not grow with the counts
    peak_rss_bytes: int
    peak_cuda_bytes: int | None
    cpu_seconds: float | None  # the kernel's CPU time: what other work on the machine does not inflate
    output_bytes: int  # what the stage's outs hold (dvc.lock sizes)
    count_ratio: float | None  # full count / rehearsed count of what the stage's work scales with
    projected_seconds: float | None
    projected_output_bytes: int | None


@dataclass
class Rehearsal:
    name: str
    shape: str
    device: str
    instances: dict[str, str]
    command: list[str]
    reduced: dict[str, object]
    not_counts: dict[str, object]
    wall_seconds: float
    stages: list[StageRecord] = field(default_factory=list)
    cache_bytes: int = 0
    disk_bytes: int = 0  # outputs/ + .dvc/cache, hard links counted once
    projection: dict[str, object] = field(default_factory=dict)
    machine: dict[str, object] = field(default_factory=dict)


# ----------------------------------------------------------------------------- the repository copy


def copy_repo(src: Path, dst: Path, exclude: tuple[str, ...] = ("reports/rehearsal/",),
              before_commit=None) -> Path:
    """Tracked and untracked-not-ignored files of src (the working tree as it is, no outputs, no data),
    less those under `exclude`, as a fresh git repo at dst; `before_commit(dst)` may edit it first."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=src,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for rel in filter(None, files):
        if (src / rel).is_file() and not rel.startswith(exclude):
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src / rel, dst / rel)
    if before_commit is not None:
        before_commit(dst)
    for cmd in (["git", "init", "-q", "-b", "main"], ["git", "add", "-A"], ["git", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dst, check=True, capture_output=True, env=_git_env())
    return dst


def _git_env() -> dict[str, str]:
    return {**os.environ, "GIT_AUTHOR_NAME": "prpg-rehearsal", "GIT_AUTHOR_EMAIL": "rehearsal@prpg",
            "GIT_COMMITTER_NAME": "prpg-rehearsal", "GIT_COMMITTER_EMAIL": "rehearsal@prpg"}


def pick_instances(data_root: Path, k: int) -> dict[str, str]:
    """k test instances, one category after another (k=1: the first instance of the first category)."""
    from prpg.data import load_dataset

    ds = load_dataset(data_root)
    per_category = [[i.name for i in ds.instances_in(category=c, split="test")] for c in ds.categories]
    picked: dict[str, str] = {}
    for row in range(max(map(len, per_category))):
        for category, names in zip(ds.categories, per_category, strict=True):
            if row < len(names) and len(picked) < k:
                picked[names[row]] = category
    if len(picked) < k:
        raise RehearsalError(f"{data_root}: {len(picked)} test instances, fewer than --instances {k}")
    return picked


def write_stand_in_prompts(copy: Path, settings: dict, data_root: Path) -> list[Path]:
    """The prompt files the experiment reads (paper runs: data/prompts/gpt_prompts_<dataset>.json, which
    `prpg data download prompts` fetches and the copy does not carry: data/ is not in git), as reference-
    format stand-ins keyed by the world's instance names: the paper's sentences are keyed by the real
    instances, which a world does not have. Shipped sets and files already there are left alone."""
    from prpg.data import load_dataset
    from prpg.prompts import PROMPT_SETS, stand_in_reference_prompts

    keys = ("synthesize.positives.prompt_file", "priors.backgrounds.prompt_file")
    wanted = {settings[k] for k in keys if k in settings and settings[k] not in PROMPT_SETS}
    instances = {i.name: i.category for i in load_dataset(data_root).instances}
    written = []
    for rel in sorted(wanted):
        path = copy / rel
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(stand_in_reference_prompts(instances), indent=1) + "\n")
            written.append(path)
    return written


# ----------------------------------------------------------------------------- measuring


def _du(*paths: Path) -> int:
    """Bytes on disk of paths together, each hard-linked file once."""
    seen, total = set(), 0
    for root in paths:
        for p in ([root] if root.is_file() else root.rglob("*")) if root.exists() else []:
            st = p.lstat()
            if p.is_file() and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
    return total


def _lock_output_bytes(repo: Path) -> dict[str, int]:
    lock = yaml.safe_load((repo / "dvc.lock").read_text()) or {}
    return {stage: sum(int(o.get("size", 0)) for o in entry.get("outs", []))
            for stage, entry in lock.get("stages", {}).items()}


def _cell_seconds(notebook: Path) -> tuple[float, float]:
    """(setup, total) seconds of an executed notebook's code cells: setup = up to and including the first
    code cell after the parameters (imports, params, models loaded)."""
    import nbformat

    nb = nbformat.read(notebook, as_version=4)
    durations = [(c.metadata.get("tags", []), float(c.metadata.get("papermill", {}).get("duration") or 0))
                 for c in nb.cells if c.cell_type == "code"]
    durations = [(tags, d) for tags, d in durations if "prpg-stats" not in tags]
    first = next((i for i, (tags, _) in enumerate(durations) if "injected-parameters" in tags), 0)
    setup = sum(d for _, d in durations[: first + 2])
    return setup, sum(d for _, d in durations)


def n_positives(v: dict) -> int:
    """Positives the synthesize stage makes: file mode, ceil(n / prompts) per prompt (the reference's lists
    hold 100 sentences)."""
    prompts = v["synthesize.positives.num_prompts"] or 100
    return prompts * math.ceil(v["synthesize.positives.n"] / prompts)


def count_ratios(full: dict, reduced: dict) -> dict[str, float]:
    """Full / rehearsed count of what each stage's work grows with (sampler image-steps, train steps, ...)."""
    def priors(v):
        return (v["priors.class_images.n"] * v["priors.class_images.steps"]
                + v["priors.negatives.n"] * v["priors.negatives.steps"]
                + v["priors.backgrounds.n"] * v["priors.backgrounds.steps"])

    def positives(v):
        return n_positives(v) * v["synthesize.positives.steps"]

    return {
        "priors": priors(full) / priors(reduced),
        "personalize": full["personalize.steps"] / reduced["personalize.steps"],
        "synthesize": positives(full) / positives(reduced),
        # the filter looks at every synthesized positive once at least
        "filter": n_positives(full) / min(n_positives(reduced), reduced["filter.max_attempts"]),
        "train": (full["train.num_triplets"] * full["train.epochs"])
        / (reduced["train.num_triplets"] * reduced["train.epochs"]),
    }


def flat_params(params_file: Path, root: Path | None = None) -> dict[str, object]:
    """Every leaf of the validated params as dotted keys (defaults included); relative paths in them (prompt
    files, model folders) are looked up under root (default: params_file's folder)."""
    from pydantic import TypeAdapter

    from prpg.core.params import GROUPS, load_params

    out: dict[str, object] = {}

    def walk(prefix: str, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}", v)
        else:
            out[prefix] = value

    for group, model in load_params(params_file, root=root).items():
        walk(group, TypeAdapter(GROUPS[group]).dump_python(model))
    return out


# ----------------------------------------------------------------------------- the run


def rehearse(name: str, *, shape: str = "mini", device: str = "cpu", instances: int = 1,
             data_root: str | Path | None = None, repo: str | Path = ".", report_dir: str | Path | None = None,
             workdir: str | Path | None = None, keep: bool = False, hub_dir: str | Path | None = None,
             extra: list[str] | None = None) -> Rehearsal:
    """Rehearse the named experiment; writes <report_dir>/<name>-<shape>-<device>.{json,md}."""
    from prpg.rehearsal.hub import build_dreamsim, build_hub
    from prpg.rehearsal.world import build_world

    if shape not in SHAPES:
        raise RehearsalError(f"--shape must be one of {', '.join(SHAPES)}, got {shape!r}")
    if device not in DEVICES:
        raise RehearsalError(f"--device must be one of {', '.join(DEVICES)}, got {device!r}")
    if instances < 1:
        raise RehearsalError(f"--instances must be at least 1, got {instances}")
    settings = resolve(name)  # an unknown name fails here, naming what is known
    dataset = settings.get("common.dataset")
    if dataset is None:
        raise RehearsalError(f"{name} is a toybox experiment: it runs offline as it is (`prpg exp {name}`); "
                             "rehearsals are for paper experiments, e.g. pods-dinov2_vitb14")
    repo = Path(repo).resolve()
    report_dir = Path(report_dir) if report_dir else repo / "reports" / "rehearsal"
    work = Path(workdir).resolve() if workdir else Path(tempfile.mkdtemp(prefix=f"prpg-rehearse-{name}-"))
    work.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    try:
        copy = copy_repo(repo, work / "repo")
        root = copy / settings["common.data_root"]
        if data_root:
            shutil.copytree(Path(data_root), root, symlinks=False)
        else:  # single-category datasets take cut-and-paste backgrounds from other instances: one more of them
            others = settings.get("synthesize.cut_paste.real_source") == "other_instances"
            build_world(root, dataset, size=WORLD_SIZE, per_category=instances + others,
                        test_per_split=WORLD_TEST_PER_SPLIT, dense_per_split=WORLD_DENSE_PER_SPLIT)
        write_stand_in_prompts(copy, settings, root)
        picked = pick_instances(root, instances)
        hub = Path(hub_dir).resolve() if hub_dir else work / "hub"
        print(f"rehearse {name}: {shape} models into {hub}", flush=True)
        build_hub(hub / "hf_home", shape)
        build_dreamsim(hub / "dreamsim", shape)
        set_instances(copy / "params.yaml", picked)
        reduced = {**REDUCED}
        not_counts = {**NOT_COUNTS, **memory_fallback(shape, device, settings)}
        values = [f"{k}={v}" for k, v in {**reduced, **not_counts, "common.device": device}.items()]
        values += list(extra or [])
        cmd = command(name, extra=values)
        env = {**_git_env(), "HF_HOME": str(hub / "hf_home"), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               "PRPG_DREAMSIM_CACHE": str(hub / "dreamsim"), "PRPG_STAGE_STATS": str(work / "stats"),
               "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1",
               # the copy's own code, not the installed (editable) package of the repository it came from
               "PYTHONPATH": os.pathsep.join(filter(None, [str(copy / "src"), os.environ.get("PYTHONPATH")])),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        log = work / "rehearsal.log"
        print(f"rehearse {name}: {shell(cmd)}\n  in {copy} (log: {log})", flush=True)
        t0 = time.perf_counter()
        with open(log, "w") as f:
            code = subprocess.run(cmd, cwd=copy, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
        wall = time.perf_counter() - t0
        if code != 0:
            keep = True
            tail = log.read_text()[-3000:]
            raise RehearsalError(f"{name} ({shape}, {device}): `dvc exp run` failed with exit code {code}; "
                                 f"the copy and its log stay in {work}. Log tail:\n{tail}")
        full = flat_params_after(copy, name)
        result = collect(name, shape, device, picked, cmd, reduced, wall, copy, work / "stats", full)
        result.not_counts = not_counts
        write_report(result, report_dir)
        print(f"rehearse {name}: done in {time.perf_counter() - t_all:.0f} s; "
              f"report {report_dir / report_stem(result)}.{{json,md}}", flush=True)
        return result
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)


def available_memory() -> int:
    """MemAvailable of /proc/meminfo in bytes (0 where there is none)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def memory_fallback(shape: str, device: str, settings: dict) -> dict[str, str]:
    """Paper-shape full DreamBooth on a CPU whose RAM cannot hold it: rehearse that stage in LoRA mode
    (said in the report) rather than let the kernel be killed."""
    import torch

    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    full = settings.get("personalize.mode", "full") == "full"
    if shape == "paper" and on_cpu and full and available_memory() < FULL_DREAMBOOTH_BYTES:
        print(f"rehearse: full DreamBooth needs ~{FULL_DREAMBOOTH_BYTES / 1e9:.0f} GB of RAM, "
              f"{available_memory() / 1e9:.0f} GB are available: personalize runs in LoRA mode", flush=True)
        return {"personalize.mode": "lora"}
    return {}


def flat_params_after(copy: Path, name: str) -> dict[str, object]:
    """The experiment's full counts: params.yaml with only the experiment's own overrides applied."""
    from dvc.utils.hydra import apply_overrides

    from prpg.runs.experiments import overrides

    with tempfile.TemporaryDirectory() as tmp:
        params = Path(tmp) / "params.yaml"
        subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=copy, check=True, stdout=params.open("w"))
        apply_overrides(str(params), overrides(name))
        return flat_params(params, root=copy)  # the copy holds the files the params name (data/prompts)


def collect(name, shape, device, picked, cmd, reduced, wall, copy: Path, stats_dir: Path,
            full: dict) -> Rehearsal:
    rehearsed = {**full, **reduced}
    ratios = count_ratios(full, rehearsed)
    sizes = _lock_output_bytes(copy)
    stages = []
    for stats_file in sorted(stats_dir.glob("*.json")):
        if stats_file.name.endswith(".kernel.json"):
            continue
        s = json.loads(stats_file.read_text())
        kind = Path(s["notebook"]).stem.split("_", 1)[1]  # 03_personalize -> personalize
        key = next(iter(s["parameters_raw"].values()), None)
        stage = f"{kind}@{key}" if key else kind
        setup, total = _cell_seconds(copy / s["output"])
        ratio = ratios.get(kind)
        if kind == "evaluate" and full.get("common.dataset") in DATASET_EVAL_IMAGES:
            ratio = evaluate_ratio(copy / full["common.data_root"], DATASET_EVAL_IMAGES[full["common.dataset"]])
        work_seconds = max(total - setup, 0.0)
        out_bytes = sizes.get(stage, 0)
        stages.append(StageRecord(
            stage=stage, wall_seconds=s["wall_seconds"], setup_seconds=round(setup, 2),
            peak_rss_bytes=s["peak_rss_bytes"], peak_cuda_bytes=s["peak_cuda_bytes"],
            cpu_seconds=s.get("cpu_seconds"), output_bytes=out_bytes,
            count_ratio=round(ratio, 2) if ratio else None,
            projected_seconds=round(s["wall_seconds"] - work_seconds + work_seconds * ratio, 1) if ratio else None,
            projected_output_bytes=_project_bytes(kind, out_bytes, image_ratios(full, rehearsed).get(kind))))
    result = Rehearsal(name=name, shape=shape, device=device, instances=picked, command=cmd, reduced=reduced,
                       not_counts=NOT_COUNTS, wall_seconds=round(wall, 1), stages=stages,
                       cache_bytes=_du(copy / ".dvc" / "cache"), disk_bytes=_du(copy / "outputs", copy / ".dvc" / "cache"),
                       machine=_machine())
    result.projection = project(result, full)
    return result


def evaluate_ratio(world_root: Path, full_images: dict[str, int]) -> float:
    """The larger of the test and test_dense ratios, full dataset / world: an upper bound either way
    (at paper shape the dense features dominate, at 4096 tokens an image)."""
    from prpg.data import load_dataset

    ds = load_dataset(world_root)
    return max(full_images[split] / max(len(ds.images(split)), 1) for split in full_images)


def image_ratios(full: dict, reduced: dict) -> dict[str, float]:
    """Full / rehearsed number of images each stage writes (disk grows with images, not sampler steps)."""
    def priors(v):
        return (v["priors.class_images.n"] + v["priors.negatives.n"]
                + v["priors.backgrounds.n"])

    def synthesized(v):
        return n_positives(v) + v["synthesize.cut_paste.n"]

    return {"priors": priors(full) / priors(reduced), "synthesize": synthesized(full) / synthesized(reduced),
            "filter": full["filter.n_keep"] / reduced["filter.n_keep"]}


def _project_bytes(kind: str, out_bytes: int, ratio: float | None) -> int | None:
    """Image outputs grow with their image counts; weights (personalize, train) and metrics do not."""
    if kind in ("personalize", "train", "evaluate"):
        return out_bytes
    return int(out_bytes * ratio) if ratio else None


def project(r: Rehearsal, full: dict) -> dict[str, object]:
    """Time and disk of the full experiment: each per-instance stage x the dataset's test instances, each
    per-category stage x its categories (stages run one after another, on one device)."""
    from prpg.data import load_dataset

    per_instance = [s for s in r.stages if s.stage.split("@")[0] in ("personalize", "synthesize", "filter",
                                                                       "train", "evaluate")]
    per_category = [s for s in r.stages if s.stage.startswith("priors@")]
    n_inst, n_cat = len(r.instances), len(set(r.instances.values()))

    def total(stages, attr, measured):  # a stage with no projection counts as measured (listed below)
        return sum(v if (v := getattr(s, attr)) is not None else getattr(s, measured) for s in stages)

    inst_seconds = total(per_instance, "projected_seconds", "wall_seconds")
    cat_seconds = total(per_category, "projected_seconds", "wall_seconds")
    inst_bytes = total(per_instance, "projected_output_bytes", "output_bytes")
    cat_bytes = total(per_category, "projected_output_bytes", "output_bytes")
    out = {"per_instance_seconds": inst_seconds and round(inst_seconds / n_inst, 1),
           "per_category_seconds": cat_seconds and round(cat_seconds / n_cat, 1),
           "per_instance_bytes": inst_bytes and int(inst_bytes / n_inst),
           "per_category_bytes": cat_bytes and int(cat_bytes / n_cat),
           "peak_rss_bytes": max((s.peak_rss_bytes for s in r.stages), default=0),
           "peak_cuda_bytes": max((s.peak_cuda_bytes or 0 for s in r.stages), default=0) or None,
           "not_projected": [s.stage for s in per_instance + per_category if s.projected_seconds is None]}
    # Instances a run covers, categories. PODS: its 70 test instances; Dogs and DF2: every instance of the
    # reference's prompt lists (their test splits are not stated), an upper bound.
    sizes = {"pods": (70, 5), "dogs": (80, 1), "df2": (206, 1)}
    dataset = full.get("common.dataset")
    if dataset in sizes:
        n_test, n_categories = sizes[dataset]
        out["full_run"] = {
            "test_instances": n_test, "categories": n_categories,
            "hours_one_device": round((out["per_instance_seconds"] * n_test
                                       + out["per_category_seconds"] * n_categories) / 3600, 1),
            "disk_gb": round((out["per_instance_bytes"] * n_test + out["per_category_bytes"] * n_categories) / 1e9, 1),
        }
    return out


def _machine() -> dict[str, object]:
    import platform

    import torch

    info: dict[str, object] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                               "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


# ----------------------------------------------------------------------------- the report


def report_stem(r: Rehearsal) -> str:
    return f"{r.name}-{r.shape}-{r.device}"


def _gb(b: int | None) -> str:
    return "–" if b is None else f"{b / 1e9:.2f}"


def markdown(r: Rehearsal) -> str:
    lines = [f"# Rehearsal: {r.name} ({r.shape} shape, {r.device})", "",
             f"Random-weight models of the paper's architectures under the paper's hub ids; instances "
             f"{', '.join(f'{k} ({v})' for k, v in r.instances.items())}; `dvc exp run` took {r.wall_seconds:.0f} s on "
             f"{r.machine.get('gpu') or str(r.machine.get('cpu_count')) + ' CPU cores'}.", "",
             "Reduced counts: " + ", ".join(f"`{k}={v}`" for k, v in r.reduced.items()) + ".",
             "Not counts: " + ", ".join(f"`{k}={v}`" for k, v in r.not_counts.items())
             + " (random weights judge every image alike: the filter keeps what it sees"
             + ("; full DreamBooth does not fit this machine's RAM: LoRA" if "personalize.mode" in r.not_counts
                else "") + ").", "",
             "| stage | wall s | kernel CPU s | setup s | peak RSS GB | peak CUDA GB | outputs GB | x count | "
             "projected s | projected outputs GB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in r.stages:
        cpu = "–" if s.cpu_seconds is None else f"{s.cpu_seconds:.0f}"
        lines.append(f"| {s.stage} | {s.wall_seconds:.1f} | {cpu} | {s.setup_seconds:.1f} | {_gb(s.peak_rss_bytes)} | "
                     f"{_gb(s.peak_cuda_bytes)} | {_gb(s.output_bytes)} | {s.count_ratio or '–'} | "
                     f"{s.projected_seconds if s.projected_seconds is not None else '–'} | "
                     f"{_gb(s.projected_output_bytes)} |")
    p = r.projection
    lines += ["", f"DVC cache {_gb(r.cache_bytes)} GB; outputs + cache on disk {_gb(r.disk_bytes)} GB "
              "(hard links counted once).", "",
              "Projection to the experiment's full counts (setup time fixed, the rest linear in the count; "
              f"an upper bound): per instance {p.get('per_instance_seconds')} s and {_gb(p.get('per_instance_bytes'))} GB, "
              f"per category {p.get('per_category_seconds')} s and {_gb(p.get('per_category_bytes'))} GB."]
    if p.get("not_projected"):
        lines.append(f"Not projected (taken as measured): {', '.join(p['not_projected'])} (the dataset's full "
                     "test-image count is not known here).")
    if r.shape == "mini":
        lines.append("Mini shape: the models are tiny, so these figures check the plumbing, not the cost; "
                     "`--shape paper` measures what a paper run costs.")
    if "full_run" in p:
        f = p["full_run"]
        lines.append(f"Whole run ({f['test_instances']} test instances, {f['categories']} categories, one device): "
                     f"{f['hours_one_device']} h, {f['disk_gb']} GB.")
    return "\n".join(lines) + "\n"


def write_report(r: Rehearsal, report_dir: Path) -> None:
    from prpg.core.atomic import write_json_atomic

    report_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(report_dir / f"{report_stem(r)}.json", asdict(r))
    md = report_dir / f"{report_stem(r)}.md"
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(markdown(r))
    tmp.replace(md)
