"""Vectorized planning: tissue fractions of many boxes at once equal the box means of the mask, and the
grid tiler ranks exactly as a per-tile loop would."""

import math

import numpy as np

from slidestream.engine.hookspecs import Geometry
from slidestream.engine.slide import MaskArea
from slidestream.plugins.tiling.grid import tile_grid


def brute(mask, scale, x, y, side):
    h, w = mask.shape
    x0, y0 = min(int(x / scale), w - 1), min(int(y / scale), h - 1)
    x1 = min(max(math.ceil((x + side) / scale), x0 + 1), w)
    y1 = min(max(math.ceil((y + side) / scale), y0 + 1), h)
    return mask[y0:y1, x0:x1].mean()


def test_fractions_equal_box_means():
    rng = np.random.default_rng(0)
    mask = rng.random((97, 131)) < 0.4
    scale = 32.0
    x, y = rng.uniform(0, 131 * scale, 500), rng.uniform(0, 97 * scale, 500)
    for side in (7.0, 100.0, 1024.0, 5000.0):  # smaller than a pixel, a few pixels, past the edge
        got = MaskArea(mask, scale).fractions(x, y, side)
        want = [brute(mask, scale, a, b, side) for a, b in zip(x, y)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_mask_area_is_rebuilt_for_a_new_mask():
    a, b = np.zeros((10, 10), bool), np.ones((10, 10), bool)
    assert MaskArea.of(a, 4).fraction(0, 0, 40) == 0.0
    assert MaskArea.of(b, 4).fraction(0, 0, 40) == 1.0
    assert MaskArea.of(b, 8).fraction(0, 0, 80) == 1.0


def test_grid_ranks_like_a_loop():
    rng = np.random.default_rng(1)
    mask = np.kron(rng.random((24, 32)) < 0.6, np.ones((32, 32), bool))  # 768 x 1024 thumbnail of blocks
    mask[rng.random(mask.shape) < 0.1] = False
    g = Geometry(width=32768, height=24576, thumb_scale=32.0, factor=4.0)
    rgb = np.zeros(mask.shape + (3,), np.uint8)
    for size, overlap in ((1024, 0), (512, 128)):
        tiles = tile_grid(mask, rgb, g, size=size, min_tissue=0.5, max_tiles=None, overlap=overlap)
        side, step = size * 4.0, (size - overlap) * 4.0
        want = []
        for r in range(int((24576 - side) // step) + 1):
            for c in range(int((32768 - side) // step) + 1):
                t = brute(mask, 32.0, c * step, r * step, side)
                if t >= 0.5:
                    want.append((-t, r, c))
        assert [(-t.tissue, t.row, t.col) for t in tiles] == sorted(want)
        assert len(tile_grid(mask, rgb, g, size=size, min_tissue=0.5, max_tiles=7, overlap=overlap)) == 7
