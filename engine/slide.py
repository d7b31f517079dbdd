"""Opening slides with reader fallback, and the geometry of levels, resolution and magnification.

Magnification is resolution: ``mpp = 10 / magnification`` (40x = 0.25 µm/px, 10x = 1.0 µm/px). A slide's
level-0 resolution comes, in this order, from the cohort's ``mpp`` column / ``--mpp``, the file's mpp,
or its objective power; a slide with none of them is refused.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from . import registry
from .errors import SlideError
from .hookspecs import Geometry, SlideReader

REFERENCE_MPP_AT_10X = 1.0  # µm per pixel at 10x objective
LEVEL_SLACK = 1.05  # a level may be this much coarser than asked for (then resized up a little)
STRIP_PIXELS = 64_000_000  # level pixels read at once when building a thumbnail


@dataclass
class Slide:
    """An open slide with its reader and resolved level-0 resolution."""

    path: str
    reader: SlideReader
    reader_name: str
    mpp: float  # level-0 µm/px used for all geometry
    mpp_source: str  # "cohort", "file mpp", "objective power"

    @property
    def dimensions(self) -> tuple[int, int]:
        return tuple(self.reader.level_dimensions[0])

    def factor(self, magnification: float) -> float:
        """Level-0 pixels per output pixel at ``magnification`` (4.0 for a 40x slide at 10x)."""
        return (REFERENCE_MPP_AT_10X * 10.0 / magnification) / self.mpp

    def best_level(self, downsample: float) -> int:
        """The most reduced level that is still about as detailed as ``downsample``.

        5 % slack: a 40x Aperio slide at 0.2527 µm/px needs downsample 3.96 for 10x; its level 1
        (downsample 4.0) is read and upscaled 1 %, instead of decoding 16x the pixels at level 0."""
        best = 0
        for i, ds in enumerate(self.reader.level_downsamples):
            if ds <= downsample * LEVEL_SLACK and ds >= self.reader.level_downsamples[best]:
                best = i
        return best

    def read(self, x: int, y: int, size0: float, out_size: int) -> np.ndarray:
        """A square of level-0 side ``size0`` at (x, y), as ``out_size``² RGB, from the best level;
        resized (Pillow, antialiased) only when no level matches the requested scale exactly."""
        ds_needed = size0 / out_size
        level = self.best_level(ds_needed)
        ds = self.reader.level_downsamples[level]
        n = int(round(size0 / ds))
        rgb = self.reader.read_region((int(x), int(y)), level, (n, n))
        if n != out_size:
            rgb = np.asarray(Image.fromarray(rgb).resize((out_size, out_size), Image.BILINEAR))
        return rgb

    def thumbnail(self, scale: float) -> np.ndarray:
        """The whole slide at ``1/scale`` of level 0 (DPW: floor(W/32) x floor(H/32), bilinear)."""
        w0, h0 = self.dimensions
        tw, th = max(1, int(w0 // scale)), max(1, int(h0 // scale))
        level = self.best_level(scale)
        lw, lh = self.reader.level_dimensions[level]
        ds = self.reader.level_downsamples[level]
        if (lw, lh) == (tw, th):
            return self.reader.read_region((0, 0), level, (lw, lh))
        # read in strips so memory stays bounded on slides without a pyramid
        out = np.empty((th, tw, 3), np.uint8)
        rows = max(1, int(STRIP_PIXELS // max(lw, 1) * th / max(lh, 1)))  # thumbnail rows per strip
        for t0 in range(0, th, rows):
            t1 = min(th, t0 + rows)
            l0, l1 = int(round(t0 * lh / th)), min(lh, int(round(t1 * lh / th)))
            strip = self.reader.read_region((0, int(round(l0 * ds))), level, (lw, max(1, l1 - l0)))
            out[t0:t1] = np.asarray(Image.fromarray(strip).resize((tw, t1 - t0), Image.BILINEAR))
        return out

    def geometry(self, thumb_scale: float, magnification: float) -> Geometry:
        w, h = self.dimensions
        return Geometry(width=w, height=h, thumb_scale=float(thumb_scale), factor=self.factor(magnification))

    def close(self) -> None:
        try:
            self.reader.close()
        except Exception:
            pass


class MaskArea:
    """Tissue fraction of level-0 boxes, read off a thumbnail mask through a summed-area table built once."""

    def __init__(self, mask: np.ndarray, scale: float):
        self.scale = float(scale)
        self.shape = mask.shape
        self.table = np.pad(mask.astype(np.int64).cumsum(0).cumsum(1), ((1, 0), (1, 0)))

    def box(self, x: float, y: float, side: float) -> tuple[int, int, int, int]:
        """Thumbnail pixels (x0, y0, x1, y1) covering the level-0 square at (x, y); never empty."""
        s, (h, w) = self.scale, self.shape
        x0, y0 = min(int(x / s), w - 1), min(int(y / s), h - 1)
        return (x0, y0, min(max(math.ceil((x + side) / s), x0 + 1), w), min(max(math.ceil((y + side) / s), y0 + 1), h))

    def fraction(self, x: float, y: float, side: float) -> float:
        x0, y0, x1, y1 = self.box(x, y, side)
        t = self.table
        return float((t[y1, x1] - t[y0, x1] - t[y1, x0] + t[y0, x0]) / ((x1 - x0) * (y1 - y0)))


def open_slide(path: str | os.PathLike, order: Sequence[str] | None = None, mpp: float | None = None,
               device: str = "cpu") -> Slide:
    """Open ``path`` with the first reader that can; raise SlideError naming the file and the cause."""
    path = str(path)
    p = Path(path)
    if not p.exists():
        raise SlideError(f"{path}: file not found; check slide_path in the cohort table")
    if p.is_file() and p.stat().st_size == 0:
        raise SlideError(f"{path}: empty file (0 bytes); copy the slide again")
    table = registry.plugins("reader")
    names = list(order) if order else sorted(table, key=lambda n: (table[n].priority, n))
    suffix = "".join(s.lower() for s in p.suffixes[-1:]) if p.is_file() else ""
    failures = []
    unresolved: SlideError | None = None  # first reader that opened the file but found no resolution
    for name in names:
        plugin = registry.get("reader", name)
        if plugin.suffixes and suffix not in plugin.suffixes:
            continue
        try:
            reader = plugin.open(path, device=device)
        except Exception as e:  # a reader that cannot read this file: try the next one
            failures.append(f"{name}: {_short(e)}")
            continue
        try:
            level_mpp, source = _resolution(reader, mpp)
        except SlideError as e:  # another reader may find the resolution in metadata this one ignores
            reader.close()
            unresolved = unresolved or e
            continue
        return Slide(path=path, reader=reader, reader_name=name, mpp=level_mpp, mpp_source=source)
    if unresolved is not None:
        raise unresolved
    if not failures:
        raise SlideError(f"{path}: no reader handles '{suffix or 'folder'}' files; readers: {', '.join(names)}")
    raise SlideError(f"{path}: not a readable slide or image ({'; '.join(failures)})")


def _resolution(reader: SlideReader, override: float | None) -> tuple[float, str]:
    if override is not None and override == override:  # not NaN
        if override <= 0:
            raise SlideError(f"{reader.path}: mpp must be positive, got {override}")
        return float(override), "cohort"
    if reader.mpp:
        return float(reader.mpp), "file mpp"
    if reader.objective_power:
        return REFERENCE_MPP_AT_10X * 10.0 / float(reader.objective_power), "objective power"
    raise SlideError(f"{reader.path}: no resolution metadata (neither mpp nor objective power); "
                     "give it with --mpp or an `mpp` column in the cohort CSV")


def _short(e: Exception) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return msg[:160]
