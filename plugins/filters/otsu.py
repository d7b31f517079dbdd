"""Otsu tissue detection: the example filter plugin (copy this file to write your own).

A filter plugin is a plain function ``apply(rgb, mask, **params) -> mask`` plus a ``FilterPlugin``
describing it, returned by a ``@hookimpl def slidestream_filters()``. Register the module through the
``slidestream.plugins`` entry-point group of your package (see ``slidestream/engine/hookspecs.py``).

How it works: Otsu's method picks the threshold that best splits the image's histogram in two. On a
slide thumbnail the two modes are the bright, grey glass and the darker, coloured tissue, so

* ``channel="gray"`` (default): luminance; tissue is the darker side (``gray < t``).
* ``channel="saturation"``: HSV saturation; tissue is the more saturated side (``sat > t``). Better
  when the background is dim or uneven, since glass is unsaturated whatever its brightness.
"""
from __future__ import annotations

import numpy as np

from slidestream.engine.hookspecs import FilterPlugin, hookimpl


def otsu(rgb: np.ndarray, mask: np.ndarray, channel: str = "gray") -> np.ndarray:
    """Keep the tissue side of an Otsu threshold of ``channel``; ANDed with the incoming mask."""
    from skimage.color import rgb2gray, rgb2hsv   # here, not at the top: the CLI starts without scikit-image
    from skimage.filters import threshold_otsu

    rgb = np.asarray(rgb)[..., :3]                # the (h, w, 3) uint8 thumbnail
    if channel == "gray":
        x = rgb2gray(rgb)                         # float in [0, 1], 1 = white
        tissue = x < threshold_otsu(x)            # darker than the threshold
    else:
        x = rgb2hsv(rgb)[..., 1]                  # saturation in [0, 1]
        tissue = x > threshold_otsu(x)            # more saturated than the threshold
    return np.asarray(mask, dtype=bool) & tissue  # never re-add what an earlier filter removed


@hookimpl
def slidestream_filters():
    return [
        FilterPlugin(
            name="otsu",
            apply=otsu,                           # a top-level function: workers import it by reference
            summary="Otsu threshold of grayscale (tissue darker) or saturation (tissue more saturated)",
            # JSON-Schema "properties" for apply's keyword arguments; `slidestream validate` checks them.
            params={"channel": {"enum": ["gray", "saturation"], "default": "gray",
                                "description": "the channel Otsu's threshold is computed on"}},
        )
    ]
