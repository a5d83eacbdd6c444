"""`prpg summary` and the headline metrics file, against hand-made metrics."""

import json

import pytest

from prpg.aggregate import aggregate, headline
from prpg.cli import main
from prpg.runs.summary import SummaryError, load_metrics, rows, table

# Three instances, hand-computed: classification pretrained 0.2, 0.4, 0.6 (mean 0.4), personalized 0.5,
# 0.6, 0.7 (mean 0.6); retrieval NDCG 0.30 / 0.36 for every instance; no detection for one instance.
PER_INSTANCE = [
    {"instance": f"mug_0{i}", "instance_split": "test", "per_split": {},
     "metrics": {"classification": {"pretrained": pre, "personalized": per},
                 "retrieval_ndcg": {"pretrained": 0.30, "personalized": 0.36},
                 "retrieval": {"pretrained": 0.9, "personalized": 0.9},
                 **({"detection": {"pretrained": 0.1, "personalized": 0.05}} if i < 3 else {}),
                 "segmentation": {"pretrained": 0.02, "personalized": 0.04}}}
    for i, (pre, per) in enumerate([(0.2, 0.5), (0.4, 0.6), (0.6, 0.7)], 1)]


def test_headline_holds_per_task_means_and_gains_under_short_keys():
    summary = aggregate(PER_INSTANCE, n_boot=200, seed=0)
    assert headline(summary) == {"n": 3,
                                 "cls": {"pre": 0.4, "per": 0.6, "gain": 0.2},
                                 "ret": {"pre": 0.3, "per": 0.36, "gain": 0.06},
                                 "det": {"pre": 0.1, "per": 0.05, "gain": -0.05},
                                 "seg": {"pre": 0.02, "per": 0.04, "gain": 0.02}}
    # 13 numbers: what `dvc exp show` gets as columns
    flat = [v for k, v in headline(summary).items() if k == "n"] + \
           [x for k, d in headline(summary).items() if k != "n" for x in d.values()]
    assert len(flat) == 13


def test_summary_table_from_a_hand_made_metrics_file(tmp_path, capsys):
    metrics = {"n_instances": 3, "instance_split": "test",
               "metrics": {"classification": {"pretrained": 0.4, "personalized": 0.6},
                           "retrieval_ndcg": {"pretrained": 0.3, "personalized": 0.36},
                           "detection": {"pretrained": 0.1, "personalized": 0.05},
                           "segmentation": {"pretrained": 0.02, "personalized": 0.04}},
               "ci95": {"classification": {"pretrained": [0.2, 0.6], "personalized": [0.5, 0.7]},
                        "retrieval_ndcg": {"pretrained": [0.3, 0.3], "personalized": [0.36, 0.36]},
                        "detection": {"pretrained": [0.1, 0.1], "personalized": [0.05, 0.05]}},
               "n": {"detection": {"pretrained": 2, "personalized": 2}}}
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps(metrics))
    got = {r["task"]: r for r in rows(load_metrics(path))}
    assert list(got) == ["classification", "retrieval_ndcg", "detection", "segmentation"]
    cls = got["classification"]
    assert cls["pretrained"] == pytest.approx(40) and cls["pretrained ±"] == pytest.approx(20)  # (0.6 - 0.2) / 2
    assert cls["personalized"] == pytest.approx(60) and cls["personalized ±"] == pytest.approx(10)
    assert cls["gain"] == pytest.approx(20) and cls["n"] == 3
    assert got["detection"]["gain"] == pytest.approx(-5) and got["detection"]["n"] == 2
    assert got["segmentation"]["pretrained ±"] != got["segmentation"]["pretrained ±"]  # no CI: nan
    text = table(load_metrics(path)).splitlines()
    assert text[0] == "Pretrained vs personalized: mean over 3 test instances ± 95 % CI, x100"
    assert text[2].split() == ["classification", "40.0", "±", "20.0", "60.0", "±", "10.0", "+20.0", "3"]
    assert text[4].split() == ["detection", "10.0", "±", "0.0", "5.0", "±", "0.0", "-5.0", "2"]
    assert text[5].split() == ["segmentation", "2.0", "4.0", "+2.0", "3"]
    assert main(["summary", "--metrics", str(path), "--report", str(tmp_path / "report.html")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:-1] == text and out[-1].startswith(f"report: not written yet ({tmp_path / 'report.html'}")
    (tmp_path / "report.html").write_text("<html></html>")
    main(["summary", "--metrics", str(path), "--report", str(tmp_path / "report.html")])
    assert capsys.readouterr().out.splitlines()[-1] == f"report: {tmp_path / 'report.html'}"


def test_summary_bad_input_is_one_clear_error_naming_the_file(tmp_path, capsys):
    missing = tmp_path / "evaluate.json"
    with pytest.raises(SummaryError, match=r"evaluate.json: not found; run the pipeline first"):
        load_metrics(missing)
    missing.write_text("{nope")
    with pytest.raises(SummaryError, match=r"evaluate.json: not valid JSON .*dvc repro aggregate"):
        load_metrics(missing)
    missing.write_text(json.dumps({"metrics": {"classification": {"pretrained": 0.1}}}))
    with pytest.raises(SummaryError, match=r"evaluate.json: no task with both pretrained and personalized"):
        load_metrics(missing)
    assert main(["summary", "--metrics", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.strip() == f"prpg: error: {tmp_path / 'none.json'}: not found; run the pipeline " \
                                              "first (`prpg repro` or `dvc repro`)"
