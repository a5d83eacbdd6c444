"""The report stage: tables against hand computation, the paper's published constants, clear errors,
deterministic figures, and the notebook end to end on small hand-made tracked files."""

from __future__ import annotations

import json
import math
import re
import shutil
import uuid
from pathlib import Path

import jupytext
import nbformat
import pandas as pd
import yaml
import pytest

from prpg import report

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("in_distribution", "pose", "distractors", "pose_and_distractors")


def summary(metrics: dict, half: float = 0.05, per_split: dict | None = None, n: int = 4,
            instance_split: str = "test") -> dict:
    """evaluate.json for {task: {model: mean}}, each CI = mean ± half (hand-checkable)."""
    return {"n_instances": n, "instance_split": instance_split, "metrics": metrics,
            "ci95": {t: {m: [v - half, v + half] for m, v in ms.items()} for t, ms in metrics.items()},
            "per_split": per_split or {}, "n": {t: {m: n for m in ms} for t, ms in metrics.items()}}


def instances_csv(s: dict) -> pd.DataFrame:
    """Two test instances per category whose mean is the summary's mean (±0.02), plus one val."""
    rows = []
    members = [("mug_00", "mug", "test", 0.02), ("mug_01", "mug", "test", -0.02),
               ("shoe_00", "shoe", "val", 0.3)]
    for inst, cat, split, d in members:
        for test_split, tasks in [("all", s["metrics"]), *s["per_split"].items()]:
            for task, by_model in tasks.items():
                for model, v in by_model.items():
                    rows.append({"instance": inst, "category": cat, "instance_split": split,
                                 "test_split": test_split, "task": task, "model": model,
                                 "value": min(max(v + d, 0), 1)})
    return pd.DataFrame(rows)


def train_log(instances=("mug_00", "mug_01"), steps=30) -> pd.DataFrame:
    return pd.DataFrame([{"instance": i, "step": s, "epoch": s // 10, "loss": 2.0 / (1 + s + k),
                          "accuracy": min(1.0, 0.5 + s / 60)}
                         for k, i in enumerate(instances) for s in range(steps)])


def write_run(folder: Path, s: dict, params: dict | None = None, log: bool = True) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "evaluate.json").write_text(json.dumps(s))
    instances_csv(s).to_csv(folder / "instances.csv", index=False)
    if log:
        train_log().to_csv(folder / "train_log.csv", index=False)
    if params is not None:
        (folder / "params.json").write_text(json.dumps(params))
    return folder


def params(dataset="pods", backbone="dinov2_vitb14", method="masked_dreambooth", guidance=5.0, headline=False,
           loss="infonce", num_real=None):
    return {"dataset": dataset, "backbone": backbone, "method": method, "sources": [], "masked": True,
            "guidance": guidance, "loss": loss, "num_real": num_real, "headline": headline,
            "description": "fixture"}


def pods_splits(base: float) -> dict:
    # ID, Pose, Distractors, Both = base + 0.30, +0.20, +0.10, +0.00 for both models (pretrained - 0.15)
    return {s: {"classification": {"pretrained": base + 0.15 - 0.1 * k, "personalized": base + 0.3 - 0.1 * k}}
            for k, s in enumerate(SPLITS)}


HEAD = {"classification": {"pretrained": 0.30, "personalized": 0.45},
        "retrieval": {"pretrained": 0.70, "personalized": 0.80},
        "detection": {"pretrained": 0.10, "personalized": 0.12},
        "segmentation": {"pretrained": 0.08, "personalized": 0.11}}


def make_results(root: Path) -> Path:
    """Four committed experiments: the PODS headline (masked DB, CFG 5), the same at CFG 4, real images
    only, and a toybox headline without test splits."""
    write_run(root / "pods-db", summary(HEAD, per_split=pods_splits(0.45)), params(headline=True))
    write_run(root / "pods-db-cfg4", summary({"classification": {"pretrained": 0.30, "personalized": 0.41},
                                              "retrieval": {"pretrained": 0.70, "personalized": 0.76}},
                                             half=0.04, per_split=pods_splits(0.41)), params(guidance=4))
    write_run(root / "pods-real", summary({"classification": {"pretrained": 0.30, "personalized": 0.35}},
                                          per_split=pods_splits(0.35)), params(method="real"), log=False)
    write_run(root / "toybox-db", summary({"classification": {"pretrained": 0.50, "personalized": 0.70},
                                           "retrieval": {"pretrained": 0.60, "personalized": 0.66}}, half=0.1,
                                          instance_split="all"),
              params(dataset="toybox", backbone="toybox", headline=True))
    return root


