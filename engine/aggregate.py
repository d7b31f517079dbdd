"""Patient-level aggregation of patch probabilities: a thin dispatcher to the ``aggregator`` plugins.

Liu et al. 2020 predict a patient's IDH status from the mean of the probabilities of its patches (``mean``,
the default). ``median`` is robust to a few outlying patches; ``topk`` averages the highest ``k_frac`` of a
patient's patch probabilities (at least one patch), which favours the positive (mutant) class. Any installed
aggregator plugin whose ``input`` is ``"probs"`` can be named (``slidestream plugins --kind aggregator``).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import registry
from .errors import ConfigError


def methods() -> list[str]:
    """Names of the aggregators that pool patch probabilities."""
    return sorted(n for n, p in registry.plugins("aggregator").items() if p.input == "probs")


def aggregate(patient_ids: Sequence[Any], probs: Sequence[float], method: str = "mean",
              k_frac: float = 0.2, **params) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate patch probabilities per patient with the aggregator plugin ``method``.

    Returns ``(patients, probs)``: the distinct patient ids, sorted, and one probability per patient.
    ``k_frac`` (and any other ``params``) go to plugins that declare them.
    """
    ids = np.asarray(patient_ids)
    try:
        p = np.asarray(probs, dtype=float)
    except (TypeError, ValueError) as e:  # '' or 'n/a' in a column read as text
        raise ConfigError(f"aggregate: probs must be numbers (patch probabilities in [0, 1]): {e}") from None
    if ids.shape != p.shape or ids.ndim != 1:
        raise ConfigError(f"aggregate: patient_ids and probs must be 1-D and of equal length, got {ids.shape} and {p.shape}")
    if not len(p):  # gave 0 patients and 1 probability (NaN)
        raise ConfigError("aggregate: no patch probabilities; give at least one patch")
    bad = ~((p >= 0) & (p <= 1))  # NaN too: it became the patient's probability; 1.5 was averaged in
    if bad.any():
        i = int(np.argmax(bad))
        why = " (NaN: the model diverged; retrain it with a lower lr)" if np.isnan(p[i]) else ""
        raise ConfigError(f"aggregate: patch {i} (patient {str(ids[i])!r}) has probability {p[i]:g}{why}; patch "
                          "probabilities must be in [0, 1]")
    if ids.dtype == object:  # mixed types (7 and "7"): one id each as text, as evaluate compares them
        none = [i for i, v in enumerate(ids) if v is None or v != v]
        if none:
            raise ConfigError(f"aggregate: patch {none[0]} has no patient id ({ids[none[0]]!r}); give every patch one")
        ids = ids.astype(str)
    if method not in methods():
        raise ConfigError(f"aggregate: method must be one of {', '.join(methods())}, not {method!r}")
    if not 0 < k_frac <= 1:
        raise ConfigError(f"aggregate: k_frac must be in (0, 1], not {k_frac}")
    plugin = registry.get("aggregator", method)
    kw = {k: v for k, v in {"k_frac": k_frac, **params}.items() if k in plugin.params}
    patients, inverse = np.unique(ids, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(p[order], np.searchsorted(inverse[order], np.arange(1, len(patients))))
    return patients, np.array([plugin.aggregate(g, **kw)[0] for g in groups], dtype=float)
