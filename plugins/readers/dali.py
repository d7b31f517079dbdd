"""DALI reader (opt-in): cuCIM's reader for the slide's metadata, DALI for its pixels.

Region reads decode the level's raw JPEG tiles with ``engine/dali_decode.py`` (batched; nvJPEG on the GPU
when ``device`` is ``cuda``, DALI's CPU decoder otherwise). It is never picked by default (priority after
every other reader): name it first in the pipeline, ``"reader": {"order": ["dali", "cucim", ...]}``. A
slide it cannot decode (JPEG 2000, LZW, a file cuCIM refuses) is refused, so the next reader takes it.
Each of the engine's decode threads gets its own DALI pipeline (a pipeline is not thread-safe).
"""
from __future__ import annotations

import threading

from slidestream.engine.hookspecs import ReaderPlugin, hookimpl

from .common import read_clipped
from .cucim import CucimSlide


class DaliSlide(CucimSlide):
    def __init__(self, path: str, device: str = "cpu"):
        from slidestream.engine.dali_decode import DaliTiles

        super().__init__(path, device="cpu")
        self.device = device
        self._open = lambda: DaliTiles(path, device="mixed" if device == "cuda" else "cpu", threads=1)
        first = self._open()
        if first.level_dimensions != self.level_dimensions:
            first.close()
            raise ValueError(f"DALI sees levels {first.level_dimensions}, cuCIM {self.level_dimensions}")
        self._all = [first]  # one DALI pipeline per engine decode thread (a pipeline is not thread-safe)
        self._local = threading.local()
        self._local.tiles = first
        self._lock = threading.Lock()

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

    def close(self) -> None:
        for t in self._all:
            t.close()
        super().close()


@hookimpl
def slidestream_readers():
    return [ReaderPlugin(name="dali", open=DaliSlide, priority=1000, suffixes=(".svs", ".tif", ".tiff"),
                         summary="opt-in: cuCIM metadata + DALI batched JPEG tile decoding (nvJPEG on a GPU)")]