@pytest.fixture
def results(tmp_path):
    return report.load_results(make_results(tmp_path / "results"))


# ----------------------------------------------------------------------------------------------- loading

def test_the_report_needs_no_model_library():
    """The report regenerates from tracked metrics alone: importing it (parts merging included) loads
    neither torch nor tqdm's notebook widgets (whose missing-ipywidgets warning would land in the HTML)."""
    import subprocess
    import sys

    code = ("import sys, prpg.report; "
            "print(sorted(m for m in ('torch', 'tqdm.auto', 'tqdm.notebook', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_load_results(results, tmp_path):
    assert [r.name for r in results] == ["pods-db", "pods-db-cfg4", "pods-real", "toybox-db"]
    assert results[0].params["headline"] and results[0].train_log is not None and results[2].train_log is None
    assert set(results[0].instances.columns) == {"instance", "category", "instance_split", "test_split",
                                                 "task", "model", "value"}
    assert report.load_results(tmp_path / "absent") == []
    (tmp_path / "empty").mkdir()
    assert report.load_results(tmp_path / "empty") == []


def test_incomplete_result_names_folder_and_file(tmp_path):
    root = make_results(tmp_path / "results")
    (root / "pods-real" / "params.json").unlink()
    with pytest.raises(report.ReportError, match=r"pods-real.*missing params\.json"):
        report.load_results(root)
    (root / "pods-real" / "params.json").write_text(json.dumps({"dataset": "pods"}))
    with pytest.raises(report.ReportError, match=r"pods-real.*params\.json: missing backbone, method"):
        report.load_results(root)
    with pytest.raises(report.ReportError, match=r"nowhere: missing evaluate\.json, instances\.csv"):
        report.load_run(tmp_path / "nowhere")


def _part(folder: Path, per_instance: list[dict], p: dict, synthetic: dict) -> None:
    """A part as prpg results save writes it: 08_aggregate's evaluate.json and instances.csv (%.6f)."""
    from prpg.aggregate import aggregate

    folder.mkdir(parents=True)
    s = {**aggregate(per_instance, instance_split="test", n_boot=1000, seed=0), "instance_split": "test",
         "synthetic_positives": synthetic}
    (folder / "evaluate.json").write_text(json.dumps(s))
    rows = [{"instance": r["instance"], "category": r["category"], "instance_split": r["instance_split"],
             "test_split": split, "task": task, "model": model, "value": v}
            for r in per_instance for split, tasks in [("all", r["metrics"]), *r["per_split"].items()]
            for task, by_model in tasks.items() for model, v in by_model.items()]
    pd.DataFrame(rows).to_csv(folder / "instances.csv", index=False, float_format="%.6f")
    train_log([r["instance"] for r in per_instance]).to_csv(folder / "train_log.csv", index=False)
    (folder / "params.json").write_text(json.dumps({**p, "instances": [r["instance"] for r in per_instance]}))


def _instance_results(names, rng) -> list[dict]:
    def table():  # 6-decimal values: instances.csv keeps them exactly
        return {t: {m: round(float(rng.uniform(0, 1)), 6) for m in ("pretrained", "personalized")}
                for t in ("classification", "retrieval")}
    return [{"instance": n, "category": n.split("_")[0], "instance_split": "test", "metrics": table(),
             "per_split": {"pose": table(), "distractors": table()}} for n in names]


def test_a_result_saved_in_parts_is_the_result_over_all_their_instances(tmp_path):
    import numpy as np

    from prpg.aggregate import aggregate

    everyone = _instance_results([f"{c}_{i:02d}" for i in (6, 7) for c in ("mug", "shoe", "tote")],
                                 np.random.default_rng(0))
    folder = tmp_path / "results" / "toybox-real"
    p = params(dataset="toybox", backbone="toybox", method="real")
    _part(folder / "parts" / "06", everyone[:3], p, {"mean": 2.0, "min": 1, "instances_without": 0})
    _part(folder / "parts" / "07", everyone[3:], p, {"mean": 5.0, "min": 0, "instances_without": 1})
    merged, = report.load_results(tmp_path / "results")
    whole = aggregate(everyone, instance_split="test", n_boot=1000, seed=0)
    assert merged.name == "toybox-real" and merged.summary["n_instances"] == 6
    for key in ("metrics", "ci95", "per_split", "n"):
        assert merged.summary[key] == whole[key], key
    assert merged.summary["synthetic_positives"] == {"mean": 3.5, "min": 0, "instances_without": 1}
    assert merged.params["parts"] == ["06", "07"] and len(merged.params["instances"]) == 6
    assert len(merged.instances) == 6 * 3 * 2 * 2 and merged.train_log.instance.nunique() == 6
    assert report.experiments_table([merged]).loc["toybox-real", "instances"] == 6


def test_parts_of_one_result_must_be_one_experiment_on_other_instances(tmp_path):
    import numpy as np

    rng = np.random.default_rng(1)
    folder = tmp_path / "results" / "toybox-x"
    p = params(dataset="toybox", backbone="toybox", method="real")
    _part(folder / "parts" / "a", _instance_results(["mug_06"], rng), p, {"mean": 1, "min": 1, "instances_without": 0})
    _part(folder / "parts" / "b", _instance_results(["mug_07"], rng), {**p, "guidance": 4.0},
          {"mean": 1, "min": 1, "instances_without": 0})
    with pytest.raises(report.ReportError, match=r"parts/b/params\.json and .*parts/a/params\.json differ in guidance"):
        report.load_results(tmp_path / "results")
    shutil.rmtree(folder / "parts" / "b")
    _part(folder / "parts" / "b", _instance_results(["mug_06"], rng), p, {"mean": 1, "min": 1, "instances_without": 0})
    with pytest.raises(report.ReportError, match=r"instance mug_06 is in two parts of result toybox-x"):
        report.load_results(tmp_path / "results")


# ----------------------------------------------------------------------------------------------- tables

def test_run_and_split_tables():
    s = summary(HEAD, per_split=pods_splits(0.45))
    t = report.run_table(s)
    assert list(t.index) == ["classification", "retrieval", "detection", "segmentation"]
    assert t.loc["classification", "personalized"] == pytest.approx(45.0)
    assert t.loc["classification", "personalized ±"] == pytest.approx(5.0)
    assert t.loc["segmentation", "gain"] == pytest.approx(3.0)
    assert t.loc["retrieval", "n"] == 4
    assert report.display_frame(t).loc["classification", "pretrained"] == "30.0 ± 5.0"
    sp = report.split_table(s)
    assert list(sp.columns) == ["task", "model", "ID", "Pose", "Distractors", "Both", "All", "All ±"]
    row = sp.loc["Cls · personalized"]
    assert [row[c] for c in ("ID", "Pose", "Distractors", "Both")] == pytest.approx([75.0, 65.0, 55.0, 45.0])
    assert math.isnan(sp.loc["Ret mAP · personalized", "ID"])  # no per-split retrieval in the fixture
    # A dataset without split annotations: only the overall column.
    assert list(report.split_table(summary(HEAD)).columns) == ["task", "model", "All", "All ±"]


def test_category_table():
    s = summary(HEAD)
    cats = report.category_table(instances_csv(s), "test")
    assert list(cats.index) == ["mug"] and cats.loc["mug", "instances"] == 2  # the val shoe is left out
    assert cats.loc["mug", "Cls personalized"] == pytest.approx(45.0)
    assert list(report.category_table(instances_csv(s), "all").index) == ["mug", "shoe"]


def test_main_table_headline_only(results):
    main = report.main_table(results)
    assert list(main.index) == ["toybox", "toybox-P", "DINOv2", "DINOv2-P"]
    assert list(main.columns[:4]) == ["backbone", "model", "Cls PODS", "Cls PODS ±"]
    assert main.loc["DINOv2-P", "Cls PODS"] == pytest.approx(45.0)  # the headline, not CFG 4's 41
    assert main.loc["DINOv2-P", "Cls PODS ±"] == pytest.approx(5.0)
    assert main.loc["toybox-P", "Ret mAP toybox"] == pytest.approx(66.0)
    assert main.loc["toybox-P", "Ret mAP toybox ±"] == pytest.approx(10.0)
    assert math.isnan(main.loc["toybox", "Cls PODS"])
    assert report.display_frame(main).loc["DINOv2", "Seg PODS"] == "8.0 ± 5.0"
    assert report.main_table([]).empty


def test_two_headlines_for_one_cell_is_an_error(results):
    results[1].params["headline"] = True
    with pytest.raises(report.ReportError, match="pods-db and pods-db-cfg4"):
        report.main_table(results)


def test_paper_constants():
    paper = report.paper_table()
    assert paper.loc["DINOv2 [paper]", "Cls PODS"] == 31.0
    assert paper.loc["DINOv2-P (DB) [paper]", "Ret DF2"] == 64.4
    assert paper.loc["MAE-P (DB) [paper]", "Ret PODS"] == 30.3
    assert paper.loc["CLIP-P (DB) [paper]", "Cls Dogs"] == 65.4
    assert paper.loc["MAE [paper]", "Seg Dogs"] == 1.1
    assert (paper["source"] == "paper").all() and paper.shape == (6, 3 + 12)
    m = report.paper_method_table()
    assert m.loc["combined [paper]", "Both"] == 56.0 and m.loc["real [paper]", "ID"] == 77.0
    assert report.paper_scaling_table().loc["real+synthetic", "num_real=20"] == 76.2


def test_with_paper_interleaves_real_datasets_only(results):
    both = report.with_paper(report.main_table(results), report.paper_table())
    assert list(both.index) == ["toybox", "toybox-P", "DINOv2", "DINOv2 [paper]", "DINOv2-P",
                                "DINOv2-P (DB) [paper]"]
    assert list(both["source"]) == ["ours", "ours", "ours", "paper", "ours", "paper"]
    assert both.loc["DINOv2-P (DB) [paper]", "Cls PODS"] == 42.9
    assert math.isnan(both.loc["DINOv2-P (DB) [paper]", "Cls toybox"])
    assert "Cls DF2" not in both.columns  # only our datasets' columns
    shown = report.display_frame(both)
    assert shown.loc["DINOv2-P (DB) [paper]", "Cls PODS"] == "42.9"
    assert shown.loc["DINOv2-P", "Cls PODS"] == "45.0 ± 5.0"


def test_method_table(results):
    t = report.method_table(results)
    pods = t[t["dataset"] == "pods"]
    assert list(pods.index) == ["pretrained", "real", "masked_dreambooth (pods-db)",
                                "masked_dreambooth (pods-db-cfg4)"]
    assert pods.loc["pretrained", "result"] == "pods-db"  # the headline result's pretrained row
    assert [pods.loc["real", c] for c in ("ID", "Pose", "Distractors", "Both", "All")] == pytest.approx(
        [65.0, 55.0, 45.0, 35.0, 35.0])
    assert pods.loc["pretrained", "ID"] == pytest.approx(60.0)
    assert pods.loc["masked_dreambooth (pods-db-cfg4)", "All ±"] == pytest.approx(4.0)
    toy = t[t["dataset"] == "toybox"]
    assert list(toy.index) == ["pretrained", "masked_dreambooth"] and toy["ID"].isna().all()
    assert report.SYNTHETIC not in t.columns  # no result tracked its positives
    assert report.method_table([]).empty
    results[2].summary["synthetic_positives"] = {"mean": 2.6, "min": 0, "instances_without": 1}
    t = report.method_table(results)
    assert list(t.columns)[-1] == report.SYNTHETIC and t.loc["real", report.SYNTHETIC] == pytest.approx(2.6)
    assert t.loc[["pretrained", "masked_dreambooth (pods-db)"], report.SYNTHETIC].isna().all()


def test_gain_table_pairs_each_instances_models(results):
    from prpg.aggregate import bootstrap_ci

    t = report.gain_table(results)
    assert t.loc["pods-db", "Cls gain"] == pytest.approx(15.0) and t.loc["pods-db", "Cls gain ±"] == pytest.approx(0)
    assert t.loc["pods-db", "Cls gained"] == "2/2" and t.loc["pods-db", "instances"] == 2  # test instances only
    assert t.loc["toybox-db", "Ret mAP gained"] == "3/3"  # instance_split "all": the val instance counts too
    rows = [{"instance": f"i{k}", "category": "mug", "instance_split": "test", "test_split": "all",
             "task": "classification", "model": m, "value": v}
            for k, (pre, gain) in enumerate([(0.30, 0.10), (0.40, -0.05), (0.20, 0.03)])
            for m, v in (("pretrained", pre), ("personalized", pre + gain))]
    r = report.Result("hand", params(method="real"), summary(HEAD), pd.DataFrame(rows), None)
    row = report.gain_table([r]).loc["hand"]
    low, high = bootstrap_ci([10.0, -5.0, 3.0])
    assert row["Cls gain"] == pytest.approx(8 / 3) and row["Cls gained"] == "2/3"
    assert row["Cls gain ±"] == pytest.approx((high - low) / 2) and "Ret gain" not in row
    assert report.gain_table([]).empty


def test_sweep_table(results):
    g = report.sweep_table(results, "guidance")
    assert list(g.index) == ["guidance=4", "guidance=5"]  # pods masked DB only: other groups have one value
    assert list(g["result"]) == ["pods-db-cfg4", "pods-db"]
    assert g.loc["guidance=4", "Cls"] == pytest.approx(41.0)
    assert g.loc["guidance=4", "Cls ±"] == pytest.approx(4.0)
    assert g.loc["guidance=5", "Det"] == pytest.approx(12.0) and math.isnan(g.loc["guidance=4", "Det"])
    assert report.sweep_table(results, "loss").empty
    results[2].params["loss"] = "hinge"
    results[2].params["method"] = "masked_dreambooth"
    loss = report.sweep_table(results, "loss")
    assert list(loss.index) == ["loss=hinge", "loss=infonce (pods-db)", "loss=infonce (pods-db-cfg4)"]


def test_write_tables(results, tmp_path):
    main = report.with_paper(report.main_table(results), report.paper_table())
    md, csv = report.write_tables(main, "main", tmp_path / "tables", hide=("backbone", "model"),
                                  title="**Main**")
    text = md.read_text()
    assert text.startswith("**Main**\n\n| row | source | Cls PODS |")
    assert "| DINOv2-P | ours | 45.0 ± 5.0 |" in text and "backbone" not in text
    back = pd.read_csv(csv, index_col="row")
    assert back.loc["DINOv2-P", "Cls PODS ±"] == pytest.approx(5.0)
    assert back.loc["DINOv2-P", "backbone"] == "dinov2_vitb14"
    md, _ = report.write_tables(report.method_table([]), "empty", tmp_path / "tables")
    assert "no rows" in md.read_text()
    assert not list((tmp_path / "tables").glob(".*"))  # no temp files left


def test_figures_written_and_deterministic(results, tmp_path):
    figs = {
        "gains": report.plot_gains(results[0].summary),
        "methods": report.plot_methods(report.method_table(results)),
        "sweep": report.plot_sweep(report.sweep_table(results, "guidance"), "guidance"),
        "sweep_empty": report.plot_sweep(report.sweep_table(results, "loss"), "loss"),
        "methods_empty": report.plot_methods(report.method_table([])),
        "training": report.plot_training_curves(results[0].train_log),
        "training_none": report.plot_training_curves(None),
    }
    for name, fig in figs.items():
        p = report.save_figure(fig, tmp_path / f"{name}.png")
        data = p.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000, name
        assert b"Software" not in data
    again = report.save_figure(report.plot_gains(results[0].summary), tmp_path / "again.png")
    assert again.read_bytes() == (tmp_path / "gains.png").read_bytes()


# ----------------------------------------------------------------------------------------------- notebook

TABLES = ("run_summary", "run_splits", "run_categories", "experiments", "main_table", "paper_main", "methods",
          "gains", "paper_methods", "sweep_guidance", "sweep_loss", "sweep_num_real", "paper_scaling")
FIGURES = ("gains", "training", "methods", "sweep_guidance", "sweep_loss", "sweep_num_real")


POD_COMMON = {"seed": 0, "device": "cpu", "threads": 2, "dataset": "pods", "data_root": "data/pods",
              "data_source": "data/pods"}


def _repo(tmp_path: Path, with_results: bool, per_split: bool) -> Path:
    """A copy of the tracked inputs the report reads: markers, reports/metrics, reports/results."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "dvc.yaml").write_text("stages: {}\n")
    (repo / "params.yaml").write_text(yaml.safe_dump({"common": POD_COMMON}))
    write_run(repo / "reports/metrics", summary(HEAD, per_split=pods_splits(0.45) if per_split else None))
    if with_results:
        make_results(repo / "reports/results")
    else:
        (repo / "reports/results").mkdir()
    return repo


def _execute(repo: Path, out: Path) -> None:
    import papermill

    nb = jupytext.read(ROOT / "notebooks/09_report.py")
    papermill.execute_notebook(nb, str(out), kernel_name="python3", cwd=str(repo), progress_bar=False,
                               parameters={"common": POD_COMMON})


def test_notebook_runs_on_tracked_files(tmp_path):
    repo = _repo(tmp_path, with_results=True, per_split=True)
    _execute(repo, tmp_path / "09_report.ipynb")
    for stem in TABLES:
        assert all((repo / f"reports/tables/{stem}.{ext}").is_file() for ext in ("md", "csv")), stem
    for name in FIGURES:
        assert (repo / f"reports/figures/report_{name}.png").stat().st_size > 2000, name
    main = (repo / "reports/tables/main_table.md").read_text()
    assert "| DINOv2-P | 45.0 ± 5.0 |" in main and "| DINOv2-P (DB) [paper] | 42.9 |" in main
    assert "Pose" in (repo / "reports/tables/run_splits.md").read_text()
    html = report.export_html(tmp_path / "09_report.ipynb", tmp_path / "report.html")
    assert "Main table" in html.read_text() and "45.0 ± 5.0" in html.read_text()
    # Offline: no script, stylesheet or image is loaded from the network (figures are embedded PNGs).
    loads = re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"'\s>]+)""", html.read_text(), re.IGNORECASE)
    assert loads and not [u for u in loads if "http" in u or u.startswith("//")], loads
    assert "<img" in html.read_text() and all(u.startswith(("data:", "#")) for u in loads), loads
    assert "cdnjs" not in html.read_text() and report.remote_resources(html.read_text()) == []
    # A re-run draws new random cell ids (jupytext, papermill); the committed page must not change.
    nb = nbformat.read(str(tmp_path / "09_report.ipynb"), as_version=4)
    for cell in nb.cells:
        cell["id"] = uuid.uuid4().hex[:8]
    nbformat.write(nb, str(tmp_path / "rerun.ipynb"))
    again = report.export_html(tmp_path / "rerun.ipynb", tmp_path / "again.html")
    assert again.read_bytes() == html.read_bytes()


