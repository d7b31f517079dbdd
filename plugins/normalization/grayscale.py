"""The classifier's input chain: grayscale, CLAHE and gamma adjustment.

Liu et al. 2020, Methods, "Image pre-processing": for the ResNet50, patches "were converted to grayscale to
eliminate the heterogeneity in colour tones across the histopathology slides. Adaptive histogram equalization and
gamma adjustment were then applied to every image patch to normalize the pixel intensity distribution."

* ``grayscale``: ``skimage.color.rgb2gray`` (luminance 0.2125 R + 0.7154 G + 0.0721 B), c=3 -> c=1.
* ``clahe``: ``skimage.exposure.equalize_adapthist`` per patch (c=1; an RGB patch is equalized on its HSV
  value channel and stays RGB). ``kernel_size`` defaults to 1/8 of the patch side, ``clip_limit`` to 0.01.
  Note that scikit-image stretches each patch's result to the full 0..255 range.
* ``gamma``: ``skimage.exposure.adjust_gamma`` (``out = 255 * gain * (in / 255) ** gamma``), any c.
  Default ``gamma="auto"``: per patch, the gamma that maps the patch's mean intensity m (0..1) to mid-gray,
  ``gamma = log(0.5) / log(m)``, bounded to [1/4, 4] so a near-blank patch is not blown up. After CLAHE,
  real H&E tissue patches get gamma 0.9-1.7 (their means 0.47-0.66; figure in docs/gamma_chain.png), so the
  step evens out the brightness CLAHE leaves between patches; a number gives a fixed gamma (1 = identity).
* ``gray_clahe_gamma``: the three in one pass; it only skips the rounding between CLAHE and gamma, so it
  matches the chain ``grayscale``, ``clahe``, ``gamma`` (within a gray level for ``gamma >= 1``; for ``gamma < 1``
  the steep curve near black magnifies the chain's rounding, by up to ~11 levels at ``gamma=0.5``).

The paper gives no CLAHE or gamma values; CLAHE's defaults are scikit-image's and gamma's is ``"auto"``
(above). ``clahe`` and ``gamma`` keep the channel count they get; in a chain, the classifier's
input channels are the smallest ``channels`` of the chain's plugins (no plugin turns 1 channel into 3).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from slidestream.engine.hookspecs import NormalizationPlugin

from ._backend import DEVICE_PARAM, backend, to_uint8


def _clahe_float(b: Any, img: Any, kernel_size: Any, clip_limit: float, nbins: int) -> Any:
    return b.ski.exposure.equalize_adapthist(img, kernel_size=kernel_size, clip_limit=clip_limit, nbins=nbins)


def grayscale(batch: Any, device: str = "auto") -> Any:
    """RGB -> gray (Liu et al. 2020, classifier input). (n,h,w,3) -> (n,h,w,1) uint8."""
    arr, b, restore = backend(batch, device)
    gray = b.ski.color.rgb2gray(arr)
    return restore(to_uint8(b.xp, gray)[..., None])


def clahe(batch: Any, kernel_size: int | None = None, clip_limit: float = 0.01, nbins: int = 256,
          device: str = "auto") -> Any:
    """Contrast-limited adaptive histogram equalization of each patch. (n,h,w,c) -> (n,h,w,c), c = 1 or 3."""
    arr, b, restore = backend(batch, device, channels=(1, 3))
    gray = arr.shape[-1] == 1
    out = b.xp.empty_like(arr)
    for i in range(arr.shape[0]):
        img = arr[i, ..., 0] if gray else arr[i]
        eq = to_uint8(b.xp, _clahe_float(b, img, kernel_size, clip_limit, nbins))
        out[i] = eq[..., None] if gray else eq
    return restore(out)


GAMMA_BOUNDS = (0.25, 4.0)


def auto_gamma(img01: Any) -> float:
    """The gamma mapping the mean of ``img01`` (floats in 0..1) to 0.5: ``log(0.5) / log(mean)``, in GAMMA_BOUNDS."""
    m = min(max(float(img01.mean()), 1e-6), 1 - 1e-6)
    return min(max(float(np.log(0.5) / np.log(m)), GAMMA_BOUNDS[0]), GAMMA_BOUNDS[1])


def gamma(batch: Any, gamma: float | str = "auto", gain: float = 1.0, device: str = "auto") -> Any:
    """Gamma adjustment ``255 * gain * (x / 255) ** gamma``; ``"auto"``: per patch, the gamma that takes its
    mean to mid-gray. (n,h,w,c) -> (n,h,w,c), c = 1 or 3."""
    arr, b, restore = backend(batch, device, channels=(1, 3))
    if gamma != "auto":
        return restore(b.ski.exposure.adjust_gamma(arr, gamma=gamma, gain=gain))
    out = b.xp.empty_like(arr)
    for i in range(arr.shape[0]):
        out[i] = b.ski.exposure.adjust_gamma(arr[i], gamma=auto_gamma(arr[i] / 255.0), gain=gain)
    return restore(out)


def gray_clahe_gamma(batch: Any, kernel_size: int | None = None, clip_limit: float = 0.01, nbins: int = 256,
                     gamma: float | str = "auto", gain: float = 1.0, device: str = "auto") -> Any:
    """grayscale, then CLAHE, then gamma, in one pass (Liu et al. 2020 classifier input). (n,h,w,3) -> (n,h,w,1)."""
    arr, b, restore = backend(batch, device)
    xp = b.xp
    gray = to_uint8(xp, b.ski.color.rgb2gray(arr))  # quantized like ``grayscale``, so the result equals the chain
    out = xp.empty(arr.shape[:3] + (1,), dtype=xp.uint8)
    for i in range(arr.shape[0]):
        eq = _clahe_float(b, gray[i], kernel_size, clip_limit, nbins)
        eq = xp.clip(eq, 0, 1)
        out[i, ..., 0] = to_uint8(xp, eq ** (auto_gamma(eq) if gamma == "auto" else gamma) * gain)
    return restore(out)


_DEV = {"device": DEVICE_PARAM}
_CLAHE = {
    "kernel_size": {"type": ["integer", "null"], "minimum": 2,
                    "description": "side of CLAHE's contextual regions in pixels (default 1/8 of the patch side)"},
    "clip_limit": {"type": "number", "exclusiveMinimum": 0, "maximum": 1,
                   "description": "CLAHE clip limit, 0..1 (higher gives more contrast; default 0.01)"},
    "nbins": {"type": "integer", "minimum": 2, "maximum": 65536, "description": "CLAHE histogram bins (default 256)"},
}
_GAMMA = {
    "gamma": {"anyOf": [{"type": "number", "exclusiveMinimum": 0}, {"const": "auto"}],
              "description": "exponent: < 1 brightens, > 1 darkens; 'auto' (default): per patch, the gamma taking its mean to mid-gray"},
    "gain": {"type": "number", "exclusiveMinimum": 0, "description": "multiplier after the power (default 1)"},
}


def slidestream_normalization():
    return [
        NormalizationPlugin(name="grayscale", apply=grayscale, channels=1, params=dict(_DEV),
                            summary="RGB to gray (skimage rgb2gray); classifier input, Liu et al. 2020"),
        NormalizationPlugin(name="clahe", apply=clahe, channels=3, params={**_CLAHE, **_DEV},
                            summary="adaptive histogram equalization per patch (skimage equalize_adapthist); keeps c"),
        NormalizationPlugin(name="gamma", apply=gamma, channels=3, params={**_GAMMA, **_DEV},
                            summary="gamma adjustment (skimage adjust_gamma); keeps c"),
        NormalizationPlugin(name="gray_clahe_gamma", apply=gray_clahe_gamma, channels=1,
                            params={**_CLAHE, **_GAMMA, **_DEV},
                            summary="grayscale + CLAHE + gamma in one pass; the classifier input of Liu et al. 2020"),
    ]
