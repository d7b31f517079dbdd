"""Do evaluate's 95 % intervals hold the true value 95 % of the time? (engine/evaluate.py; bench/ci_coverage.py
measures the full table.) The percentile bootstrap covered a 40-patient test set's sensitivity 86 % of the time
and its AUC 90 % (about 8 mutants : 32 wildtypes), and showed [0.000, 0.000], [1.000, 1.000] or [0.500, 0.500] as
intervals; now Wilson score intervals (sensitivity, specificity, accuracy) and BCa bootstrap (AUC)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score

from slidestream.engine import evaluate as ev


def _table(y, p):
    n = len(y)
    return {"patient_id": [f"p{i}" for i in range(n)], "label": np.asarray(y), "age": np.full(n, 50.0),
            "split": ["test"] * n, "image_prob": np.asarray(p, float)}


def test_intervals_cover_the_true_value_at_40_patients():
    """400 simulated test sets of 40 patients, labels ~ Bernoulli(0.2) (about 8 mutants; sets with < 2 of a
    class redrawn), binormal scores (mutant N(1.466, 1), wildtype N(0, 1): true AUC Phi(1.466 / sqrt 2) = 0.850),
    a fixed threshold at score 0.8 (true sensitivity 0.747): each through ``evaluate`` itself.

    Margin: a coverage estimated from R = 400 sets has binomial standard error sqrt(.95 * .05 / 400) = 1.09
    points at the nominal 95 %. The floor is 95 - 3 SE = 91.7 %: an interval with the nominal coverage falls
    below it with probability ~0.1 % (and the seeds are fixed, so the test is deterministic). The old percentile
    bootstrap measured 86 % (sensitivity) and 90 % (AUC) here (bench/ci_coverage.py, 2000 sets): 5 and 1.6 SE
    below the floor, and on these 400 sets 87.5 % at the lowest; Wilson measures 97 % and BCa 94 % (2000 sets;
    97 % and 95.5 % on these 400)."""
    rng = np.random.default_rng(2026)
    d, c, reps = 1.466, 0.8, 400
    true = {"sensitivity": 1 - norm.cdf(c - d), "auc": norm.cdf(d / math.sqrt(2))}
    hit = dict.fromkeys(true, 0)
    for r in range(reps):
        while True:
            y = (rng.random(40) < 0.2).astype(int)
            if 2 <= y.sum() <= 38:
                break
        p = norm.cdf(rng.normal(size=40) + d * y)
        ci = ev.evaluate(_table(y, p), threshold=float(norm.cdf(c)), bootstrap=1000, seed=r)["test"]["image"]["ci"]
        for m in true:
            hit[m] += ci[m] is not None and ci[m][0] <= true[m] <= ci[m][1]
    floor = 0.95 - 3 * math.sqrt(0.95 * 0.05 / reps)
    assert min(hit.values()) / reps >= floor, {m: h / reps for m, h in hit.items()}


def test_wilson_and_jackknife_match_independent_computations():
    for k, n in ((0, 20), (3, 10), (20, 20), (7, 9), (1, 2)):
        want = binomtest(k, n).proportion_ci(method="wilson")
        assert ev.wilson(k, n) == pytest.approx([want.low, want.high], abs=1e-12)
    rng = np.random.default_rng(0)
    y = np.array([1, 1, 0, 0] + list(rng.integers(0, 2, 21)))
    p = np.round(rng.random(25), 1)  # ties
    loo = [roc_auc_score(np.delete(y, i), np.delete(p, i)) for i in range(25)]
    np.testing.assert_allclose(ev.jackknife_auc(y, p), loo, atol=1e-12)


def test_threshold_above_every_score_gives_a_wilson_interval_not_zero_width():
    """Every patient called wildtype: sensitivity 0 of 10 was shown as 0.000 [0.000, 0.000], as if 0 % were
    certain; Wilson gives [0, 0.278]."""
    y = [1] * 10 + [0] * 10
    p = np.linspace(0.05, 0.6, 20)
    m = ev.evaluate(_table(y, p), threshold=0.9, bootstrap=200)["test"]["image"]
    assert m["sensitivity"] == 0.0 and m["specificity"] == 1.0
    assert m["ci"]["sensitivity"][0] == 0.0 and m["ci"]["sensitivity"][1] == pytest.approx(0.2775, abs=1e-4)
    assert m["ci"]["specificity"][1] == 1.0 and m["ci"]["specificity"][0] == pytest.approx(0.7225, abs=1e-4)


@pytest.mark.parametrize("p,auc", [([0.5] * 20, 0.5), (list(np.linspace(0.01, 0.4, 10)) + list(np.linspace(0.6, 0.99, 10)), 1.0)])
def test_auc_with_no_spread_over_resamples_has_no_interval_and_a_note(p, auc):
    """All scores tied (AUC 0.5 by ties) or perfect separation (1.0): every resample has that AUC, and the
    percentile interval was [0.500, 0.500] / [1.000, 1.000], a certainty 20 patients cannot give; now null with a
    note saying why, in the report too."""
    y = [0] * 10 + [1] * 10
    m = ev.evaluate(_table(y, p), bootstrap=300)
    assert m["test"]["image"]["auc"] == auc and m["test"]["image"]["ci"]["auc"] is None
    assert any(n.startswith("test: no 95% interval for image AUC: every resample gives") for n in m["meta"]["notes"])
    for metric in ("sensitivity", "specificity", "accuracy"):
        lo, hi = m["test"]["image"]["ci"][metric]
        assert lo < hi
    assert f"| {auc:.3f} |" in ev.report_markdown(m)
    json.dumps({k: v for k, v in m.items() if k != "patients"}, allow_nan=False)


def test_two_or_three_patients_of_a_class_give_finite_nonzero_intervals():
    rng = np.random.default_rng(1)
    for n1 in (2, 3):
        y = [1] * n1 + [0] * 30
        p = np.clip(rng.normal(0.4, 0.2, len(y)) + 0.2 * np.array(y), 0.01, 0.99)
        m = ev.evaluate(_table(y, p), bootstrap=500)
        for metric, ci in m["test"]["image"]["ci"].items():
            assert ci is not None and all(np.isfinite(ci)) and ci[0] < ci[1], (n1, metric, ci)
            assert ci[0] <= m["test"]["image"][metric] <= ci[1] or metric == "auc"
        json.dumps({k: v for k, v in m.items() if k != "patients"}, allow_nan=False)
