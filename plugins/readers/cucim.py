"""cuCIM reader: the fastest reader here (decodes on the CPU, also on a GPU machine: see CucimSlide).

Reads generic tiled TIFF, Aperio SVS (JPEG and JPEG 2000) and Philips TIFF. Refuses, so the engine
falls back to the next reader: files whose TIFF data is truncated (cuCIM would decode garbage),
OME/SubIFD pyramids whose levels it does not see, and JPEG tiles coded as JFIF/YCbCr but tagged RGB
(cuCIM trusts the tag and returns false colours; e.g. QuPath's OS-1-detail.ome.tif).
"""
from __future__ import annotations

import os

import numpy as np

from slidestream.engine.device import without_cupy
from slidestream.engine.hookspecs import ReaderPlugin, hookimpl

from .common import (TiffTileCheck, check_claims, first_image, levels_out_of_order, ome_mpp, positive_float, read_clipped,
                     tag_mpp_xy, tiff_jfif_marked_rgb, tiff_level_count, tiff_rgb_marked_jpeg)


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
    GPUDirect Storage is absent. GPU decoding is DALI's (``reader.decoder: dali``, plugins/readers/dali.py)."""

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
            ds = self.level_downsamples[level]
            loc = (int(round(x * ds)), int(round(y * ds)))
            return np.asarray(self._img.read_region(location=loc, size=(w, h), level=level))

        return read_clipped(read, location, level, size, self.level_dimensions[level], self.level_downsamples[level])

    def close(self) -> None:
        self._img.close() if hasattr(self._img, "close") else None
        self._tiles.close()



@hookimpl
def slidestream_readers():
    return [ReaderPlugin(name="cucim", open=CucimSlide, priority=10, suffixes=(".svs", ".tif", ".tiff"),
                         summary="cuCIM CuImage: SVS, generic tiled TIFF, Philips TIFF (fastest)")]
