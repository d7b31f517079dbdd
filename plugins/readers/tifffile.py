"""tifffile reader: OME-TIFF and SubIFD pyramids (which cuCIM misses) and other tiled TIFFs.

Regions are decoded tile by tile through tifffile's zarr store, so memory follows the region size.
Resolution comes from OME ``PhysicalSizeX`` or the TIFF resolution tags (centimetre/inch units).
"""
from __future__ import annotations

import re

import numpy as np

from slidestream.engine.hookspecs import ReaderPlugin, hookimpl

from .common import (TiffTileCheck, check_claims, mpp_from_tiff_tags, mpp_xy, ome_mpp, positive_float,
                     premultiplied_over_white, read_clipped)

class TiffSlide:
    def __init__(self, path: str, device: str = "cpu"):
        import tifffile
        import zarr

        tf = check_claims(path, keep=True)  # the one parse of the file by tifffile
        self.path = path
        self._tf = tf if tf is not None else tifffile.TiffFile(path)
        self._tiles = TiffTileCheck(path, decode=True, tf=self._tf)  # imagecodecs decodes damaged JPEG tiles silently
        series = self._tf.series[0]
        axes = series.axes
        if "Y" not in axes or "X" not in axes:
            raise ValueError(f"TIFF series axes {axes!r} are not an image")
        self._axes = axes
        self._colour = _colour(series.pages[0] if series.pages else self._tf.pages[0])
        self._levels = []
        for i, lvl in enumerate(series.levels):
            self._levels.append(zarr.open(series.aszarr(level=i, fillvalue=255), mode="r"))  # absent tile: glass
        dims = [(int(lv.shape[axes.index("X")]), int(lv.shape[axes.index("Y")])) for lv in series.levels]
        self.level_dimensions = dims
        self.level_downsamples = [dims[0][0] / d[0] for d in dims]
        desc = self._tf.pages[0].description or ""
        # the whole value ("1e9" is 1e9, not 1; "-0.5" and "nan" are no value): as cuCIM and OpenSlide read it
        aperio = dict(re.findall(r"\|\s*(MPP|AppMag)\s*=\s*([^|\r\n]*)", desc)) if desc.startswith("Aperio") else {}
        self.mpp, self.mpp_y = mpp_xy(aperio.get("MPP"), None)
        if self.mpp is None:  # OME's sizes, where they are lengths, else the TIFF tags (never one of each)
            page = series.pages[0] if series.pages else self._tf.pages[0]
            self.mpp, self.mpp_y = ome_mpp(self._tf) or mpp_from_tiff_tags(page)
        self.objective_power = positive_float(aperio.get("AppMag"))

    def read_region(self, location, level, size):
        arr, axes = self._levels[level], self._axes

        def read(x, y, w, h):
            self._tiles.check(self.level_dimensions[level], x, y, w, h)
            idx = []
            for a in axes:
                idx.append(slice(y, y + h) if a == "Y" else slice(x, x + w) if a == "X" else
                           slice(None) if a in "SC" else 0)
            region = np.asarray(arr[tuple(idx)])
            kept = [a for a in axes if a in "YXSC"]
            order = [kept.index("Y"), kept.index("X")] + [i for i, a in enumerate(kept) if a in "SC"]
            return self._colour(np.transpose(region, order))

        return read_clipped(read, location, level, size, self.level_dimensions[level], self.level_downsamples[level])

    def close(self) -> None:
        self._tf.close()
        self._tiles.close()



def _colour(page):
    """What turns the samples of ``page`` into what ``to_rgb`` takes (gray, RGB or RGBA): tifffile returns them
    as stored, so palette indices, CMYK inks and white-is-zero gray would pass as gray or RGB pixels, and
    samples of fewer bits than their dtype (12-bit in uint16, 4-bit in uint8) as a nearly black image: those
    are scaled up to the full range of their dtype first."""
    import tifffile

    conv = _samples(page)
    bits, dtype = int(page.bitspersample), page.dtype
    if dtype.kind == "u" and bits < 8 * dtype.itemsize and page.photometric != tifffile.PHOTOMETRIC.PALETTE:
        top, full = (1 << bits) - 1, int(np.iinfo(dtype).max)  # 12-bit: 4095 -> 65535
        return lambda a: conv((a.astype(np.uint64) * full // top).astype(dtype))
    return conv


def _samples(page):
    import tifffile

    P = tifffile.PHOTOMETRIC
    kind, spp = page.photometric, page.samplesperpixel
    if page.sampleformat == tifffile.SAMPLEFORMAT.INT or page.bitspersample == 1:
        raise ValueError(f"{'signed' if page.sampleformat == tifffile.SAMPLEFORMAT.INT else '1-bit'} samples: not a "
                         "scanned colour image; convert the slide to 8-bit RGB")
    if kind in (P.MINISBLACK, P.RGB) and tuple(page.extrasamples or ())[:1] == (1,) and page.dtype.kind == "u":
        return premultiplied_over_white  # associated alpha: the colours are already multiplied by it
    if kind in (P.MINISBLACK, P.RGB) or (kind == P.YCBCR and page.compression == tifffile.COMPRESSION.JPEG):
        return lambda a: a  # tifffile's JPEG decoder returns YCbCr tiles as RGB
    if kind == P.MINISWHITE and spp == 1 and page.dtype.kind == "u":
        top = np.iinfo(page.dtype).max
        return lambda a: top - a
    if kind == P.PALETTE and page.colormap is not None:
        cmap = np.moveaxis(np.asarray(page.colormap), 0, -1)  # (entries, 3), 16-bit (or 8-bit) intensities
        cmap = (cmap >> 8 if cmap.max() > 255 else cmap).astype(np.uint8)
        return lambda a: cmap[np.clip(a[..., 0] if a.ndim == 3 else a, 0, len(cmap) - 1)]
    if kind == P.SEPARATED and int(getattr(page.tags.get("InkSet"), "value", 1)) == 1 and spp in (4, 5) and page.dtype.kind == "u":
        top = float(np.iinfo(page.dtype).max)

        def cmyk(a):
            f = a[..., :4].astype(np.float32) / top
            return np.rint(255 * (1 - f[..., :3]) * (1 - f[..., 3:4])).astype(np.uint8)
        return cmyk
    raise ValueError(f"photometric {getattr(kind, 'name', kind)} with {spp} samples of {page.dtype}: "
                     "not an RGB, gray, palette or CMYK image; convert the slide to RGB")


@hookimpl
def slidestream_readers():
    return [ReaderPlugin(name="tifffile", open=TiffSlide, priority=30,
                         suffixes=(".tif", ".tiff", ".svs", ".btf", ".qptiff"),
                         summary="tifffile: OME-TIFF / SubIFD pyramids and other tiled TIFFs")]
