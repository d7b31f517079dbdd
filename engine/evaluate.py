"""Patient-level evaluation of IDH predictions, laid out like Liu et al. 2020 (Tables 3 and 4, Fig. 4).

Input: one row per patient, ``patient_id,label,age,split,image_prob`` (label 1 = IDH-mutant, the positive class;
0 = IDH-wildtype, -1 or empty = unknown: left out of every metric, counted in ``meta.unlabeled`` and a note; split
train/val/test; image_prob = the patient's aggregated image probability of mutant).

* Predictors (paper, "Combining age- and image-based prediction"): ``image``; with a fusion plugin also its
  outputs, for ``age_gda`` ``age`` and ``age+image``. The fusion is fitted out of sample: on the *val* patients
  (default; their image scores come from a network that never trained on them), or on ``train`` when asked
  (in sample: near-perfect image scores there leave age almost no weight), never on test. Given a model
  bundle, its fitted fusion is used exactly as it is (``predict`` gives the same fused probabilities), also an
  out-of-fold one (``train --fusion-cv K``); evaluate itself fits no out-of-fold fusion (it has no fold networks).
* Metrics (paper, "Performance evaluation"): sensitivity, specificity, accuracy and ROC AUC, all from
  scikit-learn (``confusion_matrix``, ``accuracy_score``, ``roc_auc_score``, ``roc_curve``), on val and test
  (the bootstrap uses vectorized NumPy equivalents, tested against scikit-learn).
  A patient is called mutant when its probability is >= the threshold: a fixed one (0.5), or ``youden``:
  per predictor, the ROC point of the validation split maximizing sensitivity + specificity - 1 (equal
  maxima: the highest threshold), then applied unchanged to test (0.5 where undefined: a note, ``meta.threshold_fallback`` and the report say so).
* 95% confidence intervals (threshold and fitted fusion held fixed; ``bootstrap=0``: none): sensitivity,
  specificity and accuracy: Wilson score intervals of their patient counts (``wilson``); AUC: BCa bootstrap over
  patients (``bca``: bias-corrected and accelerated, acceleration from the leave-one-out AUCs, ``jackknife_auc``;
  ``np.percentile``'s linear interpolation; resamples of ``np.random.default_rng((seed, i))``, i = 0 val, 1 test,
  the same for every predictor of a split; a resample with one class only has no AUC and is skipped, and a note
  says from how many resamples the AUC intervals come; drawn in blocks of ``BLOCK`` indices, the same resamples
  as one draw, in bounded memory). The percentile bootstrap used before covered the true sensitivity of a
  40-patient test set with 20 % mutants 86 % of the time, its AUC 90 % (bench/ci_coverage.py). No interval (null, with a note)
  for a metric whose split holds fewer than 2 patients of a class it depends on (sensitivity: mutants;
  specificity: wildtypes; AUC: both), nor for an AUC every resample agrees on (perfect separation, tied scores).
* Age groups (paper, Table 4): < 55 and >= 55 years, by default on the test split (``age_group_splits``);
  the paper's Table 4 counts 68 patients, i.e. its validation and test patients together
  (``age_group_splits=("val", "test")``). Patients without an age are left out of the groups.
* Selection set: the patients that made a choice (val: best epoch when a bundle is given, Youden threshold,
  fusion fit) are named in ``meta.selection`` and the report, which labels their metrics as selection-set
  (optimistic) metrics; the test split makes no choice.

``meta.roc``: per split and predictor the ROC points (``fpr``, ``tpr``: scikit-learn's ``roc_curve``, collinear
points dropped, rounded to 6 decimals; none for a one-class split).

``evaluate()`` returns the dict written to ``metrics.json`` (plus ``patients``: patient_id, split, label, age and
one ``<predictor>_prob`` column per predictor, e.g. ``age+image_prob``);
``write_report()`` writes it with ``patients.csv``, ROC figures and a Markdown report that names the best
epoch, the threshold rule and the fusion's patients (split, n, ids digest). Undefined values (AUC of a
one-class split, sensitivity without mutants) are ``null``, with a line in ``meta.notes``.
"""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .cohort import MISSING, label_value
from .errors import ConfigError

COLUMNS = ("patient_id", "label", "age", "split", "image_prob")
SPLITS = ("train", "val", "test")
EVAL_SPLITS = ("val", "test")
PREDICTORS = ("age", "image", "age+image")  # the paper's order (Table 3)
NAMES = {"age": "Age", "image": "Image", "age+image": "Age & image"}
METRICS = ("sensitivity", "specificity", "accuracy", "auc")
AGE_CUT = 55.0
AGE_GROUPS = ("<55", ">=55")
LABEL_WORDS = {"0.0": 0, "1.0": 1}  # besides the cohort CSV's words (cohort.label_value: mutant, wildtype, idh-wt, ...)


# ---------------------------------------------------------------------------------------------- input
def load_predictions(path: str | Path) -> dict[str, np.ndarray]:
    """Read a predictions CSV into columns: ``patient_id``/``split`` (str), ``label`` (int), ``age`` (float, NaN
    when empty or n/a: ``MISSING``), ``image_prob`` (float); other columns are kept as strings. Raises ConfigError
    on bad input."""
    p = Path(path)
    if not p.is_file():
        from .config import not_a_file

        raise ConfigError(f"predictions file {p} {not_a_file(p)}; give the CSV of `slidestream predict --store` or `train`")
    with p.open("rb") as f:  # a slide given here was read as one 1 GB line: a csv.Error traceback, 2.1 GB RSS
        head = f.read(1 << 16)
    if b"\0" in head:
        raise ConfigError(f"{p}: a binary file (a NUL byte at byte {head.index(0)}), no predictions CSV; give the CSV "
                          "of `slidestream predict --store` or `train`")
    try:
        with p.open(newline="", encoding="utf-8-sig") as f:  # utf-8-sig: tolerate an Excel BOM
            reader = csv.DictReader(f)
            fields = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in COLUMNS if c not in fields]
            if missing:
                raise ConfigError(f"{p}: missing column(s) {', '.join(missing)}; need {','.join(COLUMNS)}{_split_hint(missing)}")
            twice = next((c for c in fields if fields.count(c) > 1), None)
            if twice is not None:  # csv.DictReader would keep the last one's values
                raise ConfigError(f"{p}: column {twice!r} appears more than once in the header; keep one")
            rows = []
            for r in reader:
                if None in r:  # more fields than the header: a value shifted by an unquoted comma
                    raise ConfigError(f"{p} line {reader.line_num}: {len(fields) + len(r[None])} fields, the header has "
                                      f"{len(fields)}; quote values that hold a comma")
                rows.append({k.strip(): (v or "").strip() for k, v in r.items()})
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p} is not UTF-8 text (byte {e.start}); save it as a UTF-8 CSV") from None
    except csv.Error as e:  # a cell over 128 KiB (csv's field limit): a traceback
        raise ConfigError(f"{p} line {reader.line_num + 1}: {e}; is it the predictions CSV?") from None
    if not rows:
        raise ConfigError(f"{p}: no rows")
    cols: dict[str, list] = {c: [] for c in fields}
    for line, r in enumerate(rows, start=2):
        for c in fields:
            cols[c].append(_parse(c, r.get(c, ""), f"{p} line {line}"))
    table = {c: np.asarray(v, dtype=_DTYPES.get(c, object)) for c, v in cols.items()}
    return check_table(table, source=str(p))


