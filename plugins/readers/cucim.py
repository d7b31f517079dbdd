"""cuCIM reader: the fastest reader here (decodes on the CPU, also on a GPU machine: see CucimSlide).

Reads generic tiled TIFF, Aperio SVS (JPEG and JPEG 2000) and Philips TIFF. Refuses, so the engine
falls back to the next reader: files whose TIFF data is truncated (cuCIM would decode garbage),
OME/SubIFD pyramids whose levels it does not see, and JPEG tiles coded as JFIF/YCbCr but tagged RGB
(cuCIM trusts the tag and returns false colours; e.g. QuPath's OS-1-detail.ome.tif).
"""
from __future__ import annotations

import math
import os
import threading

import numpy as np

from slidestream.engine.device import without_cupy
from slidestream.engine.hookspecs import ReaderPlugin, hookimpl

from .common import (TiffTileCheck, check_claims, first_image, levels_out_of_order, ome_mpp, positive_float, read_clipped,
                     tag_mpp_xy, tiff_jfif_marked_rgb, tiff_level_count, tiff_rgb_marked_jpeg)
from .libjpeg import jpeg_level


_quiet_done = False


def _cuimage(path: str):
    """CuImage(path); the first call silences cuFile's 'libcuda.so.1' chatter on machines without a GPU."""
    global _quiet_done
    os.environ.setdefault("CUFILE_LOGFILE_PATH", os.devnull)  # else cuFile writes cufile.log into the cwd
    if _quiet_done:
        with without_cupy():  # no GPU: cuCIM decodes on the CPU, CuPy is not needed
            from cucim import CuImage

        return CuImage(path)
    _quiet_done = True
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            with without_cupy():
                from cucim import CuImage

            return CuImage(path)
    finally:
        for fd, s in zip((1, 2), saved):
            os.dup2(s, fd)
            os.close(s)


# TIFF compressions cuCIM decodes: none, LZW, JPEG, Deflate, Aperio JPEG 2000 (YCbCr, RGB)
CUCIM_CODECS = (1, 5, 7, 8, 32946, 33003, 33005)


