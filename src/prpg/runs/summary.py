"""`prpg summary`: the finished run's pretrained-vs-personalized table, from the tracked metrics alone
(reports/metrics/evaluate.json, which the aggregate stage writes), so it works for any finished run or
checked-out commit:

    Pretrained vs personalized: mean over 5 test instances ± 95 % CI, x100
    task              pretrained    personalized    gain   n
    classification    6.5 ±  3.3     7.1 ±  6.8     +0.6   5
    ...

± is half the width of the bootstrap CI (as in the report's tables, prpg.report). Retrieval is NDCG, the
paper's "Ret" column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from prpg.aggregate import HEADLINE

METRICS = Path("reports/metrics/evaluate.json")
REPORT = Path("reports/report.html")
MODELS = ("pretrained", "personalized")
LABELS = {"retrieval_ndcg": "retrieval NDCG"}


class SummaryError(ValueError):
    """The metrics file is missing or malformed; the message names it and what to do."""


def load_metrics(path: Path = METRICS) -> dict:
    """evaluate.json, checked for what the table reads: one clear error naming the file otherwise."""
    path = Path(path)
    redo = "run the pipeline first (`prpg repro` or `dvc repro`)"
    try:
        summary = json.loads(path.read_text())
    except FileNotFoundError:
        raise SummaryError(f"{path}: not found; {redo}") from None
    except json.JSONDecodeError as err:
        raise SummaryError(f"{path}: not valid JSON ({err}); regenerate it: `dvc repro aggregate`") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("metrics"), dict):
        raise SummaryError(f"{path}: no 'metrics' mapping (not what the aggregate stage writes); "
                           "regenerate it: `dvc repro aggregate`")
    tasks = [t for t in HEADLINE.values() if all(m in summary["metrics"].get(t, {}) for m in MODELS)]
    if not tasks:
        raise SummaryError(f"{path}: no task with both pretrained and personalized means (expected "
                           f"{', '.join(HEADLINE.values())}); regenerate it: `dvc repro aggregate`")
    return summary


def rows(summary: Mapping) -> list[dict]:
    """Per headline task present: means x100, CI half-widths x100 (nan without a CI), gain, n."""
    out = []
    for task in HEADLINE.values():
        means = summary["metrics"].get(task, {})
        if not all(m in means for m in MODELS):
            continue
        row = {"task": task}
        for m in MODELS:
            ci = summary.get("ci95", {}).get(task, {}).get(m)
            row[m] = 100 * float(means[m])
            row[f"{m} ±"] = 100 * (float(ci[1]) - float(ci[0])) / 2 if ci else math.nan
        row["gain"] = row["personalized"] - row["pretrained"]
        counts = summary.get("n", {}).get(task, {})
        row["n"] = min((int(counts[m]) for m in MODELS if m in counts), default=summary.get("n_instances"))
        out.append(row)
    return out


def _cell(mean: float, half: float) -> str:
    return f"{mean:5.1f}" + ("" if math.isnan(half) else f" ± {half:4.1f}")


def table(summary: Mapping) -> str:
    """The text table (the module docstring shows it)."""
    split = summary.get("instance_split", "")
    which = f"{summary.get('n_instances', '?')} {split + ' ' if split and split != 'all' else ''}instances"
    lines = [f"Pretrained vs personalized: mean over {which} ± 95 % CI, x100",
             f"{'task':<16}{'pretrained':>13}{'personalized':>15}{'gain':>8}{'n':>4}"]
    for r in rows(summary):
        lines.append(f"{LABELS.get(r['task'], r['task']):<16}{_cell(r['pretrained'], r['pretrained ±']):>13}"
                     f"{_cell(r['personalized'], r['personalized ±']):>15}{r['gain']:>+8.1f}{r['n']!s:>4}")
    return "\n".join(lines)


def summary_text(metrics: Path = METRICS, report: Path = REPORT) -> str:
    text = table(load_metrics(metrics))
    where = f"report: {report}" if Path(report).is_file() else f"report: not written yet ({report}: `dvc repro report`)"
    return f"{text}\n{where}"
