"""Stain normalization of H&E patches: ``reinhard`` and ``macenko`` (not used by Liu et al. 2020, whose classifier
sees grayscale patches; offered for RGB pipelines, e.g. before the GAN or an RGB classifier).

* ``reinhard`` (Reinhard et al. 2001): per patch, each CIE-Lab channel (``skimage.color.rgb2lab``) is shifted
  and scaled to the target's mean and standard deviation, over all pixels of the patch.
* ``macenko`` (Macenko et al. 2009): per patch, optical density ``OD = -ln(max(I, 1) / 255)``; pixels with
  ``OD < beta`` in any channel are background; the H and E stain vectors are the ``alpha`` / ``100 - alpha``
  percentile angles in the plane of the two main eigenvectors of the tissue ODs; every pixel's stain
  concentrations (least squares) are scaled so that their 99th percentile matches the target's, and the patch
  is rebuilt with the target's stain vectors. A patch with fewer than ``MIN_TISSUE`` tissue pixels is returned
  unchanged.

The target is either ``target`` (path of a reference image, fitted once and cached) or explicit statistics
(``target_means``/``target_stds``; ``stain_matrix``/``max_concentrations``). The defaults below were fitted by
these very functions to tiatoolbox's stain-normalization target image (``tiatoolbox/data/target_image.png``,
TCGA H&E, BSD-3-Clause), the reference that tiatoolbox and staintools use.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Sequence

import numpy as np

from slidestream.engine.errors import ConfigError
from slidestream.engine.hookspecs import NormalizationPlugin

from ._backend import DEVICE_PARAM, backend, to_uint8

# Fitted on tiatoolbox's target_image.png (see module docstring) with reinhard_target() / macenko_target().
REINHARD_MEANS = (52.1916, 30.2761, -13.2088)  # L*, a*, b*
REINHARD_STDS = (17.36, 8.4242, 6.8085)
MACENKO_STAINS = ((0.5287, 0.7527, 0.3923), (0.1778, 0.8336, 0.5230))  # rows: H, E unit OD vectors (R, G, B)
MACENKO_MAX_C = (2.8708, 1.1751)  # 99th percentile of the H and E concentrations
MIN_TISSUE = 100  # pixels


def _read_rgb(path: str) -> np.ndarray:
    from skimage import io

    try:
        img = io.imread(path)
    except Exception as e:
        raise ConfigError(f"cannot read stain target image {path}: {e}") from None
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


# ---------------------------------------------------------------------------------------------- Reinhard
@functools.lru_cache(maxsize=8)
def reinhard_target(path: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Lab means and standard deviations of the image at ``path``."""
    from skimage import color

    lab = color.rgb2lab(_read_rgb(path)).reshape(-1, 3)
    return tuple(lab.mean(0).tolist()), tuple(lab.std(0).tolist())


def reinhard(batch: Any, target: str | None = None, target_means: Sequence[float] | None = None,
             target_stds: Sequence[float] | None = None, device: str = "auto") -> Any:
    """Reinhard colour transfer of each patch to the target's Lab statistics. (n,h,w,3) -> (n,h,w,3)."""
    arr, b, restore = backend(batch, device)
    xp = b.xp
    if target is not None:
        if target_means is not None or target_stds is not None:
            raise ConfigError("reinhard: give either target (an image) or target_means/target_stds, not both")
        target_means, target_stds = reinhard_target(str(target))
    means = xp.asarray(target_means if target_means is not None else REINHARD_MEANS, dtype=xp.float64)
    stds = xp.asarray(target_stds if target_stds is not None else REINHARD_STDS, dtype=xp.float64)
    out = xp.empty_like(arr)
    step = len(arr) if b.gpu else 1  # whole batch on the GPU; patch by patch on the CPU (3x faster: cache)
    for i in range(0, len(arr), step):
        lab = b.ski.color.rgb2lab(arr[i:i + step])
        mu = lab.mean(axis=(1, 2), keepdims=True)
        sd = lab.std(axis=(1, 2), keepdims=True)
        lab = (lab - mu) / xp.where(sd > 0, sd, 1) * stds + means
        with warnings.catch_warnings():  # lab2rgb warns when it clips out-of-gamut colours; clipping is intended
            warnings.simplefilter("ignore")
            out[i:i + step] = to_uint8(xp, b.ski.color.lab2rgb(lab))
    return restore(out)


# ---------------------------------------------------------------------------------------------- Macenko
def _od(xp: Any, rgb: Any) -> Any:
    """(p, 3) uint8 -> optical density (p, 3) float."""
    return -xp.log(xp.maximum(rgb.astype(xp.float64), 1.0) / 255.0)


def _stain_matrix(xp: Any, od: Any, beta: float, alpha: float) -> Any | None:
    """(2, 3) unit H and E OD vectors of the tissue pixels of ``od`` (p, 3); None when too little tissue."""
    tissue = od[xp.all(od >= beta, axis=1)]
    if tissue.shape[0] < MIN_TISSUE:
        return None
    _, vecs = xp.linalg.eigh(xp.cov(tissue.T))
    plane = vecs[:, 1:3]  # eigenvectors of the two largest eigenvalues
    plane = plane * xp.where(plane[0:1, :] < 0, -1.0, 1.0)  # eigenvector signs are arbitrary: point them at +R
    proj = tissue @ plane
    phi = xp.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = xp.percentile(phi, xp.asarray([alpha, 100.0 - alpha]))
    v1 = plane @ xp.stack([xp.cos(lo), xp.sin(lo)])
    v2 = plane @ xp.stack([xp.cos(hi), xp.sin(hi)])
    he = xp.stack([v1, v2]) if float(v1[0]) > float(v2[0]) else xp.stack([v2, v1])  # haematoxylin: more red OD
    he = he * xp.where(he.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)
    return he / xp.linalg.norm(he, axis=1, keepdims=True)