_DTYPES = {"label": int, "age": float, "image_prob": float, "patient_id": object, "split": object}


def _parse(col: str, raw: str, where: str) -> Any:
    if col == "label":
        label = LABEL_WORDS.get(raw.lower(), label_value(raw))  # the cohort's words were refused here
        if label is None:  # -1, empty, unknown: no IDH label (predict of an unlabelled patient); evaluate leaves it out
            raise ConfigError(f"{where}: label must be 0 (wildtype) or 1 (mutant), got {raw!r}; -1 or empty when "
                              "unknown; a cohort CSV's words for them (mutant, wildtype, idh-wt, ...) are read too")
        return label
    if col in ("age", "image_prob"):
        if raw.lower() in MISSING:
            if col == "image_prob":
                raise ConfigError(f"{where}: image_prob is missing ({raw!r}); every patient needs a probability")
            return math.nan
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{where}: {col} must be a number, got {raw!r}") from None
    if col == "split":
        return raw.lower()
    if col == "patient_id" and not raw:
        raise ConfigError(f"{where}: patient_id is empty")
    return raw


def _split_hint(missing: list[str]) -> str:
    """Why a table without ``split`` is refused rather than read as all test: val picks the Youden threshold and
    fits the fusion, so which patients are held out must be said, never guessed."""
    return (" (add a split column: test on every row for held-out predictions of another tool, val on the rows "
            "that choose the threshold and fusion)") if "split" in missing else ""


def check_table(table: dict[str, Any], source: str = "predictions") -> dict[str, np.ndarray]:
    """Validate a predictions table (dict of equal-length columns) and return it as numpy columns."""
    missing = [c for c in COLUMNS if c not in table]
    if missing:
        raise ConfigError(f"{source}: missing column(s) {', '.join(missing)}; need {','.join(COLUMNS)}{_split_hint(missing)}")
    t = {k: np.asarray(v) for k, v in table.items()}
    n = len(t["label"])
    if any(len(v) != n for v in t.values()):
        raise ConfigError(f"{source}: columns have different lengths")
    ids = list(table["patient_id"])  # as given: np.asarray(["a", nan]) holds the text 'nan'
    no_id = [i for i, v in enumerate(ids) if v is None or v != v or not str(v).strip()]
    if no_id:  # was kept as a patient named 'None', 'nan' or ''
        raise ConfigError(f"{source}: row {no_id[0] + 1} has no patient_id ({ids[no_id[0]]!r}); give every patient one")
    num = next((i for i, v in enumerate(ids) if isinstance(v, (int, float, np.number))), None)
    if num is not None:  # pandas.read_csv turns '007' into 7 and '7' (beside '7.5') into 7.0: no longer the store's ids
        raise ConfigError(f"{source}: row {num + 1} has patient_id {ids[num]!r}, a number: ids are text ('007' and '7' "
                          "differ); read the CSV with dtype=str (pandas.read_csv(path, dtype=str)) or with "
                          "evaluate.load_predictions")
    flag = next((i for i, v in enumerate(table["label"]) if isinstance(v, (bool, np.bool_))), None)
    if flag is not None:  # True/False became 1/0 here while the CSV refuses 'True': refused in both
        raise ConfigError(f"{source}: label must be 0 (wildtype) or 1 (mutant), got {table['label'][flag]!r} (patient "
                          f"{str(ids[flag])!r}); give 1/0, not True/False")
    for c in ("label", "age", "image_prob"):  # text cells (a table built from csv/pandas): parsed as the CSV's are
        if t[c].dtype.kind not in "biuf":  # astype(float) of '' or 'n/a' was a ValueError traceback
            t[c] = np.array([_parse(c, "" if v is None else str(v).strip(), f"{source} row {i + 1} (patient "
                                    f"{str(ids[i])!r})") for i, v in enumerate(t[c])], _DTYPES[c])
    t["patient_id"] = t["patient_id"].astype(str)
    t["split"] = np.char.strip(np.char.lower(t["split"].astype(str)))  # as the CSV's cells are
    t["age"] = t["age"].astype(float)
    t["image_prob"] = t["image_prob"].astype(float)
    label = t["label"]
    if not np.all(np.isin(label, (-1, 0, 1))):
        bad = label[~np.isin(label, (-1, 0, 1))][0]
        raise ConfigError(f"{source}: label must be 0 (wildtype) or 1 (mutant) (-1: unknown), got {str(bad)!r}")
    t["label"] = label.astype(int)
    bad_split = sorted(set(t["split"]) - set(SPLITS))
    if bad_split:
        i = int(np.argmax(~np.isin(t["split"], SPLITS)))
        if not bad_split[0]:  # `predict --store` of a store that was never split
            raise ConfigError(f"{source}: patient {str(t['patient_id'][i])!r} has no split; the store had none when it was "
                              "predicted: run `slidestream split` on it first, or fill the split column (test for an "
                              "external cohort)")
        raise ConfigError(f"{source}: split must be train, val or test, got {str(bad_split[0])!r}")
    age = t["age"]
    bad_age = ~np.isnan(age) & ~((age >= 0) & (age <= 130))  # inf, or a sign/unit mistake: never a silent age group
    if bad_age.any():
        i = int(np.argmax(bad_age))
        raise ConfigError(f"{source}: patient {str(t['patient_id'][i])!r} has age {age[i]:g}; ages are years, 0 to 130, "
                          "or empty when unknown")
    prob = t["image_prob"]
    bad_prob = ~(np.isfinite(prob) & (prob >= 0) & (prob <= 1))
    if bad_prob.any():
        i = int(np.argmax(bad_prob))
        why = " (NaN: the model diverged; retrain it with a lower lr)" if np.isnan(prob[i]) else ""
        raise ConfigError(f"{source}: patient {str(t['patient_id'][i])!r} has image_prob {prob[i]:g}{why}; image_prob must "
                          "be a probability in [0, 1] for every patient")
    ids, counts = np.unique(t["patient_id"], return_counts=True)
    if np.any(counts > 1):
        raise ConfigError(f"{source}: patient {str(ids[counts > 1][0])!r} appears {counts.max()} times; give one row per "
                          "patient (aggregate patch probabilities with slidestream.engine.aggregate first)")
    if not np.any(t["split"] == "test"):
        raise ConfigError(f"{source}: no test rows (split column must contain 'test')")
    return t


