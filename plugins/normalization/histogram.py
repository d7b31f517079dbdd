"""``rgb_histogram``: per-patch, per-channel histogram normalization of RGB patches (the GAN input).

Liu et al. 2020, Methods, "Image pre-processing": for the two GANs "the RGB channels were preserved in the
extracted image tiles with histogram normalization in each channel". The paper does not say which histogram
normalization; we read it as **histogram equalization of each of R, G and B separately, per patch**
(``method="equalize"``, the default): "in each channel" rules out one histogram for the whole RGB
patch, and equalization is the standard operation that maps each channel's histogram to (nearly) uniform,
taking out brightness/contrast differences between slides while keeping three channels. We use the textbook
mapping (Gonzalez & Woods; the same as OpenCV's ``equalizeHist``): ``v -> round((cdf(v) - cdf_min) / (N - cdf_min) * 255)``, so each channel spans 0..255.
A channel with one value only is left as it is.

``method="stretch"`` is the gentler alternative: a per-channel linear contrast stretch between the ``low`` and
``high`` percentiles (``skimage.exposure.rescale_intensity`` with ``in_range`` from the percentiles); it keeps
the shape of each histogram and so changes the colours of H&E less.

Both are computed for the whole batch at once with array operations that run unchanged on NumPy and CuPy.
"""
from __future__ import annotations

from typing import Any

from slidestream.engine.hookspecs import NormalizationPlugin

from ._backend import DEVICE_PARAM, backend


def _equalize(xp: Any, arr: Any) -> Any:
    n, h, w, c = arr.shape
    k, npix = n * c, h * w
    x = xp.ascontiguousarray(arr.transpose(0, 3, 1, 2)).reshape(k, npix)  # one row per (patch, channel)
    offsets = (xp.arange(k, dtype=xp.int64) * 256)[:, None]
    hist = xp.bincount((x + offsets).ravel(), minlength=k * 256).reshape(k, 256)
    cdf = xp.cumsum(hist, axis=1)
    # cdf_min: the cdf at the lowest value present, i.e. the count of the smallest value
    cdf_min = xp.take_along_axis(cdf, xp.argmax(hist > 0, axis=1)[:, None], axis=1)
    denom = npix - cdf_min
    flat = denom == 0
    lut = xp.rint((cdf - cdf_min) * 255.0 / xp.where(flat, 1, denom))
    lut = xp.where(flat, xp.arange(256)[None, :], xp.clip(lut, 0, 255)).astype(xp.uint8)
    out = xp.take_along_axis(lut, x.astype(xp.int64), axis=1)
    return out.reshape(n, c, h, w).transpose(0, 2, 3, 1)


def _stretch(xp: Any, arr: Any, low: float, high: float) -> Any:
    n, h, w, c = arr.shape
    x = arr.astype(xp.float32)
    lo, hi = xp.percentile(x, xp.asarray([low, high], dtype=xp.float32), axis=(1, 2), keepdims=True)
    span = hi - lo
    y = xp.clip((x - lo) / xp.where(span > 0, span, 1), 0, 1) * 255.0
    y = xp.where(span > 0, y, x)  # a flat channel stays as it is
    return xp.rint(y).astype(xp.uint8)


def rgb_histogram(batch: Any, method: str = "equalize", low: float = 1.0, high: float = 99.0,
                  device: str = "auto") -> Any:
    """Histogram-normalize each RGB channel of each patch (Liu et al. 2020, GAN input). (n,h,w,3) -> (n,h,w,3)."""
    arr, b, restore = backend(batch, device)
    if method == "equalize":
        out = _equalize(b.xp, arr)
    elif method == "stretch":
        out = _stretch(b.xp, arr, low, high)
    else:
        raise ValueError(f"method must be 'equalize' or 'stretch', not {method!r}")
    return restore(b.xp.ascontiguousarray(out))


def slidestream_normalization():
    return [NormalizationPlugin(
        name="rgb_histogram", apply=rgb_histogram, channels=3,
        summary="per-patch per-channel RGB histogram equalization (or percentile stretch); GAN input, Liu et al. 2020",
        params={
            "method": {"enum": ["equalize", "stretch"],
                       "description": "equalize: uniform histogram per channel; stretch: linear low..high percentile stretch"},
            "low": {"type": "number", "minimum": 0, "maximum": 50, "description": "stretch: lower percentile mapped to 0"},
            "high": {"type": "number", "minimum": 50, "maximum": 100, "description": "stretch: upper percentile mapped to 255"},
            "device": DEVICE_PARAM,
        },
    )]
