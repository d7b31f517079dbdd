"""The python-wsi-preprocessing tile score (``deephistopath/wsi/tiles.py`` ``score_tile``), as pure functions.

Spec: ``shared/reference/dpw-filters.md`` section 1.3. A tile is scored on the *filtered* RGB thumbnail
(masked pixels black, ``rgb * mask``)::

    t   = tissue percentage of the tile (pixels not black)
    qf  = 1.0 if t >= 80, 0.2 if 10 <= t < 80, 0.1 if 0 < t < 10, else 0
    cf  = purple-vs-pink colour factor of hues in [260, 340] (int degrees)
    sv  = (0.4 | 0.7 | 1)**2 from the std of HSV saturation and value
    raw = t**2 * ln(1 + cf * sv * qf) / 1000;   score = 1 - 10 / (10 + raw)

Quirks of the original (spec 1.4) and what is done with them:

* Q2 uint8 overflow of ``R+G+B`` in ``mask_percent`` (pixels summing to 256 or 512 count as masked):
  fixed by default, reproduced with ``quirk_uint8_sum=True``.
* Q7 the S/V factor counts masked (black) pixels, so an empty tile gets sv = 0.16: reproduced (it is
  part of the score's definition; the score is 0 anyway when there is no tissue, since qf = 0).
* Q9 a tile whose in-range hues are all exactly 270 gets cf = 0 (the ``pu == 0`` guard): reproduced.
* Q8 (unused purple/pink average factor) has no counterpart here.

Not a plugin: the ``grid`` tiler calls :func:`dpw_score` per tile.
"""
from __future__ import annotations

import numpy as np
from skimage.color import rgb2hsv

HSV_PURPLE = 270
HSV_PINK = 330
TISSUE_HIGH_THRESH = 80
TISSUE_LOW_THRESH = 10


def mask_percent(x: np.ndarray, quirk_uint8_sum: bool = False) -> float:
    """Percentage of masked pixels: zero pixels of a 2-D mask, or black pixels of an (h, w, 3) image.

    ``quirk_uint8_sum=True`` reproduces the original, which tests ``R+G+B != 0`` in uint8 (wrapping, so
    sums of 256 and 512 look black); the default tests ``any(R, G, B) != 0``.
    """
    x = np.asarray(x)
    if x.ndim == 3 and x.shape[2] == 3:
        if quirk_uint8_sum:
            x = x[..., 0].astype(np.uint8) + x[..., 1].astype(np.uint8) + x[..., 2].astype(np.uint8)
        else:
            x = x.any(axis=2)
    return 100 - np.count_nonzero(x) / x.size * 100


def tissue_percent(x: np.ndarray, quirk_uint8_sum: bool = False) -> float:
    """``100 - mask_percent(x)``."""
    return 100 - mask_percent(x, quirk_uint8_sum)


def quantity_factor(t: float) -> float:
    """Tissue quantity HIGH (t >= 80) 1.0, MEDIUM (10 <= t < 80) 0.2, LOW (0 < t < 10) 0.1, NONE 0."""
    if t >= TISSUE_HIGH_THRESH:
        return 1.0
    if t >= TISSUE_LOW_THRESH:
        return 0.2
    if t > 0:
        return 0.1
    return 0.0


def color_factor(hue_deg: np.ndarray) -> float:
    """Purple-vs-pink factor from integer hues (degrees, all pixels of the tile).

    Only hues in [260, 340] count; none left gives 0. ``pu``/``pi`` are the RMS distances to 270
    (purple) and 330 (pink); the factor is ``pi / pu * (340 - mean)**2``, and 0 when ``pu == 0`` (Q9).
    """
    h = hue_deg[(hue_deg >= 260) & (hue_deg <= 340)]
    if h.size == 0:
        return 0.0
    pu = np.sqrt(np.mean(np.abs(h - HSV_PURPLE) ** 2))
    pi = np.sqrt(np.mean(np.abs(h - HSV_PINK) ** 2))
    if pu == 0:
        return 0.0
    return float(pi / pu * (340 - np.average(h)) ** 2)


def sv_factor(s: np.ndarray, v: np.ndarray) -> float:
    """(0.4 if both std(S), std(V) < 0.05; 0.7 if one is; else 1) squared: 0.16, 0.49 or 1 (Q7: over
    all pixels, masked black ones included)."""
    low = int(np.std(s) < 0.05) + int(np.std(v) < 0.05)
    return (1.0, 0.7, 0.4)[low] ** 2


def dpw_score(rgb_tile: np.ndarray, quirk_uint8_sum: bool = False) -> dict:
    """Score one tile of the filtered RGB thumbnail (uint8 (h, w, 3), masked pixels black).

    Returns ``score`` (0..1, ranks tiles), ``tissue`` (fraction 0..1), ``tissue_percent`` (0..100, what
    the formula uses), ``color_factor``, ``sv_factor`` and ``quantity_factor``.
    """
    rgb = np.asarray(rgb_tile)[..., :3]
    if rgb.ndim != 3 or rgb.dtype != np.uint8:
        raise TypeError(f"expected an (h, w, 3) uint8 tile, got {rgb.shape} {rgb.dtype}")
    t = tissue_percent(rgb, quirk_uint8_sum)
    hsv = rgb2hsv(rgb)
    cf = color_factor((hsv[..., 0].ravel() * 360).astype(int))
    sv = sv_factor(hsv[..., 1], hsv[..., 2])
    qf = quantity_factor(t)
    raw = t ** 2 * np.log(1 + cf * sv * qf) / 1000.0
    return {
        "score": float(1.0 - 10.0 / (10.0 + raw)),
        "tissue": float(t) / 100.0,
        "tissue_percent": float(t),
        "color_factor": float(cf),
        "sv_factor": float(sv),
        "quantity_factor": float(qf),
    }