def _subset(t: dict[str, np.ndarray], mask: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[mask] for k, v in t.items()}


# ---------------------------------------------------------------------------------------------- metrics
def metrics_at(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Any]:
    """The one metrics implementation (training and evaluation): patient counts, sensitivity (mutant =
    positive), specificity, accuracy (called mutant when ``p >= threshold``) and AUC; None where undefined."""
    from sklearn.metrics import accuracy_score, confusion_matrix, roc_auc_score

    y, p = np.asarray(y).astype(int), np.asarray(p, float)
    pred = (p >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(y, pred, labels=[0, 1]).ravel()
    two = len(np.unique(y)) == 2
    return {
        "n": int(len(y)), "mutant": int(tp + fn), "wildtype": int(tn + fp),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else None,
        "specificity": float(tn / (tn + fp)) if tn + fp else None,
        "accuracy": float(accuracy_score(y, pred)) if len(y) else None,
        "auc": float(roc_auc_score(y, p)) if two else None,
    }


def youden_threshold(y: np.ndarray, p: np.ndarray) -> float | None:
    """Threshold maximizing Youden's J = sensitivity + specificity - 1 on (y, p); None when undefined. Equal J:
    the highest such threshold (fewest mutant calls), compared exactly (in patient counts, J * n1 * n0): in
    floats 9/14 - 1/14 > 8/14 - 0/14, and rounding picked between two equal maxima."""
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, thr = roc_curve(y, p)
    n1 = int(np.sum(np.asarray(y) == 1))
    n0 = len(y) - n1
    j = np.rint(tpr * n1).astype(np.int64) * n0 - np.rint(fpr * n0).astype(np.int64) * n1  # tp * n0 - fp * n1
    best = int(np.argmax(j))
    if j[best] <= 0 or not np.isfinite(thr[best]):
        return None
    return float(thr[best])


def bootstrap_metrics(y: np.ndarray, p: np.ndarray, threshold: float, idx: np.ndarray) -> dict[str, np.ndarray]:
    """The metrics of ``metrics_at`` for every resample (row of ``idx``) at once, NaN where undefined.

    Vectorized NumPy versions of the same definitions (sklearn's per-call overhead would make 1000 resamples x
    predictors x splits take tens of seconds); AUC is the Mann-Whitney statistic with average ranks for ties,
    which is what ``roc_auc_score`` computes. ``tests/test_evaluate.py`` checks them against scikit-learn.
    """
    from scipy.stats import rankdata

    yb, pb = y[idx].astype(bool), p[idx]
    called = pb >= threshold
    tp, fn = np.sum(yb & called, 1), np.sum(yb & ~called, 1)
    tn, fp = np.sum(~yb & ~called, 1), np.sum(~yb & called, 1)
    n1, n0 = tp + fn, tn + fp
    with np.errstate(divide="ignore", invalid="ignore"):
        ranks = rankdata(pb, axis=1)
        auc = (np.sum(ranks * yb, 1) - n1 * (n1 + 1) / 2) / (n1 * n0)
        return {"sensitivity": np.where(n1 > 0, tp / n1, np.nan), "specificity": np.where(n0 > 0, tn / n0, np.nan),
                "accuracy": (tp + tn) / yb.shape[1], "auc": np.where((n1 > 0) & (n0 > 0), auc, np.nan)}


MAX_BOOTSTRAP = 100_000  # resamples: beyond this, time without a narrower interval
MIN_CI = 2  # patients of each class a metric depends on, below which its interval is left out


def _ci_support(y: np.ndarray) -> dict[str, bool]:
    """Per metric: whether the split holds enough patients for an interval (one mutant: a sensitivity of 0 or 1
    from one patient; with one of either class every resample's AUC comes from it)."""
    n1, n0 = int(np.sum(y == 1)), int(np.sum(y == 0))
    return {"sensitivity": n1 >= MIN_CI, "specificity": n0 >= MIN_CI, "accuracy": n1 + n0 >= MIN_CI,
            "auc": min(n1, n0) >= MIN_CI}


BLOCK = 1 << 18  # resampled patient indices held at once: 100,000 resamples of 400 patients took 2.4 GB at once


def resamples(seed: Sequence[int], n: int, count: int):
    """The ``count`` bootstrap resamples of ``n`` patients (rows of indices) of generator ``seed``, in blocks of
    about ``BLOCK`` indices: the same rows as one ``integers(0, n, (count, n))`` call, in bounded memory."""
    rng = np.random.default_rng(seed)
    rows = max(1, BLOCK // max(n, 1))
    for start in range(0, count, rows):
        yield rng.integers(0, n, size=(min(rows, count - start), n))


def _bootstrap(y: np.ndarray, preds: dict[str, np.ndarray], thresholds: dict[str, float], draw) -> dict[str, np.ndarray]:
    """Every predictor's AUC (``bootstrap_metrics``) on the same resamples, ``resamples(*draw)``, drawn once for all
    of them: per predictor, one value per resample (NaN where undefined). Only the AUC's interval is a bootstrap's
    (``_intervals``: the others are Wilson intervals of the counts)."""
    parts: dict[str, list] = {name: [] for name in preds}
    for idx in resamples(*draw):
        for name, p in preds.items():
            parts[name].append(bootstrap_metrics(y, p, thresholds[name], idx)["auc"])
    return {name: np.concatenate(blocks) if blocks else np.empty(0) for name, blocks in parts.items()}


Z95 = 1.959963984540054  # the standard normal's 97.5th percentile


def wilson(k: int, n: int) -> list[float]:
    """Wilson score 95% interval of ``k`` successes in ``n`` (n > 0): the interval clinical papers give for a
    sensitivity, specificity or accuracy; never zero width (0 of 20 is [0, 0.161], not [0, 0])."""
    p, z2 = k / n, Z95 * Z95
    mid, half = (p + z2 / (2 * n)) / (1 + z2 / n), Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return [0.0 if k == 0 else max(0.0, mid - half), 1.0 if k == n else min(1.0, mid + half)]  # exact ends


def jackknife_auc(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The AUC with each patient left out in turn (both classes need >= 2 patients), from the placements
    (DeLong's V10/V01: a mutant's share of wildtypes scored below it, ties half; a wildtype's share of mutants
    above it), in O(n log n)."""
    from scipy.stats import rankdata

    y, p = np.asarray(y).astype(bool), np.asarray(p, float)
    n1, n0 = int(y.sum()), int((~y).sum())
    r = rankdata(p)
    v10 = (r[y] - rankdata(p[y])) / n0
    v01 = 1 - (r[~y] - rankdata(p[~y])) / n1
    out = np.empty(len(p))
    out[y] = (v10.sum() - v10) / (n1 - 1)
    out[~y] = (n0 * v10.sum() - n1 * v01) / (n1 * (n0 - 1))
    return out


def bca(values: np.ndarray, estimate: float, jack: np.ndarray) -> list[float] | None:
    """95% bias-corrected and accelerated bootstrap interval (Efron 1987) of ``estimate`` from its resample
    ``values`` (NaN: undefined, skipped) and jackknife ``jack``; percentiles by ``np.percentile``'s linear
    interpolation. None when every resample gives one value (perfect separation, all scores tied): no interval."""
    from scipy.special import ndtr, ndtri

    v = values[np.isfinite(values)]
    if not len(v) or np.ptp(v) == 0:
        return None
    same = np.isclose(v, estimate, rtol=0, atol=1e-12)  # the AUC is discrete: ties with the estimate count half
    below = (np.sum(v < estimate - 1e-12) + 0.5 * np.sum(same)) / len(v)
    z0 = ndtri(min(max(below, 0.5 / len(v)), 1 - 0.5 / len(v)))
    d = jack.mean() - jack
    ss = float(np.sum(d * d))
    a = float(np.sum(d ** 3)) / (6 * ss ** 1.5) if ss > 0 else 0.0
    z = z0 + np.array([-Z95, Z95])
    q = ndtr(z0 + z / np.maximum(1 - a * z, 1e-9))
    lo, hi = (float(x) for x in np.percentile(v, 100 * q))
    return [lo, hi] if hi > lo else None


def _intervals(y: np.ndarray, p: np.ndarray, threshold: float, auc_boot: np.ndarray, auc: float | None
               ) -> dict[str, list | None]:
    """95% intervals: Wilson score for sensitivity, specificity and accuracy (counts at the fixed threshold),
    BCa bootstrap for the AUC (``auc_boot``: its value on each resample); None for a metric the split has too few
    patients for (``_ci_support``) or, for the AUC, whose resamples all agree (``bca``)."""
    ok = _ci_support(y)
    yb, called = np.asarray(y).astype(bool), np.asarray(p) >= threshold
    counts = {"sensitivity": (np.sum(yb & called), np.sum(yb)), "specificity": (np.sum(~yb & ~called), np.sum(~yb)),
              "accuracy": (np.sum(yb == called), len(yb))}
    out: dict[str, list | None] = {m: wilson(int(k), int(n)) if ok[m] else None for m, (k, n) in counts.items()}
    out["auc"] = bca(auc_boot, auc, jackknife_auc(y, p)) if ok["auc"] and auc is not None else None
    return out


def roc_points(y: np.ndarray, p: np.ndarray) -> dict[str, list[float]] | None:
    from sklearn.metrics import roc_curve

    if len(np.unique(y)) < 2:
        return None
    fpr, tpr, _ = roc_curve(y, p)
    return {"fpr": [round(float(v), 6) for v in fpr], "tpr": [round(float(v), 6) for v in tpr]}


FUSION_SPLITS = ("val", "train")  # never "test": the test split makes no choice
OOF = ("train", "val")  # fit_on "oof" (training.fusion_cv): out-of-fold scores of every train+val patient


def fit_splits(fit_on: str | None) -> tuple[str, ...]:
    """The splits whose patients fitted a fusion with ``fit_on`` ("val", "train", or "oof" = train + val)."""
    return OOF if fit_on == "oof" else (fit_on,) if fit_on else ()


def fit_fusion(table: dict[str, Any], name: str, params: dict | None = None, split: str = "val") -> dict[str, Any]:
    """Fit fusion plugin ``name`` on the ``split`` patients of a predictions table; returns the fitted fusion
    as stored in a bundle: name, params, state, and which patients fitted it (``fit_on``, ``n``, sorted
    ``patients``, ``ids_digest``). ``split="oof"``: the table holds out-of-fold scores of the train+val
    patients (``train`` with ``training.fusion_cv``); they all fit it."""
    from . import registry

    if split not in (*FUSION_SPLITS, "oof"):
        raise ConfigError(f"the fusion is fitted on the val (default) or train split, not {split!r}: "
                          "the test split is never used for a choice")
    from .config import validation_errors

    plugin = registry.get("fusion", name)
    bad = validation_errors({"fusion": {"name": name, "params": params or {}}})  # as a pipeline's fusion section
    if bad:  # {"C": 0} was scikit-learn's InvalidParameterError traceback, {"c": 1} a TypeError
        raise ConfigError(f"fusion {name!r}: {bad[0]}")
    t = {k: np.asarray(v) for k, v in table.items()}
    sel = np.isin(t["split"], fit_splits(split))
    if not sel.any():
        raise ConfigError(f"fusion {name!r} is fitted on the {split} split, but it has no patients; "
                          "use split ratios with a val part (e.g. 6:1:1) or training.fusion_split")
    try:
        state = plugin.fit(_subset(t, sel), **(params or {}))
    except ConfigError as e:  # the plugin speaks of its "training patients": say which split they are
        where = "the out-of-fold train+val" if split == "oof" else f"the {split} split's"
        more = "split ratios with a larger val part" if split == "val" else "more patients"
        raise ConfigError(f"fusion {name!r} is fitted on {where} {int(sel.sum())} patients: {e}; give their ages in "
                          f"the cohort, or use {more}") from None
    ids = sorted(str(p) for p in t["patient_id"][sel])
    return {"name": name, "params": params or {}, "state": state, "fit_on": split, "n": len(ids),
            "patients": ids, "ids_digest": ids_digest(ids)}


def ids_digest(ids: Sequence[str]) -> str:
    """Short sha256 of a sorted patient id list (one id a line): names a patient set in reports."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()[:16]


def apply_fusion(fitted: dict[str, Any], table: dict[str, Any]) -> dict[str, np.ndarray]:
    """The fitted fusion's predictors (e.g. ``age``, ``age+image``) for every row of ``table``."""
    from . import registry

    out = registry.get("fusion", fitted["name"]).predict(fitted["state"], table)
    return {k: np.asarray(v, dtype=float) for k, v in out.items()}


ROLE = {"train": "trained on", "val": "selected its best epoch on"}


def check_leakage(t: dict[str, np.ndarray], trained: dict[str, Any]) -> None:
    """Refuse (one-line ConfigError) a test split holding a patient the bundle trained on (its ``train`` set) or
    chose its epoch on (``val``): its test metrics would be optimistic, not held out. A table with val rows must
    hold every val patient of the bundle, and none it trained on (val picks the Youden threshold)."""
    test = sorted(set(t["patient_id"][t["split"] == "test"].tolist()))
    for split in ("train", "val"):
        own = set((trained.get(split) or {}).get("patients", []))
        leaked = [p for p in test if p in own]
        if leaked:
            raise ConfigError(f"patient {leaked[0]!r} is in this table's test split, but the bundle {ROLE[split]} it "
                              f"({len(leaked)} such test patient(s), {split} split of its training); evaluate "
                              "predictions of the store split the bundle was trained on, or retrain on this split")
    val = set(t["patient_id"][t["split"] == "val"].tolist())
    in_train = sorted(val & set((trained.get("train") or {}).get("patients", [])))
    if in_train:  # in-sample scores in val: its metrics, and the Youden threshold applied to test, would be chosen on them
        raise ConfigError(f"patient {in_train[0]!r} is in this table's val split, but the bundle trained on it "
                          f"({len(in_train)} such val patient(s)): val chooses the threshold, so in-sample scores there "
                          "bias the test metrics; evaluate predictions of the store split the bundle was trained on")
    missing = sorted(set((trained.get("val") or {}).get("patients", [])) - val) if val else []
    if missing:  # a cut or filtered table: the val (selection-set) metrics would be of other patients than the bundle's
        raise ConfigError(f"this table's val split holds {len(val)} patient(s) but not {len(missing)} of the bundle's val "
                          f"split (first: {missing[0]!r}): the threshold and fusion would be judged on other patients; "
                          "give predictions of the store the bundle was trained on, or the whole predictions CSV (a "
                          "store with only some of them: mark those rows train, as `predict --store` of an unsplit "
                          "store does; the bundle chose its epoch on them, so never test)")


def evaluate(table: dict[str, Any], fusion: str | None = None, threshold: float | str = 0.5,
             bootstrap: int = 1000, seed: int = 0, fusion_params: dict | None = None,
             age_group_splits: Sequence[str] = ("test",), fusion_split: str = "val",
             fitted: dict[str, Any] | None = None, best_epoch: int | None = None,
             trained: dict[str, Any] | None = None, val_thresholds: dict[str, Any] | None = None) -> dict[str, Any]:
    """Evaluate a predictions table; returns the ``metrics.json`` dict (see the module docstring), plus
    ``patients`` (every patient's predictor values; ``write_report`` writes it to ``patients.csv``).

    Fusion: ``fitted`` (a bundle's fitted fusion, used exactly as it is) or ``fusion`` (a plugin name, fitted
    here on the ``fusion_split`` patients, val by default). ``best_epoch``: the bundle's, chosen on val
    (recorded, and it makes val a selection set). ``trained``: the bundle's ``patients`` (``train``/``val`` sets,
    see ``bundle.patient_set``); a test patient among them is refused (``check_leakage``). ``val_thresholds``: the
    bundle's ``youden`` (per predictor, chosen on its val patients by ``train``): ``threshold="youden"`` on a table
    without val rows (held-out patients) applies them, as the paper applies val's threshold to test.
    """
    for name, v, top in (("bootstrap", bootstrap, MAX_BOOTSTRAP), ("seed", seed, None)):  # 2.5 ran 2 resamples
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0 or (top is not None and v > top):
            raise ConfigError(f"{name} must be a whole number from 0{f' to {top:,}' if top else ''}, got {v!r}")
    if fitted and fusion:  # fitted won, silently: the named fusion (and its params) was never fitted
        raise ConfigError(f"evaluate got a fitted fusion ({fitted.get('name')}, e.g. a bundle's) and fusion={fusion!r} to "
                          "fit: give one")
    if isinstance(age_group_splits, str):  # "test" was the splits 't', 'e', 's', 't': empty age groups
        age_group_splits = tuple(age_group_splits.split("+"))
    if not age_group_splits or any(s not in EVAL_SPLITS for s in age_group_splits):
        raise ConfigError(f"age_group_splits must be 'test', 'val' or both ('val+test'), got {age_group_splits!r}")
    full = check_table(table)
    notes: list[str] = []
    meta: dict[str, Any] = {"positive_class": "IDH-mutant (label 1)", "bootstrap": int(bootstrap), "seed": int(seed)}
    unknown = full["label"] < 0  # no IDH label: left out of every metric, counted and named
    t = _subset(full, ~unknown)
    if unknown.any():
        meta["unlabeled"] = {s_: int(np.sum(unknown & (full["split"] == s_))) for s_ in SPLITS}
        meta["unlabeled"]["patients"] = sorted(full["patient_id"][unknown].tolist())
        notes.append(f"{int(unknown.sum())} patient(s) without a label (-1/empty) left out of every metric ("
                     + ", ".join(f"{k} {v}" for k, v in meta["unlabeled"].items() if k != "patients" and v)
                     + f"; e.g. {meta['unlabeled']['patients'][0]})")
        if not np.any(t["split"] == "test"):
            raise ConfigError("no test patient has a label (0 wildtype or 1 mutant): nothing to evaluate; give the "
                              "test patients their IDH status in the cohort CSV")
    preds: dict[str, np.ndarray] = {"image": t["image_prob"]}
    if trained:
        check_leakage(full, trained)
        meta["trained_patients"] = {k: {"n": v["n"], "ids_digest": v["ids_digest"]} for k, v in trained.items()}
    if fitted:
        leaked = sorted(set(fitted.get("patients", [])) & set(full["patient_id"][full["split"] == "test"]))
        if leaked:
            raise ConfigError(f"the bundle's fusion was fitted on {len(leaked)} patient(s) of this table's test split "
                              f"(e.g. {leaked[0]}); evaluate predictions of the store split the bundle was trained on")
        meta["fusion"] = {**fitted, "source": "bundle"}
        own = sorted(str(p) for p in full["patient_id"][np.isin(full["split"], fit_splits(fitted.get("fit_on")))])
        if own and "ids_digest" in fitted and ids_digest(own) != fitted["ids_digest"]:  # none: a held-out table
            notes.append(f"the bundle's fusion was fitted on other patients (ids {fitted['ids_digest']}) than this "
                         f"table's {fitted.get('fit_on')} split (ids {ids_digest(own)})")
    elif fusion:
        if fusion_split == "oof":  # out-of-fold scores exist only in `train --fusion-cv` (a bundle's fusion)
            raise ConfigError("evaluate fits the fusion on the val or train split, not on out-of-fold scores: an out-of-fold "
                              "fusion comes from `slidestream train --fusion-cv K` (use its bundle)")
        meta["fusion"] = {**fit_fusion(t, fusion, fusion_params, fusion_split), "source": "fitted by evaluate"}
    if "fusion" in meta:
        fused = apply_fusion(meta["fusion"], t)
        preds.update(fused)
        for split in EVAL_SPLITS:  # say how many patients the fusion scored without an age
            k = int(np.sum((t["split"] == split) & ~np.isfinite(t["age"])))
            if k:
                notes.append(f"{split}: {k} patient(s) without an age; fusion {meta['fusion']['name']!r} gives them "
                             f"{', '.join(sorted(fused))} without one (age_gda: the class prior in place of the age)")
    order = [p for p in PREDICTORS if p in preds] + sorted(p for p in preds if p not in PREDICTORS)

    val = t["split"] == "val"
    if threshold == "youden":
        if not val.any() and not val_thresholds:
            k = int(np.sum(full["split"] == "val"))  # rows there, but all without a label: none can choose it
            raise ConfigError("--threshold youden picks the threshold on the val split, but there are no "
                              + (f"labelled val rows (its {k} patient(s) have label -1/empty)" if k else "val rows")
                              + "; give --bundle (a bundle records its val-chosen thresholds) or a numeric --threshold")
        thresholds, fallback = {}, []
        for name in order:
            thr = youden_threshold(t["label"][val], preds[name][val]) if val.any() else val_thresholds.get(name)
            if thr is None:
                notes.append(f"{name}: Youden threshold undefined on val (one class, or no better than chance); used 0.5")
                fallback.append(name)
                thr = 0.5
            thresholds[name] = thr
    else:
        try:
            thr = float(threshold)
        except (TypeError, ValueError):
            raise ConfigError(f"threshold must be a number in (0, 1) or 'youden', got {threshold!r}") from None
        if not 0 < thr < 1:
            raise ConfigError(f"threshold must be in (0, 1), got {thr}")
        thresholds = {name: thr for name in order}
    meta["threshold"] = threshold if threshold == "youden" else float(threshold)
    meta["thresholds"] = thresholds
    meta["threshold_rule"] = ("Youden's J per predictor on the val split" if threshold == "youden"
                              else f"fixed at {float(threshold):g} (not chosen on data)")
    if threshold == "youden" and not val.any():  # held-out table: the bundle's, chosen on its val patients
        meta["threshold_rule"] += " of the bundle's training (recorded in the bundle; this table has no val rows)"
        meta["threshold_source"] = "bundle"
    if threshold == "youden" and fallback:  # the report must not call these thresholds chosen on val
        meta["threshold_fallback"] = fallback
        meta["threshold_rule"] += f"; 0.5 for {', '.join(fallback)} (Youden undefined on val)"
    # every choice made on patients, by split: metrics on those patients are selection-set metrics (optimistic);
    # the test split makes no choice
    selection: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    if best_epoch is not None:
        selection["val"].append("best epoch")
    if threshold == "youden" and len(meta.get("threshold_fallback", [])) < len(order):
        selection["val"].append("threshold")
    if "fusion" in meta:
        for s_ in fit_splits(meta["fusion"]["fit_on"]):
            selection[s_].append("fusion fit" + (" (out-of-fold scores)" if meta["fusion"]["fit_on"] == "oof" else ""))
    meta["best_epoch"] = best_epoch
    meta["selection"] = selection

    result: dict[str, Any] = {}
    roc: dict[str, Any] = {}
    for s_i, split in enumerate(EVAL_SPLITS):
        mask = t["split"] == split
        if not mask.any():
            notes.append(f"{split}: no rows; not evaluated")
            continue
        y = t["label"][mask]
        undefined = [] if len(np.unique(y)) == 2 else ["specificity" if y[0] else "sensitivity", "auc"]
        if undefined:
            notes.append(f"{split}: only {'mutant' if y[0] else 'wildtype'} patients; {undefined[0]} and AUC "
                         "undefined (null), without an interval")
        draw = [seed, s_i], len(y), int(bootstrap)  # the same resamples for every predictor of the split
        boot = _bootstrap(y, {name: preds[name][mask] for name in order}, thresholds, draw)
        if bootstrap:
            short = [m for m, ok in _ci_support(y).items() if not ok and m not in undefined]  # said above
            if short:
                notes.append(f"{split}: no 95% interval for {', '.join(short)} (fewer than {MIN_CI} patients of a class "
                             "it depends on: not enough patients for an interval)")
            kept = int(np.isfinite(boot[order[0]]).sum())  # resamples with both classes: the same for all
            if "auc" not in short + undefined and kept < bootstrap:
                notes.append(f"{split}: AUC intervals from the {kept} of {bootstrap} resamples that hold both classes")
        result[split], roc[split] = {}, {}
        for name in order:
            p = preds[name][mask]
            if len(p) > 1 and np.ptp(p) == 0:  # a collapsed model (or no ages): its AUC 0.5 comes from ties alone
                notes.append(f"{split}: {name} gives every patient the same probability ({p[0]:.6g}); it ranks no one"
                             + ("" if undefined else ", its AUC of 0.5 is ties, not chance-level ranking"))
            block: dict[str, Any] = metrics_at(y, p, thresholds[name])
            block["ci"] = (_intervals(y, p, thresholds[name], boot[name], block["auc"]) if bootstrap
                           else dict.fromkeys(METRICS))
            if bootstrap and block["ci"]["auc"] is None and _ci_support(y)["auc"]:  # [x, x] claimed certainty
                notes.append(f"{split}: no 95% interval for {name} AUC: every resample gives {block['auc']:.3f} (perfect "
                             "separation or tied scores), so the bootstrap cannot measure its uncertainty")
            result[split][name] = block
            roc[split][name] = roc_points(y, p)
    result["age_groups"] = age_groups(t, preds, thresholds, age_group_splits, notes)
    meta["age_group_splits"] = list(age_group_splits)
    meta["predictors"] = order
    meta["roc"] = roc
    meta["notes"] = notes
    result["meta"] = meta
    result["patients"] = {"patient_id": t["patient_id"].tolist(), "split": t["split"].tolist(),
                          "label": t["label"].tolist(), "age": [None if np.isnan(a) else float(a) for a in t["age"]],
                          **{f"{name}_prob": preds[name].tolist() for name in order}}
    return result


def age_groups(t: dict[str, np.ndarray], preds: dict[str, np.ndarray], thresholds: dict[str, float],
               splits: Sequence[str] = ("test",), notes: list[str] | None = None) -> dict[str, Any]:
    """Paper's Table 4: patients < 55 and >= 55 years: counts, misclassified mutant/wildtype, accuracy."""
    from sklearn.metrics import accuracy_score

    mask = np.isin(t["split"], list(splits))
    no_age = mask & ~np.isfinite(t["age"])
    if no_age.any() and notes is not None:
        notes.append(f"age groups: {int(no_age.sum())} patient(s) without an age left out")
    age, y = t["age"], t["label"]
    out: dict[str, Any] = {}
    for group, in_group in (("<55", age < AGE_CUT), (">=55", age >= AGE_CUT)):  # NaN is in neither
        g = mask & in_group
        yg = y[g]
        errors, accuracy = {}, {}
        for name, p in preds.items():
            pred = (p[g] >= thresholds[name]).astype(int)
            errors[name] = {"mutant": int(np.sum((yg == 1) & (pred == 0))),
                            "wildtype": int(np.sum((yg == 0) & (pred == 1)))}
            accuracy[name] = float(accuracy_score(yg, pred)) if len(yg) else None
        out[group] = {"n": int(g.sum()), "mutant": int(np.sum(yg == 1)), "wildtype": int(np.sum(yg == 0)),
                      "errors": errors, "accuracy": accuracy}
    return out


# ---------------------------------------------------------------------------------------------- output
def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _fmt_ci(block: dict, m: str) -> str:
    ci = block.get("ci", {}).get(m)
    return _fmt(block[m]) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _predictors(metrics: dict) -> list[str]:
    names = metrics.get("meta", {}).get("predictors")
    if names:
        return names
    first = next((metrics[s] for s in EVAL_SPLITS if s in metrics), {})
    return [p for p in PREDICTORS if p in first] + sorted(p for p in first if p not in PREDICTORS)


def plot_roc(metrics: dict, split: str, path: Path) -> None:
    """All predictors' ROC curves of one split in one figure (paper, Fig. 4)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 5), dpi=120)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], ls="--", c="0.6", lw=1)
    curves = metrics.get("meta", {}).get("roc", {}).get(split, {})
    for name in _predictors(metrics):
        pts, auc = curves.get(name), metrics[split][name]["auc"]
        if pts:
            ax.plot(pts["fpr"], pts["tpr"], lw=1.8, label=f"{NAMES.get(name, name)} (AUC = {auc:.3f})")
    if not any(curves.values()):
        ax.text(0.5, 0.5, "ROC undefined: one class only", ha="center")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity", ylabel="sensitivity",
           title=f"ROC, {'validation' if split == 'val' else 'test'} set (n = {_n(metrics, split)})")
    if any(curves.values()):  # no legend without curves (matplotlib warns on stderr)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def _n(metrics: dict, split: str) -> int:
    return next(iter(metrics[split].values()))["n"]


def report_markdown(metrics: dict) -> str:
    """Tables 3 and 4 of the paper, filled with these metrics."""
    names = _predictors(metrics)
    meta = metrics.get("meta", {})
    lines = ["# IDH prediction: evaluation", ""]
    thr = meta.get("threshold")
    if thr == "youden":
        fallback = meta.get("threshold_fallback", [])
        picked = ", ".join(f"{NAMES.get(k, k)} {v:.3f}" + (" (fallback: Youden undefined on val)" if k in fallback
                                                               else "") for k, v in meta.get("thresholds", {}).items())
        where = ("the validation set of the bundle's training (recorded in the bundle; this table has no val rows)"
                 if meta.get("threshold_source") == "bundle" else "the validation set")
        lines.append(f"Threshold: Youden's J on {where} ({picked}), applied to the test set.")
    elif thr is not None:
        lines.append(f"Threshold: probability of IDH-mutant >= {thr}.")
    if meta.get("bootstrap"):
        lines.append(f"Brackets: 95% confidence intervals, Wilson score for sensitivity, specificity and accuracy, BCa "
                     f"bootstrap for the AUC ({meta['bootstrap']} patient resamples, seed {meta['seed']}); threshold and "
                     "fusion held fixed.")
    lines += ["", "## Choices, and the patients that made them", ""] + _choices(meta)
    lines += ["", "## Classification performance by predictor (cf. Liu et al. 2020, Table 3)", "",
              "| Predictor | Sensitivity | Specificity | Accuracy | AUC |", "|---|---|---|---|---|"]
    for split in EVAL_SPLITS:
        if split not in metrics:
            continue
        lines.append(f"| **On {_split_title(meta, split)}** (n = {_n(metrics, split)}) | | | | |")
        for name in names:
            b = metrics[split][name]
            lines.append(f"| {NAMES.get(name, name)} | " + " | ".join(_fmt_ci(b, m) for m in METRICS) + " |")
    groups = metrics.get("age_groups", {})
    splits = " and ".join(meta.get("age_group_splits", ["test"]))
    used = meta.get("selection", {}).get("val") if "val" in meta.get("age_group_splits", []) else None
    g1, g2 = groups.get("<55", {}), groups.get(">=55", {})
    lines += ["", f"## Performance on different age groups, {splits} set (cf. Liu et al. 2020, Table 4)", ""]
    if used:  # Table 3 labels val as the selection set; these counts hold its patients too
        lines += [f"Its val patients chose the {', '.join(used)}: these are selection-set counts (optimistic).", ""]
    lines += ["| Age group | Group I: < 55 | Group II: >= 55 |", "|---|---|---|",
              f"| Number of patients (mutant:wildtype) | {_count(g1)} | {_count(g2)} |",
              "| **Error incidences (mutant:wildtype)** | | |"]
    for name in names:
        lines.append(f"| {NAMES.get(name, name)} | {_errors(g1, name)} | {_errors(g2, name)} |")
    lines.append("| **Accuracy** | | |")
    for name in names:
        lines.append(f"| {NAMES.get(name, name)} | {_fmt(g1.get('accuracy', {}).get(name))} | "
                     f"{_fmt(g2.get('accuracy', {}).get(name))} |")
    lines += ["", "ROC curves (cf. Fig. 4): " + ", ".join(f"`roc_{s}.png`" for s in EVAL_SPLITS if s in metrics) + "."]
    if meta.get("notes"):
        lines += ["", "## Notes", ""] + [f"- {n}" for n in meta["notes"]]
    return "\n".join(lines) + "\n"


def _split_title(meta: dict, split: str) -> str:
    used = meta.get("selection", {}).get(split)
    name = "validation set" if split == "val" else "test set"
    return f"{name}: selection-set metrics (it chose the {', '.join(used)}; optimistic)" if used else name


def _choices(meta: dict) -> list[str]:
    """Report lines: best epoch, threshold, fusion fit, and which split made each choice."""
    out = []
    if meta.get("best_epoch") is not None:
        out.append(f"- Best epoch: {meta['best_epoch'] + 1}, chosen on the validation split (the bundle's training).")
    out.append(f"- Threshold: {meta.get('threshold_rule', meta.get('threshold'))}.")
    f = meta.get("fusion")
    if f:
        where = (f"the out-of-fold image scores of the train+val patients ({f['cv']['k']}-fold, fold digest "
                 f"`{f['cv']['folds_digest']}`; each scored by a network that never trained on it)"
                 if f.get("fit_on") == "oof" else f"the {f.get('fit_on')} split")
        out.append(f"- Fusion `{f['name']}` ({f.get('source', '')}): fitted on {where}, "
                   f"n = {f.get('n')} patients, ids digest `{f.get('ids_digest')}`.")
    out.append("- The test split was used for no choice; metrics on a split that made one are selection-set "
               "metrics (optimistic).")
    return out


def _count(g: dict) -> str:
    return f"{g.get('n', 0)} ({g.get('mutant', 0)}:{g.get('wildtype', 0)})"


def _errors(g: dict, name: str) -> str:
    e = g.get("errors", {}).get(name, {"mutant": 0, "wildtype": 0})
    return f"{e['mutant'] + e['wildtype']} ({e['mutant']}:{e['wildtype']})"


def _write_patients(cols: dict[str, list], path: Path) -> None:
    from .store import atomic_write_text

    names = list(cols)
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(names)
    for row in zip(*(cols[c] for c in names)):
        w.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])  # exact floats
    atomic_write_text(path, f.getvalue())


def write_report(metrics: dict, out_dir: str | Path) -> list[Path]:
    """Write ``metrics.json``, ``patients.csv`` (every patient's predictor values), ``roc_val.png`` /
    ``roc_test.png`` (splits present) and ``report.md``; each replaced atomically (a full disk or a kill keeps the
    previous file whole)."""
    from .store import atomic_write_text

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "metrics.json", out / "patients.csv"]
    patients = metrics.get("patients")
    metrics = {k: v for k, v in metrics.items() if k != "patients"}
    atomic_write_text(written[0], json.dumps(metrics, indent=2) + "\n")
    if patients:
        _write_patients(patients, written[1])
    else:
        written.pop()
    for split in EVAL_SPLITS:
        if split in metrics:
            plot_roc(metrics, split, out / f"roc_{split}.png")
            written.append(out / f"roc_{split}.png")
    atomic_write_text(out / "report.md", report_markdown(metrics))
    written.append(out / "report.md")
    return written
