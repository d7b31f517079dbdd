"""age_gda fusion: Gaussian discriminant analysis of age + logistic regression with the image probability."""
import json

import numpy as np
import pytest
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from slidestream.engine import registry
from slidestream.engine.errors import ConfigError
from slidestream.plugins.fusion import age_gda


def _cohort(n_mut: int, n_wt: int, seed: int) -> dict:
    """Mutants younger (N(40, 10^2)) than wildtypes (N(62, 8^2)); image_prob informative, independent of age."""
    rng = np.random.default_rng(seed)
    y = np.r_[np.ones(n_mut, int), np.zeros(n_wt, int)]
    age = np.r_[rng.normal(40, 10, n_mut), rng.normal(62, 8, n_wt)]
    image = 1 / (1 + np.exp(-rng.normal(np.where(y == 1, 1.0, -1.0), 1.5)))
    return {"label": y, "age": age, "image_prob": image}


def test_registered():
    plugin = registry.get("fusion", "age_gda")
    assert plugin.fit is age_gda.fit and plugin.predict is age_gda.predict


def test_recovers_gaussians_and_priors():
    state = age_gda.fit(_cohort(6000, 4000, seed=0))
    (m0, m1), (v0, v1) = state["age_means"], state["age_vars"]
    assert abs(m1 - 40) < 0.5 and abs(m0 - 62) < 0.5
    assert abs(v1 - 100) < 6 and abs(v0 - 64) < 4
    assert state["priors"] == pytest.approx([0.4, 0.6])


def test_age_posterior_is_bayes_rule():
    state = {"age_means": [62.0, 40.0], "age_vars": [64.0, 100.0], "priors": [0.6, 0.4]}
    age = np.array([20.0, 45.0, 55.0, 70.0, np.nan])
    p1 = 0.4 * norm.pdf(age, 40, 10)
    p0 = 0.6 * norm.pdf(age, 62, 8)
    want = p1 / (p1 + p0)
    got = age_gda.age_probability(state, age)
    np.testing.assert_allclose(got[:4], want[:4], rtol=1e-10)
    assert got[4] == 0.4  # missing age: the prior
    assert got[0] > 0.99 and got[3] < 0.05


def test_combined_beats_each_predictor_alone():
    train, test = _cohort(150, 150, seed=1), _cohort(300, 300, seed=2)
    state = age_gda.fit(train)
    state = json.loads(json.dumps(state))  # JSON-able, and works after the round trip
    out = age_gda.predict(state, test)
    assert set(out) == {"age", "age+image"}
    y = test["label"]
    auc_age, auc_image = roc_auc_score(y, out["age"]), roc_auc_score(y, test["image_prob"])
    auc_both = roc_auc_score(y, out["age+image"])
    assert auc_both >= max(auc_age, auc_image) + 0.01, (auc_age, auc_image, auc_both)
    assert state["coef"][0] > 0 and state["coef"][1] > 0  # both features push towards mutant


def test_missing_age_uses_prior_and_keeps_rows():
    train = _cohort(50, 50, seed=3)
    train["age"][[0, 1, 60]] = np.nan
    state = age_gda.fit(train)
    assert state["n_missing_age"] == 3 and state["priors"] == pytest.approx([49 / 97, 48 / 97])  # 2 mutants, 1 wildtype left out
    out = age_gda.predict(state, {"age": np.array([np.nan]), "image_prob": np.array([0.9])})
    assert out["age"][0] == pytest.approx(48 / 97) and np.isfinite(out["age+image"][0])


def test_too_few_patients_is_a_config_error():
    t = _cohort(1, 20, seed=4)
    with pytest.raises(ConfigError, match="at least 2"):
        age_gda.fit(t)
