"""Statistical power of the synthetic cohort: its class signals are measured directly, on enough patients that
chance cannot pass the bands, without running the demo.

Margins. For n1 mutant and n2 wildtype patients, an uninformative score has AUC 0.5 with standard error
SE0 = sqrt((n1 + n2 + 1) / (12 n1 n2)) (Mann-Whitney null; Hanley & McNeil 1982 at A = 0.5); chance exceeds
0.5 + 2.33 SE0 less than 1 % of the time. An informative score with true AUC A has the Hanley-McNeil SE
sqrt((A(1-A) + (n1-1)(Q1 - A^2) + (n2-1)(Q2 - A^2)) / (n1 n2)), Q1 = A / (2 - A), Q2 = 2 A^2 / (1 + A);
bands around an expected AUC are at least 3 of those wide, so a correct generator stays inside them for any
seed (the seeds are fixed anyway) while a trivial or absent signal cannot.
"""
import numpy as np
import pytest
from scipy import ndimage
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from slidestream.engine.synthetic import AGE, SIGNAL, draw_patients, render, round_fraction


def se_null(n1: int, n2: int) -> float:
    return float(np.sqrt((n1 + n2 + 1) / (12 * n1 * n2)))


def se_hanley_mcneil(a: float, n1: int, n2: int) -> float:
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    return float(np.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n2 - 1) * (q2 - a * a)) / (n1 * n2)))


def nuclei_per_area(img: np.ndarray) -> float:
    """A hand-crafted patient feature: connected dark (haematoxylin) blobs per dark pixel, i.e. 1 / mean nucleus
    size; small round nuclei (mutant-like) give more blobs for the same nuclear area."""
    dark = img[..., 0] < 162  # half-way between the eosin (236) and haematoxylin (88) red levels
    return ndimage.label(dark)[1] / max(int(dark.sum()), 1)


@pytest.fixture(scope="module")
def cohort_features():
    """120 patients (60 per class), one 384 x 384 field at 10x each, as the demo's cohort renders them (~4 s)."""
    labels = np.arange(120) % 2
    feats = np.array([nuclei_per_area(render((384, 384), int(y), seed=i, mpp=1.0, full=True, subtle=True))
                      for i, y in enumerate(labels)])
    return labels, feats


def test_age_alone_scores_the_papers_auc():
    """Ages per class from Table 5 give an age-only AUC of about 0.73 (Table 3). Normal theory: AUC =
    Phi((55.5 - 44.2) / sqrt(13.3^2 + 12.7^2)) = 0.730. On 4000 patients the Hanley-McNeil SE is 0.008; the
    band +-0.03 is ~4 SE, and far from chance (SE0 = 0.009: age carrying no signal scores 0.50 +- 0.03)."""
    labels, ages = draw_patients(4000, seed=0)
    auc = roc_auc_score(labels, -ages)  # younger = more likely mutant
    expected = norm.cdf((AGE[0][0] - AGE[1][0]) / np.hypot(AGE[0][1], AGE[1][1]))
    assert abs(expected - 0.730) < 0.005
    assert 3 * se_hanley_mcneil(expected, 2000, 2000) < 0.03
    assert abs(auc - expected) < 0.03, auc
    assert ages.min() >= 18 and ages.max() <= 90


def test_image_phenotype_overlaps_between_classes():
    """The per-patient phenotype the slides are drawn from: a perfect reader of it reaches Phi(2 SIGNAL / sqrt 2)
    (0.91), not 1.0. 2000 patients: SE 0.006, band +-0.025."""
    rng = np.random.default_rng(0)
    labels = np.arange(2000) % 2
    frac = np.array([round_fraction(int(y), rng) for y in labels])
    expected = norm.cdf(2 * SIGNAL / np.sqrt(2))
    assert 0.85 < expected < 0.95
    assert abs(roc_auc_score(labels, frac) - expected) < 0.025


def test_rendered_signal_is_real_but_subtle(cohort_features):
    """A hand-crafted feature on the rendered images separates the classes, but not perfectly: AUC in 0.80-0.97 on
    120 patients. Chance: SE0 = 0.053, so the floor 0.80 is 5.7 SE0 above 0.5 (a random feature passes with
    p < 1e-8, far under 1 %); expected ~0.90 with HM SE 0.028, so the band is > 3.5 SE either side. The textbook
    one-shape-per-class slides (``subtle=False``) score 1.0 and fail the ceiling."""
    labels, feats = cohort_features
    auc = roc_auc_score(labels, feats)
    assert 0.5 + 2.33 * se_null(60, 60) < 0.80
    assert 0.80 <= auc <= 0.97, auc


def test_shuffled_labels_fall_to_chance(cohort_features):
    """The same features against permuted labels: within 0.5 +- 2.58 SE0 (0.5 +- 0.14), as chance must be (99 %)."""
    labels, feats = cohort_features
    aucs = [roc_auc_score(np.random.default_rng(s).permutation(labels), feats) for s in range(5)]
    assert all(abs(a - 0.5) <= 2.58 * se_null(60, 60) for a in aucs), aucs