def test_notebook_runs_without_results_or_splits(tmp_path, monkeypatch, capsys):
    # Same cells, run in this process (a second kernel start would double this file's run time).
    repo = _repo(tmp_path, with_results=False, per_split=False)
    monkeypatch.chdir(repo / "reports")  # the first cell finds the root from below, as in JupyterLab
    nb = jupytext.read(ROOT / "notebooks/09_report.py")
    namespace: dict = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            exec(compile(cell.source, "09_report.py", "exec"), namespace)
    assert "no committed experiments yet" in capsys.readouterr().out
    for stem in TABLES:  # fixed outputs: every file exists even with nothing to compare
        assert (repo / f"reports/tables/{stem}.md").is_file(), stem
    for name in FIGURES:
        assert (repo / f"reports/figures/report_{name}.png").is_file(), name
    splits = pd.read_csv(repo / "reports/tables/run_splits.csv", index_col="row")
    assert list(splits.columns) == ["task", "model", "All", "All ±"]
    assert "no rows" in (repo / "reports/tables/main_table.md").read_text()


def test_remote_resources_finds_what_a_page_would_load_from_the_network():
    page = ('<script src="https://cdn.example/require.js"></script><link href=\'//cdn.example/a.css\'>'
            '<style>/* see https://example.org */ .x { background: url("http://cdn.example/bg.png") }</style>'
            '<script type="module">await import("https://cdn.example/mermaid.mjs")</script>'
            '<a href="#cell-1">local</a><img src="data:image/png;base64,AAAA"> text https://example.org')
    found = report.remote_resources(page)
    assert len(found) == 4 and all("cdn.example" in f for f in found)
