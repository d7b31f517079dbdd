"""``age_gda``: age-based prediction by Gaussian discriminant analysis, combined with the image prediction by
logistic regression.

Liu et al. 2020, Methods, "Combining age- and image-based prediction": "We first modelled the age distribution of
the IDH-mutant and IDH-wildtype patients using two Gaussian distribution functions, then the probability of a
patient being in the IDH-mutant or IDH-wildtype class was derived using the Gaussian discriminant analysis (GDA)
model. The age-based prediction was then combined with the image-based prediction using a logistic regression
classifier."

* GDA, closed form, one variance per class (maximum likelihood, as QDA in one dimension): class means and
  variances (ddof 0) of the training patients' ages (a class whose age sd is under ``MIN_SD`` is refused),
  class priors = class fractions, and
  ``P(mutant | age) = p1 N(age; m1, v1) / (p1 N(age; m1, v1) + p0 N(age; m0, v0))``.
* ``sklearn.linear_model.LogisticRegression(C=C)`` on the two features ``(image_prob, P(mutant | age))`` of the
  training patients gives ``age+image``.
* Missing ages (NaN): those patients are left out of the Gaussians and priors; their age probability is the
  prior ``P(mutant)`` (age tells nothing), in training and in prediction, so they still get an ``age+image``.

Labels: 1 = IDH-mutant (positive class), 0 = IDH-wildtype. The state is plain JSON.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from slidestream.engine.errors import ConfigError
from slidestream.engine.hookspecs import FusionPlugin

MIN_SD = 0.5  # years: a narrower class Gaussian (e.g. ages all equal) calls a patient a year away 0 or 1


def expit(x):
    """The logistic function, SciPy's; imported when called: loading the plugins does not import SciPy."""
    from scipy.special import expit

    return expit(x)


def age_probability(state: dict, age: Any) -> np.ndarray:
    """P(mutant | age) under the fitted Gaussians; the prior P(mutant) where age is missing."""
    age = np.asarray(age, dtype=float)
    m0, m1 = state["age_means"]
    v0, v1 = state["age_vars"]
    p0, p1 = state["priors"]
    logit = (np.log(p1) - 0.5 * np.log(v1) - (age - m1) ** 2 / (2 * v1)) \
        - (np.log(p0) - 0.5 * np.log(v0) - (age - m0) ** 2 / (2 * v0))
    return np.where(np.isfinite(age), expit(logit), p1)


def fit(table: dict, C: float = 1.0) -> dict:
    """Fit the age Gaussians and the logistic regression on the training patients (``label``, ``age``,
    ``image_prob`` columns). Returns the JSON-able state."""
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(table["label"]).astype(int)
    age = np.asarray(table["age"], dtype=float)
    image = np.asarray(table["image_prob"], dtype=float)
    if not np.all(np.isfinite(image)):
        raise ConfigError("age_gda: every training patient needs an image_prob")
    known = np.isfinite(age)
    counts = [int(np.sum(known & (y == c))) for c in (0, 1)]
    if min(counts) < 2:
        raise ConfigError(f"age_gda: needs at least 2 training patients with an age in each class, "
                          f"got {counts[1]} mutant and {counts[0]} wildtype")
    groups = [age[known & (y == c)] for c in (0, 1)]
    narrow = [(name, g.std()) for name, g in zip(("wildtype", "mutant"), groups) if g.std() < MIN_SD]
    if narrow:
        raise ConfigError(f"age_gda: the {narrow[0][0]} training patients' ages have sd {narrow[0][1]:.2f} years "
                          f"(< {MIN_SD}): too narrow a Gaussian to give age probabilities; check the age column "
                          "(ages in years, not one placeholder value)")
    state: dict[str, Any] = {
        "classes": ["wildtype", "mutant"],  # index 0, 1 of every pair below
        "age_means": [float(g.mean()) for g in groups],
        "age_vars": [float(g.var()) for g in groups],
        "priors": [c / sum(counts) for c in counts],
        "n_train": int(len(y)),
        "n_missing_age": int(np.sum(~known)),
    }
    X = np.column_stack([image, age_probability(state, age)])
    lr = LogisticRegression(C=C).fit(X, y)
    state.update(features=["image_prob", "age_prob"], coef=[float(c) for c in lr.coef_[0]],
                 intercept=float(lr.intercept_[0]), C=float(C))
    return state


def predict(state: dict, table: dict) -> dict[str, np.ndarray]:
    """``{"age": P(mutant | age), "age+image": logistic regression of (image_prob, age probability)}``."""
    p_age = age_probability(state, table["age"])
    image = np.asarray(table["image_prob"], dtype=float)
    z = state["intercept"] + state["coef"][0] * image + state["coef"][1] * p_age
    return {"age": p_age, "age+image": expit(z)}


def slidestream_fusion():
    return [FusionPlugin(
        name="age_gda", fit=fit, predict=predict,
        summary="age GDA (two Gaussians) + logistic regression with the image probability (Liu et al. 2020)",
        params={"C": {"type": "number", "exclusiveMinimum": 0,
                      "description": "inverse L2 regularization of the logistic regression (default 1, scikit-learn's)"}},
    )]
