"""DALI reader (opt-in): cuCIM's reader for the slide's metadata, DALI for its pixels.

Region reads decode the level's raw JPEG tiles with ``engine/dali_decode.py`` (batched; nvJPEG on the GPU
when ``device`` is ``cuda``, DALI's CPU decoder otherwise). It is never picked by default (priority after
every other reader): choose it with ``"reader": {"decoder": "dali"}`` (tried first, then the usual order),
or name it first in ``"reader": {"order": ["dali", "cucim", ...]}``. A
slide it cannot decode (JPEG 2000, LZW, a file cuCIM refuses) is refused, so the next reader takes it.
The engine reads a whole batch of tiles per call (``read_regions``: DALI decodes their JPEG tiles
in batches on all cores); each thread that reads gets its own DALI pipeline (a pipeline is not thread-safe).
"""
from __future__ import annotations

import os
import threading

import numpy as np

from slidestream.engine.hookspecs import ReaderPlugin, hookimpl

from .common import read_clipped
from .cucim import CucimSlide


# nvJPEG (fancy upsampling on) and libjpeg-turbo differ by IDCT rounding: at most 3 grey levels on the
# benchmark slide on an H200; a colour-space mistake was ~50 levels off on average
GPU_MEAN_TOLERANCE = 1.0


class DaliSlide(CucimSlide):
    def __init__(self, path: str, device: str = "cpu"):
        from slidestream.engine.dali_decode import DaliTiles

        super().__init__(path, device="cpu")
        self.device = device
        self.decode_device = "cuda" if device == "cuda" else "cpu"  # the tiles: DALI "mixed" (nvJPEG) on a GPU
        # all cores per pipeline: the engine reads a batch of tiles per call (read_regions), one call at a time
        self._open = lambda: DaliTiles(path, device="mixed" if device == "cuda" else "cpu", threads=os.cpu_count() or 1)
        first = self._open()
        if first.level_dimensions != self.level_dimensions:
            first.close()
            raise ValueError(f"DALI sees levels {first.level_dimensions}, cuCIM {self.level_dimensions}")
        self._all = [first]  # one DALI pipeline per engine decode thread (a pipeline is not thread-safe)
        self._local = threading.local()
        self._local.tiles = first
        self._lock = threading.Lock()
        if device == "cuda":
            self._check_against_cpu()

    def _check_against_cpu(self) -> None:
        """The GPU decode of one region against cuCIM's CPU decode, once per slide: a GPU decode that gives
        other pixels (as nvJPEG did on RGB-coded tiles on an H200) sends the slide to the next reader."""
        w, h = self.level_dimensions[0]
        n = min(512, w, h)
        loc = ((w - n) // 2, (h - n) // 2)
        gpu = self.read_region(loc, 0, (n, n))
        cpu = CucimSlide.read_region(self, loc, 0, (n, n))
        diff = float(np.abs(gpu.astype(np.int16) - cpu).mean())
        if diff > GPU_MEAN_TOLERANCE:
            self.close()
            raise ValueError(f"DALI's GPU decode differs from the CPU decode by {diff:.1f} grey levels on average "
                             f"over a {n}x{n} region: left to the next reader")

    def _dali(self):
        t = getattr(self._local, "tiles", None)
        if t is None:
            t = self._local.tiles = self._open()
            with self._lock:
                self._all.append(t)
        return t

    def read_region(self, location, level, size):
        ds = self.level_downsamples[level]
        tiles = self._dali()

        def read(x, y, w, h):
            self._tiles.check(self.level_dimensions[level], x, y, w, h)  # the same JPEG tile check as cuCIM's
            return tiles.read_region((int(round(x * ds)), int(round(y * ds))), level, (w, h))

        return read_clipped(read, location, level, size, self.level_dimensions[level], ds)

    def read_regions(self, requests):
        """Several regions ``(location, level, (w, h))`` in one call: every JPEG tile they need is decoded
        once, in DALI batches; the part of a region outside its level is white (as ``read_region``).
        Raises ``BrokenFile`` when any of them touches a damaged tile (read them one by one to tell which)."""
        tiles, boxes, inner = self._dali(), [], []
        for (x0, y0), level, (w, h) in requests:
            ds, (lw, lh) = self.level_downsamples[level], self.level_dimensions[level]
            lx, ly = int(round(x0 / ds)), int(round(y0 / ds))
            a, b, c, d = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)  # the part inside the level
            boxes.append((lx, ly, a, b, c, d))
            if c > a and d > b:
                self._tiles.check((lw, lh), a, b, c - a, d - b)
                inner.append(((int(round(a * ds)), int(round(b * ds))), level, (c - a, d - b)))
        decoded = iter(tiles.read_regions(inner))
        out = []
        for ((_, _, (w, h)), (lx, ly, a, b, c, d)) in zip(requests, boxes):
            if (a, b, c, d) == (lx, ly, lx + w, ly + h):
                out.append(next(decoded))
                continue
            rgb = np.full((h, w, 3), 255, np.uint8)
            if c > a and d > b:
                rgb[b - ly:d - ly, a - lx:c - lx] = next(decoded)
            out.append(rgb)
        return out

    def close(self) -> None:
        for t in self._all:
            t.close()
        super().close()


@hookimpl
def slidestream_readers():
    return [ReaderPlugin(name="dali", open=DaliSlide, priority=1000, suffixes=(".svs", ".tif", ".tiff"),
                         summary="opt-in: cuCIM metadata + DALI batched JPEG tile decoding (nvJPEG on a GPU)")]
