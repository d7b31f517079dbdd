"""Fixed pooling of one patient's patch probabilities: mean (Liu et al. 2020), median, top-k mean."""
from __future__ import annotations

import math

import numpy as np


def mean(probs: np.ndarray) -> tuple[float, None]:
    return float(np.mean(probs)), None


def median(probs: np.ndarray) -> tuple[float, None]:
    return float(np.median(probs)), None


def topk(probs: np.ndarray, k_frac: float = 0.2) -> tuple[float, None]:
    """Mean of the ``ceil(k_frac * n)`` highest probabilities (at least one): favours the positive class."""
    p = np.sort(np.asarray(probs, float))[::-1]
    k = max(1, math.ceil(round(k_frac * len(p), 9)))  # round: 0.07 * 100 is 7.000000000000001 in floats, not 8 patches
    return float(p[:k].mean()), None