def _concentrations(xp: Any, od: Any, he: Any) -> Any:
    """Least-squares stain concentrations (2, p) of ``od`` (p, 3) for stain vectors ``he`` (2, 3)."""
    return xp.linalg.pinv(he.T) @ od.T


@functools.lru_cache(maxsize=8)
def macenko_target(path: str, beta: float = 0.15, alpha: float = 1.0) -> tuple[tuple, tuple]:
    """Stain matrix (rows H, E) and 99th-percentile concentrations of the image at ``path``."""
    od = _od(np, _read_rgb(path).reshape(-1, 3))
    he = _stain_matrix(np, od, beta, alpha)
    if he is None:
        raise ConfigError(f"macenko target {path} has fewer than {MIN_TISSUE} stained pixels; choose an H&E image")
    max_c = np.percentile(_concentrations(np, od, he), 99, axis=1)
    return tuple(map(tuple, he.tolist())), tuple(max_c.tolist())


def macenko(batch: Any, target: str | None = None, stain_matrix: Sequence[Sequence[float]] | None = None,
            max_concentrations: Sequence[float] | None = None, beta: float = 0.15, alpha: float = 1.0,
            device: str = "auto") -> Any:
    """Macenko stain normalization of each patch to the target's stain vectors. (n,h,w,3) -> (n,h,w,3)."""
    arr, b, restore = backend(batch, device)
    xp = b.xp
    if target is not None:
        if stain_matrix is not None or max_concentrations is not None:
            raise ConfigError("macenko: give either target (an image) or stain_matrix/max_concentrations, not both")
        stain_matrix, max_concentrations = macenko_target(str(target), beta, alpha)
    he_ref = xp.asarray(stain_matrix if stain_matrix is not None else MACENKO_STAINS, dtype=xp.float64)
    max_ref = xp.asarray(max_concentrations if max_concentrations is not None else MACENKO_MAX_C, dtype=xp.float64)
    n, h, w, _ = arr.shape
    out = arr.copy()
    for i in range(n):
        od = _od(xp, arr[i].reshape(-1, 3))
        he = _stain_matrix(xp, od, beta, alpha)
        if he is None:
            continue  # (almost) no tissue: leave the patch as it is
        c = _concentrations(xp, od, he)
        max_c = xp.percentile(c, 99, axis=1)
        c = c * (max_ref / xp.where(max_c > 0, max_c, 1))[:, None]
        rgb = xp.exp(-(he_ref.T @ c)).T  # (p, 3) in 0..1
        out[i] = to_uint8(xp, rgb).reshape(h, w, 3)
    return restore(out)


def _rest(params: dict) -> dict:
    return {k: v for k, v in params.items() if k != "target"}


def freeze_reinhard(params: dict) -> dict:
    """``target`` (an image file) replaced by its Lab statistics: the same transfer, no file needed."""
    if params.get("target") is None:
        return dict(params)
    means, stds = reinhard_target(str(params["target"]))
    return {**_rest(params), "target_means": list(means), "target_stds": list(stds)}


def freeze_macenko(params: dict) -> dict:
    """``target`` (an image file) replaced by its stain matrix and concentrations (for its beta and alpha)."""
    if params.get("target") is None:
        return dict(params)
    he, max_c = macenko_target(str(params["target"]), params.get("beta", 0.15), params.get("alpha", 1.0))
    return {**_rest(params), "stain_matrix": [list(r) for r in he], "max_concentrations": list(max_c)}


_DEV = {"device": DEVICE_PARAM}
_TARGET = {"target": {"type": "string", "description": "path of a reference H&E image to normalize to "
                                                      "(default: built-in statistics of tiatoolbox's target image)"}}
_VEC3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}


def slidestream_normalization():
    return [
        NormalizationPlugin(
            name="reinhard", apply=reinhard, channels=3, freeze=freeze_reinhard,
            summary="Reinhard colour transfer: match each patch's Lab mean/std to a target",
            params={**_TARGET,
                    "target_means": {**_VEC3, "description": "target L*, a*, b* means (instead of target)"},
                    "target_stds": {**_VEC3, "description": "target L*, a*, b* standard deviations"},
                    **_DEV}),
        NormalizationPlugin(
            name="macenko", apply=macenko, channels=3, freeze=freeze_macenko,
            summary="Macenko H&E stain normalization to a target's stain vectors and concentrations",
            params={**_TARGET,
                    "stain_matrix": {"type": "array", "items": _VEC3, "minItems": 2, "maxItems": 2,
                                     "description": "target [H, E] optical-density vectors (R, G, B), instead of target"},
                    "max_concentrations": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0},
                                           "minItems": 2, "maxItems": 2,
                                           "description": "target 99th-percentile H and E concentrations"},
                    "beta": {"type": "number", "exclusiveMinimum": 0,
                             "description": "optical density below which a pixel is background (default 0.15)"},
                    "alpha": {"type": "number", "minimum": 0, "maximum": 50,
                              "description": "percentile of the extreme stain angles (default 1)"},
                    **_DEV}),
    ]
