"""Committed experiment results: `reports/results/<name>/` snapshots of a finished run's tracked metrics.

`dvc exp show` compares experiments while their refs exist; the report needs them as plain files in
git, so a finished run is saved with `prpg results save NAME` (after `dvc repro` or `dvc exp run`):

    reports/results/<name>/evaluate.json   reports/metrics/evaluate.json of the run
    reports/results/<name>/instances.csv   per-instance metrics
    reports/results/<name>/train_log.csv   contrastive training curves
    reports/results/<name>/params.json     what the run was: dataset, backbone, method, CFG, loss, ...

One experiment over many instances may be run in parts (one per machine, cluster job or day),
each on its own `run.instances`: `prpg results save NAME --part P` writes the same four files under
reports/results/<name>/parts/<P>/, and the report reads the parts as one result over all their
instances (prpg.report.merge_parts: same params but the instances, disjoint instances).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from prpg.core.atomic import atomic_dir, write_json_atomic
from prpg.core.params import load_params

METRICS_DIR = Path("reports/metrics")
RESULTS_DIR = Path("reports/results")
FILES = ("evaluate.json", "instances.csv", "train_log.csv")


def method_name(sources: tuple[str, ...], masked: bool, negatives: str) -> str:
    """The paper's names for the positive sets (docs/protocol.md §4.2): real, (masked) dreambooth, cut_paste, combined; toybox's
    oracle sources: oracle (oracle positives and negatives), oracle_positives (with the generated negatives).
    Other negatives than the generated ones are named after a '+'."""
    db = "masked_dreambooth" if masked else "dreambooth"
    names = {("real",): "real", ("dreambooth_filtered",): db, ("dreambooth",): f"{db}_unfiltered",
             ("cut_paste",): "cut_paste", ("cut_paste", "dreambooth_filtered"): "combined",
             ("oracle",): "oracle_positives"}
    name = names.get(tuple(sorted(sources)), "+".join(sorted(sources)))
    if negatives == "generated":
        return name
    return "oracle" if (name, negatives) == ("oracle_positives", "oracle") else f"{name}+{negatives}_negatives"


def run_params(params_file: str | Path = "params.yaml") -> dict:
    """The facts of the run that the report groups by, read from the validated params."""
    from prpg.core.models import weights_fingerprint

    p = load_params(params_file)
    return {
        "dataset": p["common"].dataset,
        "backbone": p["models"].backbone,
        "generator": p["models"].generator,
        # Which weights: a retrained toybox model keeps its path, and parts run with other weights must not merge.
        "generator_weights": weights_fingerprint(p["models"].generator),
        "backbone_weights": weights_fingerprint(p["models"].backbone),
        "method": method_name(p["train"].sources, p["personalize"].masked, p["train"].negatives),
        "sources": list(p["train"].sources),
        "masked": p["personalize"].masked,
        "guidance": p["synthesize"].positives.guidance,
        "loss": p["train"].loss,
        "num_real": None,  # every train image of the instance (the paper's ~3)
        "instances": sorted(p["run"].instances),
    }


def save_result(name: str, description: str = "", headline: bool = False, metrics_dir: Path = METRICS_DIR,
                results_dir: Path = RESULTS_DIR, params_file: str | Path = "params.yaml",
                part: str | None = None) -> Path:
    """Snapshot the current run's tracked metrics as reports/results/<name>/ (replacing it atomically),
    or as reports/results/<name>/parts/<part>/, one part of a result run over several instance sets."""
    missing = [f for f in FILES if not (Path(metrics_dir) / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{metrics_dir}: no {', '.join(missing)}; run the pipeline first "
                                "(`dvc repro` or `dvc exp run`), then save its result")
    for what, value in (("result name", name), ("part name", part)):
        if value is not None and (not value or "/" in value or value.startswith(".")):
            raise ValueError(f"{what} {value!r}: use a plain folder name such as 'toybox-cfg5'")
    folder = Path(results_dir) / name
    whole = [f for f in FILES if (folder / f).is_file()]
    if part is not None and whole:
        raise ValueError(f"{folder} holds a whole result ({', '.join(whole)}), not parts; save this run under "
                         "another name, or move that result to parts/<P>/ first")
    if part is None and (folder / "parts").is_dir():
        raise ValueError(f"{folder} is saved in parts ({folder / 'parts'}); save this run with --part P")
    target = folder if part is None else folder / "parts" / part
    with atomic_dir(target) as tmp:
        for f in FILES:
            shutil.copy2(Path(metrics_dir) / f, tmp / f)
        write_json_atomic(tmp / "params.json", {**run_params(params_file), "description": description,
                                                "headline": headline})
    return target
