"""Patient-level aggregation of patch probabilities.

Liu et al. 2020 predict a patient's IDH status from the mean of the probabilities of its patches (``mean``,
the default). ``median`` is robust to a few outlying patches; ``topk`` averages the highest ``k_frac`` of a
patient's patch probabilities (at least one patch), which favours the positive (mutant) class.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .errors import ConfigError

METHODS = ("mean", "median", "topk")


def aggregate(patient_ids: Sequence[Any], probs: Sequence[float], method: str = "mean",
              k_frac: float = 0.2) -> tuple[np.ndarray, np.ndarray]:
    """Aggregate patch probabilities per patient.

    Returns ``(patients, probs)``: the distinct patient ids, sorted, and one probability per patient.
    """
    ids = np.asarray(patient_ids)
    p = np.asarray(probs, dtype=float)
    if ids.shape != p.shape or ids.ndim != 1:
        raise ConfigError(f"aggregate: patient_ids and probs must be 1-D and of equal length, got {ids.shape} and {p.shape}")
    if method not in METHODS:
        raise ConfigError(f"aggregate: method must be one of {', '.join(METHODS)}, not {method!r}")
    if not 0 < k_frac <= 1:
        raise ConfigError(f"aggregate: k_frac must be in (0, 1], not {k_frac}")
    patients, inverse = np.unique(ids, return_inverse=True)
    if method == "mean":
        return patients, np.bincount(inverse, weights=p, minlength=len(patients)) / np.bincount(inverse)
    order = np.lexsort((-p, inverse))  # by patient, then probability descending
    starts = np.searchsorted(inverse[order], np.arange(len(patients)))
    groups = np.split(p[order], starts[1:])
    if method == "median":
        return patients, np.array([np.median(g) for g in groups])
    return patients, np.array([g[:max(1, math.ceil(k_frac * len(g)))].mean() for g in groups])