class CucimSlide:
    """Decodes on the CPU on every device. cuCIM's GPU decode (``read_region(device="cuda")``) was measured
    on an H200 (bench/gpu_check.sh, 2026-12-04) and is not used: RGB-coded JPEG tiles came back in wrong
    colours without an error (mean |GPU - CPU| 54 grey levels on CMU-1-Small-Region.svs), YCbCr tiles 160x
    slower than the CPU decode (10.8 vs 1709 MP/s, 16 threads), each read printing a cuFile error where
    GPUDirect Storage is absent. GPU decoding is DALI's (``reader.decoder: dali``, plugins/readers/dali.py).

    JPEG tiles are decoded by libjpeg-turbo directly (libjpeg.py: cuCIM's pixels at ~40 % less CPU) once a probe
    tile per level came out the same both ways; other codecs, and any tile libjpeg does not decode cleanly, by
    cuCIM. ``direct_jpeg = False`` (the class attribute) leaves every tile to cuCIM (bench/extract.py --cucim-only)."""

    direct_jpeg = True

    def __init__(self, path: str, device: str = "cpu"):
        import tifffile

        tf = check_claims(path, keep=True)  # the one parse of the file by tifffile, for every check below
        with tf if tf is not None else tifffile.TiffFile(path) as tf:
            if tiff_jfif_marked_rgb(path, tf):
                raise ValueError("JFIF-coded JPEG tiles tagged RGB: cuCIM would return false colours")
            if tiff_rgb_marked_jpeg(path, tf):
                raise ValueError("JPEG tiles tagged YCbCr whose stream says RGB: cuCIM would convert them as YCbCr (false colours)")
            pages = list(tf.pages)  # before any tf.pages[i]: after one, a circular IFD chain is iterated forever
            if pages[0].photometric == 2 and {1, 2} & set(pages[0].extrasamples or ()):  # RGB + alpha:
                raise ValueError("RGBA: left to the next reader (cuCIM multiplies unassociated colours by the alpha, "
                                 "then they are composited again: too dark; premultiplied colours come out too light)")
            if not pages[0].is_tiled:  # cuCIM reads strips through libtiff (Deflate strips: not at all)
                raise ValueError("an image in strips, not tiles: left to the next reader")
            if pages[0].bitspersample != 8:  # cuCIM fails or guesses on 16-bit/float samples; tifffile scales them
                raise ValueError(f"{pages[0].bitspersample}-bit samples: left to the tifffile reader")
            for page in pages:
                if page.compression in (8, 32946) and (page.predictor != 1 or page.planarconfig != 1):
                    # a predictor: cuCIM (26.10) dies with SIGSEGV; planar: it opens, then fails every read
                    raise ValueError("Deflate tiles with a predictor or separate planes: left to the next reader")
                if page.compression not in CUCIM_CODECS or page.sampleformat != 1:
                    raise ValueError(f"compression {int(page.compression)}, sample format {int(page.sampleformat)}: "
                                     "left to the next reader (cuCIM opens such a TIFF, then fails every read)")
            self._tiles = TiffTileCheck(path, tf=tf)  # cuCIM crashes on some damaged JPEG tiles: look at each one first
            self._file_levels = tiff_level_count(path, tf)
            ome, first = ome_mpp(tf), first_image(tf)
        self.path = path
        self.device = device
        self.decode_device = "cpu"  # also with device="cuda": see the class docstring
        self._direct: dict = {}  # level -> libjpeg.JpegLevel or None (_libjpeg)
        self._direct_lock = threading.Lock()
        self._img = _cuimage(path)
        res = self._img.resolutions
        self.level_dimensions = [tuple(int(v) for v in d) for d in res["level_dimensions"]]
        self.level_downsamples = [float(d) for d in res["level_downsamples"]]
        self._check_levels()
        md = self._img.metadata
        aperio = md.get("aperio", {}) if isinstance(md, dict) else {}
        reordered = aperio and levels_out_of_order(first, self.level_dimensions[0])  # (TIFF tags: level 0's own)
        if reordered:
            self.close()
            raise ValueError(reordered)
        self.mpp = self.mpp_y = positive_float(aperio.get("MPP"))
        self.objective_power = positive_float(aperio.get("AppMag"))
        if self.mpp is None:
            dims, units, spacing = self._img.dims, self._img.spacing_units(), self._img.spacing()  # in dims' order
            if "X" in dims and "Y" in dims and units[dims.index("X")] in ("micrometer", "micron", "um", "µm"):
                self.mpp, self.mpp_y = tag_mpp_xy(spacing[dims.index("X")], spacing[dims.index("Y")])  # TIFF tags
        if ome:  # an OME-TIFF's resolution is its OME PhysicalSizeX/Y, not the TIFF tags cuCIM reads
            self.mpp, self.mpp_y = ome

    def _check_levels(self) -> None:
        levels = self._file_levels
        if levels > len(self.level_dimensions):
            raise ValueError(f"cuCIM sees {len(self.level_dimensions)} of {levels} pyramid levels")

    def read_region(self, location, level, size):
        def read(x, y, w, h):
            self._tiles.check(self.level_dimensions[level], x, y, w, h)
            direct = self._libjpeg(level)
            px = direct.read(x, y, w, h) if direct is not None else None
            return px if px is not None else self._cucim(level, x, y, w, h)

        return read_clipped(read, location, level, size, self.level_dimensions[level], self.level_downsamples[level])

    def read_patches(self, location, level, size, offsets, s: int) -> np.ndarray | None:
        """The ``s``² patches at ``offsets`` ((x, y) in the region's pixels) of the region ``read_region`` reads,
        decoding only the JPEG tiles they touch (libjpeg.py), each once; None where that cannot be done (a region
        not inside the level, another codec, a tile libjpeg does not decode cleanly): the caller reads the
        region. The whole region's tiles are checked first (``TiffTileCheck``), as ``read_region`` does, and those no
        patch touches are decoded at 1/8 scale (``JpegLevel.intact``): damage there is named as cuCIM's read names it."""
        dims, ds = self.level_dimensions[level], self.level_downsamples[level]
        x, y = int(round(location[0] / ds)), int(round(location[1] / ds))  # as read_clipped
        w, h = size
        if x < 0 or y < 0 or x + w > dims[0] or y + h > dims[1] or not len(offsets):
            return None
        direct = self._libjpeg(level)
        if direct is None:
            return None
        self._tiles.check(dims, x, y, w, h)
        out, tiles = np.empty((len(offsets), s, s, 3), np.uint8), {}
        for j, (px, py) in enumerate(offsets):
            if not (0 <= px <= w - s and 0 <= py <= h - s) or direct.read(x + px, y + py, s, s, tiles, out[j]) is None:
                return None
        return out if direct.intact(x, y, w, h, tiles) else None  # a damaged tile no patch touches: cuCIM names it

    def _cucim(self, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        """cuCIM's decode of a box in the level's pixels. cuCIM takes level 0's location and reads from level pixel
        floor(location / downsample): ceil(x * downsample) is the location that gives x (round() gave x - 1 for about
        half the boxes of a level whose downsample is not a whole number, a 1 px shift; tests/test_perf11.py)."""
        ds = self.level_downsamples[level]
        loc = (math.ceil(x * ds), math.ceil(y * ds))
        return np.asarray(self._img.read_region(location=loc, size=(w, h), level=level))

    def _libjpeg(self, level: int):
        """The level's JPEG tiles decoded by libjpeg-turbo directly (libjpeg.py: the same pixels as cuCIM's, less
        CPU), or None: another codec, or its probe tile came out other than cuCIM's (or damaged)."""
        if level in self._direct:
            return self._direct[level]
        with self._direct_lock:
            if level not in self._direct:
                dims = self.level_dimensions[level]
                lv = jpeg_level(self.path, self._tiles, dims) if self.direct_jpeg else None
                if lv is not None:
                    x, y, w, h = lv.probe()
                    try:
                        self._tiles.check(dims, x, y, w, h)
                        same = np.array_equal(lv.read(x, y, w, h), self._cucim(level, x, y, w, h)[..., :3])
                    except (RuntimeError, ValueError, OSError):  # a damaged probe tile: cuCIM's path names it later
                        same = False
                    if not same:
                        lv.close()
                        lv = None
                self._direct[level] = lv
        return self._direct[level]

    def close(self) -> None:
        self._img.close() if hasattr(self._img, "close") else None
        self._tiles.close()
        for lv in self._direct.values():
            lv.close() if lv is not None else None
        self._direct = {}



@hookimpl
def slidestream_readers():
    return [ReaderPlugin(name="cucim", open=CucimSlide, priority=10, suffixes=(".svs", ".tif", ".tiff"),
                         summary="cuCIM CuImage: SVS, generic tiled TIFF, Philips TIFF (fastest)")]
