"""The demo pipeline end to end (real extraction runner) on a tiny cohort: every output a user is promised. No AUC
claims here: 6 test patients cannot support one (tests/test_power.py measures the cohort's signals on 120-4000
patients instead); the full demo's numbers are in the README."""
import inspect
import json
import re

import pytest

from slidestream.engine import demo, splits
from slidestream.engine.synthetic import draw_patients

TINY = dict(n_patients=24, size=(512, 384), mpp=1.0, epochs=2, bootstrap=0, log=None)  # 10x slides, ~20 s


def test_default_demo_has_at_least_40_test_patients():
    n = inspect.signature(demo.run).parameters["n_patients"].default
    sp = demo.demo_pipeline()["training"]["split"]
    labels, _ = draw_patients(n, seed=0)
    parts = splits.assign([f"P{i:03d}" for i in range(n)], labels.tolist(), sp["ratios"], sp["seed"])
    assert sum(v == "test" for v in parts.values()) >= 40


@pytest.mark.slow
def test_demo_writes_report_rocs_fusion_rows_and_heatmap(tmp_path):
    r = demo.run(tmp_path / "d", heatmap=True, **TINY)
    res = demo.results(r["metrics"])
    assert set(res) >= {"image", "age", "age+image"} and res["image"]["n"] == 6
    assert all(v["auc"] is None or 0 <= v["auc"] <= 1 for v in res.values())
    report = (tmp_path / "d" / "report" / "report.md").read_text()
    assert "| Age |" in report and "| Age & image |" in report
    for split in ("val", "test"):
        assert (tmp_path / "d" / "report" / f"roc_{split}.png").stat().st_size > 1000
    assert r["heatmap"] and (tmp_path / "d" / "heatmaps").is_dir()


@pytest.mark.slow
def test_demo_mil_runs_the_encoder_path(cli, tmp_path):
    """`slidestream demo --mil`: the same implementation as `slidestream mil demo` (engine.mil.demo) on the demo
    cohort, here 16 patients (a handful of val and test patients: outputs only, no AUC claim): morphometry features -> ABMIL ->
    evaluate -> report, and the demo's summary line."""
    code, out, err = cli("demo", "--mil", "--patients", 16, "--out", tmp_path / "d")
    assert code == 0, err
    assert re.search(r"test AUC \(\d+ patients\): .*image \d", out) and "report:" in out
    meta = json.loads((tmp_path / "d" / "mil" / "mil.json").read_text())
    assert meta["encoder"]["encoder"] == "morphometry" and meta["settings"]["patience"] == 5
    assert (tmp_path / "d" / "report" / "report.md").is_file() and (tmp_path / "d" / "features.zarr").is_dir()
    code, _, err = cli("demo", "--mil", "--gan", "--out", tmp_path / "e")
    assert code != 0 and "do not combine" in err
