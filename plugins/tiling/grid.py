"""Grid tiling (the paper's): square tiles on a regular grid at the pipeline's magnification, scored,
thresholded and ranked.

Defaults follow Liu et al. 2020: 1024x1024 tiles at 10x, keep tiles with >= 50 % tissue, at most 50 per
slide sorted by tissue fraction (ties broken by position: row, then column). ``scorer="dpw"`` ranks by the
python-wsi-preprocessing score instead (tissue, colour and saturation/value factors), still after the
tissue threshold. Only whole tiles are produced: the original's partial edge tiles (quirk 10) are
dropped on purpose, since a 1024² tile is what the patches are cut from.
"""
from __future__ import annotations

import math

import numpy as np

from slidestream.engine.hookspecs import Geometry, Tile, TilingPlugin, hookimpl
from slidestream.engine.slide import MaskArea


def tile_grid(mask: np.ndarray, rgb: np.ndarray, geometry: Geometry, size: int = 1024, min_tissue: float = 0.5,
              max_tiles: int | None = 50, scorer: str = "tissue", overlap: int = 0) -> list[Tile]:
    """Tiles of ``size`` output pixels, best first. ``mask``/``rgb`` are the thumbnail and its tissue mask."""
    side0 = size * geometry.factor  # level-0 extent of one tile
    step0 = (size - overlap) * geometry.factor
    if step0 <= 0:
        raise ValueError("overlap must be smaller than size")
    cols = int(math.floor((geometry.width - side0) / step0)) + 1 if geometry.width >= side0 else 0
    rows = int(math.floor((geometry.height - side0) / step0)) + 1 if geometry.height >= side0 else 0
    if rows == 0 or cols == 0:
        return []
    r, c = np.divmod(np.arange(rows * cols), cols)
    x0, y0 = c * step0, r * step0  # all candidate tiles at once
    area = MaskArea.of(mask, geometry.thumb_scale)
    tissue = area.fractions(x0, y0, side0)
    keep = np.flatnonzero((tissue >= min_tissue) & (tissue > 0))
    score = tissue[keep]
    if scorer == "dpw":
        from .dpw_score import dpw_score

        tx0, ty0, tx1, ty1 = area.boxes(x0[keep], y0[keep], side0)
        score = np.array([dpw_score(rgb[a:b, e:f] * mask[a:b, e:f, None])["score"]
                          for a, b, e, f in zip(ty0, ty1, tx0, tx1)], np.float64)
    order = np.lexsort((c[keep], r[keep], -score))  # best first, ties by row then column
    if max_tiles:
        order = order[:max_tiles]
    w = int(round(side0))
    return [Tile(x=int(round(float(x0[i]))), y=int(round(float(y0[i]))), w=w, h=w, row=int(r[i]), col=int(c[i]),
                 tissue=float(tissue[i]), score=float(score[j])) for i, j in zip(keep[order], order)]


@hookimpl
def slidestream_tiling():
    return [TilingPlugin(
        name="grid", select=tile_grid, summary="regular grid of square tiles, thresholded and ranked",
        params={
            "size": {"type": "integer", "minimum": 16, "maximum": 8192, "default": 1024, "description": "tile side in pixels at the pipeline magnification (at most 8192: 200 MB of RGB per tile)"},
            "min_tissue": {"type": "number", "minimum": 0, "maximum": 1, "default": 0.5, "description": "keep tiles with at least this tissue fraction"},
            "max_tiles": {"type": ["integer", "null"], "minimum": 1, "default": 50, "description": "keep at most this many tiles per slide (null: all)"},
            "scorer": {"enum": ["tissue", "dpw"], "default": "tissue", "description": "rank by tissue fraction or by the DPW tile score"},
            "overlap": {"type": "integer", "minimum": 0, "default": 0, "description": "pixels shared by neighbouring tiles"},
        })]
